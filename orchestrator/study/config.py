"""The study config: a YAML file validated by pydantic, unknown keys rejected.

``load_config(path, overrides)`` reads the file, applies ``key.path=value``
overrides (values parsed as YAML, so ``search.layer=[4,8]`` works), and
validates. Checks that need the model's shape or the store are in
:mod:`orchestrator.run.preflight`, run before any model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """The study config is invalid; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntRange(_Strict):
    low: int
    high: int
    step: int = 1

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) is below low ({self.low})")
        return self


class FloatRange(_Strict):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) is below low ({self.low})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


IntParam = int | list[int] | IntRange
FloatParam = float | list[float] | FloatRange
LossKind = Literal["promote", "suppress", "mixed", "reentrant"]
InterventionKind = Literal["add", "clamp"]  # affine is for workers.engine.reentrant only


class ModelConfig(_Strict):
    name: str = "smollm2-135m-instruct"
    dtype: str = "auto"
    device: str = "auto"
    revision: str | None = None
    trust_remote_code: bool = False
    layers_path: str | None = None
    num_actors: int = Field(1, ge=1)
    gpus_per_actor: float = Field(0.0, ge=0)
    cpus_per_actor: float = Field(1.0, gt=0)
    torch_threads: int | None = Field(None, ge=1)
    max_batch_jobs: int = Field(16, ge=1)
    # How Ray places the actors: "default" (Ray's own policy, which favours
    # nodes already in use) or "spread" (Ray's SPREAD: across nodes, so a lost
    # node takes as few actors with it as possible).
    placement: Literal["default", "spread"] = "default"


class TaskConfig(_Strict):
    builtin: str | None = None
    path: str | None = None
    mapping: dict[str, str] = Field(default_factory=dict)
    train_split: str = "train"
    transfer_split: str = "transfer"
    max_transfer: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> TaskConfig:
        if (self.builtin is None) == (self.path is None):
            raise ValueError("give exactly one of task.builtin or task.path")
        return self


class SearchSpace(_Strict):
    """Each entry is a fixed value, a list (categorical), or a range."""

    layer: IntParam = 12
    norm: FloatParam | None = None
    loss: LossKind | list[LossKind] = "promote"
    lr: FloatParam = 0.5
    max_iters: IntParam = 30
    init_norm: FloatParam = 1.0
    coldness: FloatParam = 0.7
    tokens: str | list[str] = "all"
    intervention: InterventionKind | list[InterventionKind] = "add"
    clamp_coef: FloatParam = 1.0
    reentrant_layer: int = 1
    reentrant_tokens: int = 10

    @field_validator("*", mode="after")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("an empty list: give at least one value")
        return value

    @field_validator("norm", "lr", "max_iters", "init_norm", "coldness", mode="after")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        if isinstance(value, (IntRange, FloatRange)):
            values = [value.low, value.high]
        else:
            values = value if isinstance(value, list) else [value]
        bad = [v for v in values if v is not None and not v > 0]
        if bad:
            raise ValueError("every value must be greater than 0")
        return value


MetricName = Literal["target_logprob", "choice_flip", "judge", "side_effect_kl", "surprisal"]


def _default_metrics() -> list[MetricName]:
    return ["target_logprob"]


class EvaluationConfig(_Strict):
    metrics: list[MetricName] = Field(default_factory=_default_metrics)
    generation_tokens: int = Field(24, ge=1)
    max_kl: float = Field(0.1, gt=0)
    log_base: float = Field(10.0, gt=0)
    batch_size: int = Field(32, ge=1)
    max_targets: int | None = Field(None, ge=1)  # per held-out example; None: all


class ObjectiveConfig(_Strict):
    metric: str = "target_logprob"
    statistic: Literal["success", "steered", "delta"] = "success"
    reduce: Literal["mean", "median", "max", "min"] = "mean"
    direction: Literal["maximize", "minimize"] = "maximize"


class SamplerConfig(_Strict):
    name: Literal["tpe", "random", "grid", "nsga2"] = "tpe"
    seed: int | None = 0
    n_startup_trials: int = Field(4, ge=0)


class PrunerConfig(_Strict):
    name: Literal["none", "median", "successive_halving"] = "none"
    n_startup_trials: int = Field(2, ge=0)
    n_warmup_steps: int = Field(1, ge=0)


class StoreConfig(_Strict):
    root: str = "results/store"
    endpoint_url: str | None = None


class RayConfig(_Strict):
    address: str | None = None  # None: "auto" if a cluster is reachable, else a local one
    num_cpus: int | None = Field(None, ge=1)
    num_gpus: int | None = Field(None, ge=0)
    namespace: str = "steer-sweep"


class StudyConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    n_trials: int = Field(ge=1)
    vectors_per_trial: int = Field(4, ge=1)
    trials_in_flight: int | None = Field(None, ge=1)
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    # The base model B of surprisal (§2.2): its own pool of actors, which score
    # the steered model's generations; needed by evaluation.metrics surprisal.
    surprisal_model: ModelConfig | None = None
    task: TaskConfig
    search: SearchSpace = Field(default_factory=SearchSpace)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    objectives: list[ObjectiveConfig] = Field(
        default_factory=lambda: [ObjectiveConfig()], min_length=1
    )
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    optuna_storage: str | None = None
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _coherent(self) -> StudyConfig:
        if self.sampler.name == "nsga2" and len(self.objectives) < 2:
            raise ValueError("sampler nsga2 is for two or more objectives")
        if self.pruner.name != "none" and len(self.objectives) > 1:
            raise ValueError("pruning works with a single objective only")
        scored = "surprisal" in self.evaluation.metrics
        if scored and self.surprisal_model is None:
            raise ValueError(
                "evaluation.metrics has surprisal: set surprisal_model (the base model that "
                "scores the steered generations, e.g. surprisal_model: {name: ...})"
            )
        if self.surprisal_model is not None and not scored:
            raise ValueError("surprisal_model is set but evaluation.metrics has no surprisal")
        return self


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; values are parsed as YAML scalars or lists."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {key}: cannot parse value {raw!r}: {exc}") from None
        _set_path(data, key.strip(), value)
    return data


def _describe(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {where}: {msg} (got {err.get('input')!r})")
    return f"invalid study config {source}:\n" + "\n".join(lines)


def parse_config(data: Any, source: str = "<dict>") -> StudyConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a study config must be a mapping at the top level")
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    """Read, override and validate a study YAML.

    Raises:
        ConfigError: the file is missing or malformed YAML, a key is unknown, or a
            value has the wrong type or is out of range.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"study config not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        raise ConfigError(f"{path} is empty")
    if isinstance(data, dict):
        data = apply_overrides(data, overrides or [])
    return parse_config(data, str(path))
