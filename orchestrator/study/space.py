"""From the search space to Optuna distributions.

A fixed entry is not sampled; it is recorded with the trial's params so the
``trials`` table is self-describing. Layers may be negative in the config
(counting from the end); :func:`resolve_layers` maps them before sampling.
"""

from __future__ import annotations

from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from orchestrator.study.config import FloatRange, IntRange, SearchSpace

SAMPLED = (
    "layer", "norm", "loss", "lr", "max_iters", "init_norm", "coldness", "tokens",
    "intervention", "clamp_coef", "shots",
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


def highest(value: Any) -> Any:
    """The largest value a search entry can take: a fixed value, a list, or a range."""
    if isinstance(value, IntRange | FloatRange):
        return value.high
    return max(value) if isinstance(value, list) else value


def lowest(value: Any) -> Any:
    """The smallest value a search entry can take."""
    if isinstance(value, IntRange | FloatRange):
        return value.low
    return min(value) if isinstance(value, list) else value


def max_shots(space: SearchSpace) -> int:
    """The most training examples a vector of this space is optimized on."""
    return int(highest(space.shots))
