"""The study config: a YAML file validated by pydantic, unknown keys rejected.

``load_config(path, overrides)`` reads the file, applies ``key.path=value``
overrides (values parsed as YAML, so ``search.layer=[4,8]`` works), and
validates. Checks that need the model's shape or the store are in
:mod:`orchestrator.run.preflight`, run before any model is loaded.
"""

from __future__ import annotations

import string
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
    # allow_inf_nan: a .inf or .nan in a study file is a typo, never a setting.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class IntRange(_Strict):
    low: int
    high: int
    step: int = Field(1, ge=1)

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
# "caa": no optimization; the vector is the CAA contrast (§2.1.3) of the
# vector's training examples at its layer (workers.analysis.caa.CAASpec).
LossKind = Literal["promote", "suppress", "mixed", "reentrant", "caa"]
InterventionKind = Literal["add", "clamp"]  # affine is for workers.engine.reentrant only
# The names workers.models.spec.DTYPES knows, and "auto" (bf16 on a GPU, fp32 on a CPU).
Dtype = Literal["auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"]
DEVICE_PATTERN = r"^(auto|cpu|cuda|cuda:\d+|mps)$"

_TOKENS_HELP = "use all, prompt, last_k:K (K >= 1) or positions:I,J (integers)"


def token_spec(spec: str) -> tuple[str, int, tuple[int, ...]]:
    """``(mode, k, positions)`` of a token selection: ``all``, ``prompt``,
    ``last_k:20`` or ``positions:0,-1``. Raises ``ValueError`` for anything
    else, including a selection that selects nothing (``last_k:0``)."""
    kind, _, arg = str(spec).partition(":")
    if kind in ("all", "prompt") and not arg:
        return kind, 0, ()
    if kind == "last_k" and arg.isdigit() and int(arg) >= 1:
        return kind, int(arg), ()
    if kind == "positions" and arg:
        try:
            return kind, 0, tuple(int(p) for p in arg.split(","))
        except ValueError:
            pass
    raise ValueError(f"token selection '{spec}': {_TOKENS_HELP}")


class ModelConfig(_Strict):
    name: str = Field("smollm2-135m-instruct", min_length=1)
    dtype: Dtype = "auto"
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    revision: str | None = None
    trust_remote_code: bool = False
    layers_path: str | None = None
    num_actors: int = Field(1, ge=1)
    gpus_per_actor: float = Field(0.0, ge=0)
    cpus_per_actor: float = Field(1.0, gt=0)
    torch_threads: int | None = Field(None, ge=1)
    max_batch_jobs: int = Field(16, ge=1)
    # Assignments each actor holds, running and in its inbox (default: twice
    # max_batch_jobs, enough to refill every row once; with engine "batch",
    # max_batch_jobs).
    inbox_depth: int | None = Field(None, ge=1)
    # "stream": one resident engine per actor, outcomes out as they finish;
    # "batch": the protocol before it, one batch per call and all outcomes at
    # its end (kept to compare the two; see bench/stream_bench.py).
    engine: Literal["stream", "batch"] = "stream"
    # How Ray places the actors: "default" (Ray's own policy, which favours
    # nodes already in use) or "spread" (Ray's SPREAD: across nodes, so a lost
    # node takes as few actors with it as possible).
    placement: Literal["default", "spread"] = "default"
    # On a cluster that may grow (an autoscaler), how long a run waits for
    # room for its first actor before it stops (exit 1); a cluster the run
    # started itself cannot grow, and a request it cannot hold is refused at once.
    placement_timeout_s: float = Field(600.0, gt=0)


SplitName = Literal["train", "transfer"]


def _train_only() -> dict[SplitName, str]:
    return {"train": "train"}


class HFSource(_Strict):
    """A task from a Hugging Face data set (``orchestrator.datasets.hf``):
    ``path`` is a hub id, a ``save_to_disk`` folder, or a local ``.parquet`` /
    ``.arrow`` / ``.jsonl`` / ``.csv`` file; ``splits`` maps the study's splits
    to the data set's (slices allowed: ``train[:20]``); with one split only,
    each row's mapped ``split`` column says where it goes."""

    path: str = Field(min_length=1)
    name: str | None = None  # the data set's configuration (subset)
    revision: str | None = None
    splits: dict[SplitName, str] = Field(default_factory=_train_only, min_length=1)


def _strings(values: list[str], what: str) -> list[str]:
    bad = [i for i, v in enumerate(values) if not v.strip()]
    if bad:
        raise ValueError(f"{what} item {bad[0]} is empty")
    return values


