"""From the search space to Optuna distributions, and from trial params to tasks.

A fixed entry is not sampled; it is recorded with the trial's params so the
``trials`` table is self-describing. Layers may be negative in the config
(counting from the end); :func:`resolve_layers` maps them before sampling.
"""

from __future__ import annotations

import hashlib
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from orchestrator.config import FloatRange, IntRange, SearchSpace
from workers.examples import Example
from workers.jobs import (
    Intervention,
    LossSettings,
    ScoredPrompt,
    StopRules,
    Target,
    TokenSelection,
    VectorJob,
)
from workers.reentrant import ReentrantJob
from workers.tasks import VectorTask

SAMPLED = (
    "layer", "norm", "loss", "lr", "max_iters", "init_norm", "coldness", "tokens",
    "intervention", "clamp_coef",
)  # fmt: skip


def resolve_layers(space: SearchSpace, n_layers: int) -> SearchSpace:
    """Negative layers counted from the end; raises ValueError when out of range."""

    def one(layer: int) -> int:
        if not -n_layers <= layer < n_layers:
            raise ValueError(
                f"search.layer {layer} is out of range for a model with {n_layers} layers "
                f"(use 0..{n_layers - 1}, or -{n_layers}..-1 from the end)"
            )
        return layer % n_layers

    value = space.layer
    if isinstance(value, IntRange):
        resolved: Any = IntRange(low=one(value.low), high=one(value.high), step=value.step)
        if resolved.high < resolved.low:
            raise ValueError(f"search.layer range {value.low}..{value.high} is empty")
    elif isinstance(value, list):
        if not value:
            raise ValueError("search.layer is an empty list")
        resolved = [one(v) for v in value]
    else:
        resolved = one(value)
    if not 0 <= space.reentrant_layer < n_layers:
        raise ValueError(f"search.reentrant_layer {space.reentrant_layer} is out of range")
    return space.model_copy(update={"layer": resolved})


def _distribution(name: str, value: Any) -> BaseDistribution | None:
    if isinstance(value, IntRange):
        return IntDistribution(value.low, value.high, step=value.step)
    if isinstance(value, FloatRange):
        return FloatDistribution(value.low, value.high, log=value.log)
    if isinstance(value, list):
        if not value:
            raise ValueError(f"search.{name} is an empty list")
        if len(value) == 1:
            return None
        return CategoricalDistribution(list(value))
    return None


def distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """The sampled entries of the space as Optuna distributions."""
    out = {}
    for name in SAMPLED:
        dist = _distribution(name, getattr(space, name))
        if dist is not None:
            out[name] = dist
    return out


def fixed_params(space: SearchSpace) -> dict[str, Any]:
    """The entries that are not sampled, with their single value."""
    out: dict[str, Any] = {}
    for name in SAMPLED:
        value = getattr(space, name)
        if _distribution(name, value) is None:
            out[name] = value[0] if isinstance(value, list) else value
    return out


def grid(space: SearchSpace) -> dict[str, list[Any]]:
    """The grid for Optuna's GridSampler; every sampled entry must be discrete."""
    out: dict[str, list[Any]] = {}
    for name, dist in distributions(space).items():
        if isinstance(dist, CategoricalDistribution):
            out[name] = list(dist.choices)
        elif isinstance(dist, IntDistribution):
            out[name] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise ValueError(f"the grid sampler needs search.{name} as a list, not a float range")
    return out


def _tokens(spec: str) -> TokenSelection:
    """``all``, ``prompt``, ``last_k:20`` or ``positions:0,-1``."""
    kind, _, arg = spec.partition(":")
    if kind in ("all", "prompt") and not arg:
        return TokenSelection(kind)  # type: ignore[arg-type]
    if kind == "last_k" and arg.isdigit():
        return TokenSelection("last_k", k=int(arg))
    if kind == "positions" and arg:
        return TokenSelection("positions", positions=tuple(int(p) for p in arg.split(",")))
    raise ValueError(f"token selection '{spec}': use all, prompt, last_k:K or positions:I,J")


def _targets(example: Example, loss: str, log_base: float) -> tuple[Target, ...]:
    scored = example.scored_prompt(log_base).targets
    promote = tuple(t for t in scored if t.kind == "promote")
    suppress = tuple(t for t in scored if t.kind == "suppress")
    chosen = {"promote": promote, "suppress": suppress}.get(loss, promote + suppress)
    if not chosen:
        raise ValueError(f"example '{example.id}' has no targets for loss '{loss}'")
    return chosen


def job_seed(study_seed: int, trial: int, example_id: str) -> int:
    digest = hashlib.sha256(f"{study_seed}:{trial}:{example_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def build_task(
    vector_id: str,
    trial: int,
    example: Example,
    params: dict[str, Any],
    space: SearchSpace,
    *,
    study_seed: int,
    log_base: float,
) -> VectorTask:
    """The vector task for one training example under one trial's params."""
    loss = str(params["loss"])
    tokens = _tokens(str(params["tokens"]))
    intervention = Intervention(str(params["intervention"]), clamp_coef=float(params["clamp_coef"]))  # type: ignore[arg-type]
    targets = _targets(example, "mixed" if loss == "reentrant" else loss, log_base)
    settings = LossSettings(coldness=float(params["coldness"]), log_base=log_base)
    stop = StopRules(
        max_iters=int(params["max_iters"]),
        targets_reached=any(t.threshold is not None for t in targets),
    )
    norm = params.get("norm")
    job = VectorJob(
        job_id=vector_id,
        prompts=(ScoredPrompt(example.prompt, targets),),
        layers=(int(params["layer"]),),
        lr=float(params["lr"]),
        norm_bound=None if norm is None else float(norm),
        init_norm=float(params["init_norm"]),
        seed=job_seed(study_seed, trial, example.id),
        intervention=intervention,
        tokens=tokens,
        loss=settings,
        stop=stop,
    )
    reentrant = None
    if loss == "reentrant":
        # §5: an invasive rank-one stage at an early layer, then the vector.
        stage1 = VectorJob(
            job_id=vector_id + ":stage1",
            prompts=job.prompts,
            layers=(space.reentrant_layer,),
            lr=job.lr,
            seed=job.seed + 1,
            intervention=Intervention("affine", rank=1),
            loss=settings,
            stop=stop,
        )
        stage2 = VectorJob(
            job_id=vector_id,
            layers=job.layers,
            lr=job.lr,
            norm_bound=job.norm_bound,
            init_norm=job.init_norm,
            seed=job.seed,
            intervention=intervention,
            tokens=tokens,
            loss=settings,
            stop=StopRules(max_iters=job.stop.max_iters),
        )
        reentrant = ReentrantJob(stage1, stage2, n_tokens=space.reentrant_tokens)
    return VectorTask(vector_id, trial, example.id, job, reentrant)
