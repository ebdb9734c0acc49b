"""Whether the cluster can hold the actors a study asks for, decided before
any actor starts.

Each pool (the steering model's, the surprisal model's) asks for
``num_actors`` actors of ``{CPU: cpus_per_actor, GPU: gpus_per_actor}``. An
actor runs on one node, so the question is one of packing: :func:`shortfall`
places every actor, largest first, on the first node with room (first-fit
decreasing). A request it cannot place on a cluster that cannot grow is
refused at once (:class:`PlacementError`, exit 2); on a cluster an
autoscaler may grow, the run waits for its first actor at most
``model.placement_timeout_s`` (:class:`PlacementTimeout`, exit 1), saying
once a minute what it waits for. ``steer-sweep check`` prints the same
comparison when it can see the cluster.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.run.preflight import PreflightError

if TYPE_CHECKING:
    from orchestrator.study.config import StudyConfig

EPS = 1e-9


class PlacementError(PreflightError):
    """The cluster can never hold the actors the study asks for (bad input)."""


class PlacementTimeout(RuntimeError):
    """No actor was placed within ``placement_timeout_s`` (the run failed)."""


@dataclass(frozen=True)
class Demand:
    """One pool's request: ``actors`` actors of ``each`` (resource -> amount)."""

    pool: str
    actors: int
    each: dict[str, float]

    def text(self) -> str:
        return f"{self.pool}: {self.actors} actor(s) of {_resources(self.each)} each"


def demands(config: StudyConfig) -> list[Demand]:
    """What the study's pools ask Ray for."""
    out = []
    for section in ("model", "surprisal_model"):
        m = getattr(config, section)
        if m is not None:
            each = {"CPU": float(m.cpus_per_actor), "GPU": float(m.gpus_per_actor)}
            out.append(Demand(section, int(m.num_actors), each))
    return out


def shortfall(wanted: Sequence[Demand], nodes: Sequence[Mapping[str, float]]) -> list[Demand]:
    """The actors first-fit decreasing cannot place on ``nodes`` (each a
    resource -> amount map of one node), per pool; empty when all fit."""
    free = [dict(n) for n in nodes]
    actors = [(d, d.each) for d in wanted for _ in range(d.actors)]
    actors.sort(key=lambda a: tuple(-a[1].get(k, 0.0) for k in ("GPU", "CPU")))
    left: dict[str, int] = {}
    for demand, each in actors:
        for node in free:
            if all(node.get(k, 0.0) + EPS >= v for k, v in each.items() if v > 0):
                for k, v in each.items():
                    node[k] = node.get(k, 0.0) - v
                break
        else:
            left[demand.pool] = left.get(demand.pool, 0) + 1
    return [Demand(d.pool, left[d.pool], d.each) for d in wanted if d.pool in left]


def explain(
    wanted: Sequence[Demand], nodes: Sequence[Mapping[str, float]], missing: Sequence[Demand]
) -> str:
    """One paragraph: what was asked, what the cluster has, what does not fit."""
    asked = "; ".join(d.text() for d in wanted)
    have = "; ".join(f"node {i}: {_resources(n)}" for i, n in enumerate(nodes)) or "no nodes"
    short = "; ".join(f"{d.actors} {d.pool} actor(s)" for d in missing)
    return (
        f"the study asks Ray for {asked}, and the cluster has {have}, so {short} cannot be "
        "placed (an actor runs on one node). Lower model.num_actors, cpus_per_actor or "
        "gpus_per_actor (a fraction such as 0.5 shares a GPU), or run where there is room "
        "(ray.address, RAY_ADDRESS)"
    )


def check(config: StudyConfig, nodes: Sequence[Mapping[str, float]]) -> str | None:
    """The paragraph of :func:`explain` when the actors do not fit on ``nodes``."""
    wanted = demands(config)
    missing = shortfall(wanted, nodes)
    return explain(wanted, nodes, missing) if missing else None


def cluster_nodes() -> list[dict[str, float]]:
    """The resources of every alive node of the connected Ray cluster."""
    import ray

    return [
        {k: float(n.get("Resources", {}).get(k, 0.0)) for k in ("CPU", "GPU")}
        for n in ray.nodes()
        if n.get("Alive")
    ]


def local_nodes(config: StudyConfig) -> list[dict[str, float]]:
    """What a new local cluster of this run would hold (``ray.num_cpus`` and
    ``ray.num_gpus``, else this machine's CPUs and the GPUs torch sees)."""
    cpus = config.ray.num_cpus or os.cpu_count() or 1
    gpus = config.ray.num_gpus
    if gpus is None:
        gpus = _visible_gpus()
    return [{"CPU": float(cpus), "GPU": float(gpus)}]


def _visible_gpus() -> int:
    """GPUs on this machine, as Ray would count them, without importing torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        return len([p for p in os.listdir("/proc/driver/nvidia/gpus")])
    except OSError:
        return 0


def _resources(r: Mapping[str, Any]) -> str:
    parts = [f"{k} {_num(v)}" for k, v in sorted(r.items()) if k in ("CPU", "GPU") or v]
    return "{" + ", ".join(parts) + "}"


def _num(v: float) -> str:
    return str(int(v)) if math.isclose(v, round(v)) else f"{v:g}"