class TaskTargets(_Strict):
    """Targets given to every example of a file or hf task that has none of
    its own (a data set of bare requests, such as HarmBench's)."""

    promote: list[str] = Field(default_factory=list)
    suppress: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _some(self) -> TaskTargets:
        if not (self.promote or self.suppress):
            raise ValueError("give at least one promote or suppress target")
        _strings(self.promote + self.suppress, "a target")
        return self


# Named phrase lists a judge may use instead of spelling its strings out
# (orchestrator.datasets.builtin.PHRASE_LISTS).
PhraseList = Literal["refusal", "retraction", "enthusiasm"]


class JudgeStrings(_Strict):
    """The string-match judge of generations: a generation is judged yes when
    it contains one of ``contains_any`` (when given) and none of
    ``lacks_all`` (when given), case-insensitively. Each is a list of strings
    or the name of a built-in list."""

    contains_any: PhraseList | list[str] = Field(default_factory=list)
    lacks_all: PhraseList | list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _some(self) -> JudgeStrings:
        if not (self.contains_any or self.lacks_all):
            raise ValueError("give contains_any or lacks_all (a list of strings or a list's name)")
        for name in ("contains_any", "lacks_all"):
            value = getattr(self, name)
            if isinstance(value, list):
                _strings(value, name)
        return self


class TaskConfig(_Strict):
    builtin: str | None = None
    path: str | None = None
    hf: HFSource | None = None
    mapping: dict[str, str] = Field(default_factory=dict)
    # Keep only the rows whose column holds one of the values ({column: value
    # or [values]}), before the mapping; with hf only.
    filter: dict[str, Any] = Field(default_factory=dict)
    train_split: str = "train"
    transfer_split: str = "transfer"
    max_transfer: int | None = Field(None, ge=1)
    # What evaluation needs besides the examples. A built-in task has its
    # own; these replace them. For a file or hf task: no judge unless given,
    # the built-in neutral prompts unless given, no surprisal context unless given.
    targets: TaskTargets | None = None
    judge: JudgeStrings | None = None
    neutral_prompts: list[str] | None = None  # user messages, chat-formatted
    surprisal_context: list[str] | None = None  # texts of the desired behaviour (§2.2)

    @model_validator(mode="after")
    def _one_source(self) -> TaskConfig:
        given = [n for n in ("builtin", "path", "hf") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of task.builtin, task.path or task.hf")
        if self.filter and self.hf is None:
            raise ValueError("task.filter applies to task.hf data sets only")
        if self.targets is not None and self.builtin is not None:
            raise ValueError(
                "task.targets fills in targets for file and hf tasks whose rows have none; "
                "every example of a built-in task has its own"
            )
        for name in ("neutral_prompts", "surprisal_context"):
            value = getattr(self, name)
            if value is not None:
                _strings(value, f"task.{name}")
        if self.neutral_prompts == []:
            raise ValueError(
                "task.neutral_prompts is empty: give at least one prompt, or leave it out"
            )
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
    # K-shot vectors: how many training examples one vector is optimized on
    # jointly (1: the paper's one-shot vectors); see orchestrator.run.expand.
    shots: IntParam = 1
    # How a K-shot vector's loss combines its examples' losses: "mean" (the
    # sum over every target of every example, each weighted 1/K, so a loss
    # and an lr mean the same at every K) or "sum". Identical at K = 1.
    shots_loss: Literal["mean", "sum"] = "mean"
    reentrant_layer: int = Field(1, ge=0)
    reentrant_tokens: int = Field(10, ge=1)
    # loss caa: activations read at the last prompt token, or averaged over
    # the prompt's tokens.
    caa_reduce: Literal["last", "mean"] = "last"

    @field_validator("*", mode="after")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("an empty list: give at least one value")
        return value

    @field_validator("tokens", mode="after")
    @classmethod
    def _selects_something(cls, value: Any) -> Any:
        for spec in value if isinstance(value, list) else [value]:
            token_spec(spec)
        return value

    @field_validator("norm", "lr", "max_iters", "init_norm", "coldness", "shots", mode="after")
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


class LLMJudgeConfig(_Strict):
    """A model judge of generations (``judge:llm`` rows): the study's own
    model, unsteered, is asked ``template`` (formatted with ``{prompt}``, the
    held-out request, and ``{response}``, the generation) as a chat turn, and
    says yes when its next token is likelier to be the first token of
    ``yes_answer`` than of ``no_answer``. (Not ``yes:``/``no:``: YAML reads
    those keys as booleans.)"""

    template: str = Field(min_length=1)
    yes_answer: str = Field("Yes", min_length=1)
    no_answer: str = Field("No", min_length=1)

    @field_validator("yes_answer", "no_answer", mode="before")
    @classmethod
    def _quoted(cls, value: Any) -> Any:
        if isinstance(value, bool):  # YAML reads an unquoted Yes, No, on or off as a boolean
            raise ValueError("YAML read this word as a boolean; quote it: 'Yes' or 'No'")
        return value

    @field_validator("template", mode="after")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        except ValueError as exc:
            raise ValueError(
                f"not a format string ({exc}); write a literal brace as {{{{ or }}}}"
            ) from None
        unknown = sorted(names - {"prompt", "response"})
        if unknown:
            raise ValueError(f"unknown placeholder(s) {unknown}; use {{prompt}} and {{response}}")
        if "response" not in names:
            raise ValueError("needs a {response} placeholder, where the generation goes")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> LLMJudgeConfig:
        if self.yes_answer.strip().lower() == self.no_answer.strip().lower():
            raise ValueError("yes_answer and no_answer must be different words")
        return self


class EvaluationConfig(_Strict):
    metrics: list[MetricName] = Field(default_factory=_default_metrics)
    # With metrics judge: a model judge besides (or instead of) the task's
    # string-match judge; see LLMJudgeConfig.
    llm_judge: LLMJudgeConfig | None = None
    generation_tokens: int = Field(24, ge=1)
    # Steered and unsteered greedy text kept in the store's generations table
    # for the first N held-out examples of every vector (every example when
    # judge or surprisal is measured, since those read the text anyway). A
    # few by default, so a study shows what its vectors make the model say.
    keep_generations: int = Field(2, ge=0)
    max_kl: float = Field(0.1, gt=0)
    log_base: float = Field(10.0, gt=0)
    batch_size: int = Field(32, ge=1)
    max_targets: int | None = Field(None, ge=1)  # per held-out example; None: all
    # The coldness of held-out scoring (paper App. A: 0.7). Fixed for the whole
    # study, whatever coldness a trial trains with, so that the transfer values
    # of different trials compare.
    coldness: float = Field(0.7, gt=0)

    @field_validator("log_base", mode="after")
    @classmethod
    def _not_one(cls, value: float) -> float:
        if value == 1:
            raise ValueError("log_base 1 has no logarithm; use 10 (hartleys), 2 (bits) or e")
        return value


class ObjectiveConfig(_Strict):
    metric: str = "target_logprob"
    statistic: Literal["success", "steered", "delta"] = "success"
    reduce: Literal["mean", "median", "max", "min"] = "mean"
    direction: Literal["maximize", "minimize"] = "maximize"


class SamplerConfig(_Strict):
    name: Literal["tpe", "random", "grid", "nsga2"] = "tpe"
    seed: int | None = 0
    n_startup_trials: int = Field(4, ge=0)
    # TPE only (orchestrator.study.optuna_study.AheadTPESampler): proposals
    # drawn from one fit of TPE's estimators, used for at most ask_ahead asks
    # and max_stale_ms milliseconds. 1 is the exact mode: Optuna's own TPE.
    ask_ahead: int = Field(1, ge=1, le=4096)
    max_stale_ms: float = Field(1000.0, gt=0)
    # With ask_ahead > 1: TPE's "bad" model is built from at most this many
    # trials (the running ones, the 25 newest, older ones evenly spaced), so
    # an ask costs the same at 500 trials and at 50,000.
    max_bad_trials: int = Field(256, ge=32)

    @model_validator(mode="after")
    def _ahead_is_tpe(self) -> SamplerConfig:
        if self.ask_ahead > 1 and self.name != "tpe":
            raise ValueError(
                f"ask_ahead draws several TPE proposals from one fit; sampler {self.name} "
                "has no fit to share, so leave ask_ahead at 1"
            )
        return self


class PrunerConfig(_Strict):
    name: Literal["none", "median", "successive_halving", "transfer_screen"] = "none"
    n_startup_trials: int = Field(2, ge=0)
    n_warmup_steps: int = Field(1, ge=0)
    # transfer_screen only (workers.evaluation.screen): each vector is first
    # evaluated on the first slice_size held-out examples, and its evaluation
    # stops there when the slice's objective value is worse than the median
    # slice value of the study's vectors so far by more than margin (in the
    # objective's unit: 0.25 of a success rate is 25 points). No vector is
    # screened before n_startup_vectors have finished.
    slice_size: int = Field(4, ge=1)
    margin: float = Field(0.25, ge=0)
    n_startup_vectors: int = Field(8, ge=1)


class StoreConfig(_Strict):
    root: str = Field("results/store", min_length=1)
    endpoint_url: str | None = None
    # A run holds the study's lease (one writer per study) and renews it every
    # lease_stale_s / 6 seconds; a lease with no heartbeat for lease_stale_s is
    # taken over by the next run.
    lease_stale_s: float = Field(60.0, gt=0)
    # How long a permanent store error (missing bucket, access denied, bad
    # credentials) may last before the study stops; transient ones are waited out.
    give_up_after_s: float = Field(120.0, gt=0)
    # Group commits: finished trials are written group_trials at a time, one
    # object per table (or when the oldest has waited group_ms); 1 writes
    # each trial as its own objects. A trial is told once its group landed.
    group_trials: int = Field(1, ge=1, le=100_000)
    group_ms: float = Field(200.0, gt=0)


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
        if self.evaluation.llm_judge is not None and "judge" not in self.evaluation.metrics:
            raise ValueError("evaluation.llm_judge is set but evaluation.metrics has no judge")
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
            value = parse_yaml(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {key}: cannot parse value {raw!r}: {exc}") from None
        _set_path(data, key.strip(), value)
    return data


def _branch(part: Any) -> bool:
    """A location part that names a member of a union (``float``,
    ``list[float]``, ``function-after[_ordered(), FloatRange]``), not a key."""
    return isinstance(part, str) and (
        any(c in part for c in "[(") or part in ("float", "int", "str", "bool", "none")
    )


def _tag(err: Any) -> str:
    return next((str(p) for p in err["loc"] if _branch(p)), "")


def _pick(errors: list[Any]) -> str:
    """Of the errors of one value against each member of a union, the member
    the value was meant for: a list's, a mapping's, else the first."""
    value = errors[0].get("input")
    tags = list(dict.fromkeys(_tag(e) for e in errors))
    scalars = ("float", "int", "str", "bool", "none")
    for tag in tags:
        if isinstance(value, list) and tag.startswith("list["):
            return tag
        if isinstance(value, dict) and tag and not tag.startswith("list[") and tag not in scalars:
            return tag
    return tags[0]


def _describe(exc: ValidationError, source: str) -> str:
    """One line per wrong value; for a value that matches no member of a union
    (a number, a list or a range), only the member it was meant to be."""
    groups: dict[tuple, list[Any]] = {}
    for err in exc.errors():
        loc = err["loc"]
        cut = next((i for i, p in enumerate(loc) if _branch(p)), len(loc))
        groups.setdefault(tuple(loc[:cut]), []).append(err)
    lines = []
    for errors in groups.values():
        tag = _pick(errors)
        for err in errors:
            if _tag(err) != tag:
                continue
            where = ".".join(str(p) for p in err["loc"] if not _branch(p)) or "(top level)"
            if err["type"] == "extra_forbidden":
                lines.append(f"  {where}: unknown key")
            else:
                msg = err["msg"].removeprefix("Value error, ")
                # A whole section's check: its input is the section, too long to echo.
                got = "" if isinstance(err.get("input"), dict) else f" (got {err.get('input')!r})"
                lines.append(f"  {where}: {msg}{got}")
    return f"invalid study config {source}:\n" + "\n".join(lines)


def parse_config(data: Any, source: str = "<dict>") -> StudyConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a study config must be a mapping at the top level")
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error:
    plain YAML keeps the last one, which silently drops the first section
    (a second ``search:`` would replace the first). So is a key YAML reads as
    a boolean (``yes:``, ``no:``, ``on:``)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key; the base class reports it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice in one mapping (lines {first} and {line}); "
                    "YAML would keep only the second, so merge the two",
                    key_node.start_mark,
                )
            seen[key] = line
            if isinstance(key, bool):  # every key of a study is a name
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key_node.value!r} is read by YAML as the boolean {key}; a study's keys "
                    f"are names, so quote it ('{key_node.value}') or use the key the docs give "
                    "(an LLM judge's answers are yes_answer and no_answer)",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, name: str = "<string>") -> Any:
    """``yaml.safe_load``, but duplicate keys raise ``yaml.YAMLError``;
    ``name`` is the file errors name."""
    loader = _UniqueKeyLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


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
        data = parse_yaml(text, str(path))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        raise ConfigError(f"{path} is empty")
    if isinstance(data, dict):
        data = apply_overrides(data, overrides or [])
    return parse_config(data, str(path))
