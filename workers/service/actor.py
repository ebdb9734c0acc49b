"""The Ray actor that keeps one model resident and runs vector assignments.

``SteeringWorker`` is a plain class; :func:`remote_worker_class` wraps it with
``ray.remote`` and the resources of the study config (the orchestrator's
``RayPool`` does). Each actor is named ``SteeringWorker:<model>:<study>:<i>`` so the Ray dashboard's Actors page shows
which model and study it serves, and it exports Prometheus metrics through
``ray.util.metrics`` (Metrics page / Grafana):

- ``steer_sweep_vectors_done`` (counter), ``steer_sweep_failures`` (counter)
- ``steer_sweep_vector_steps_per_s`` and ``steer_sweep_batch_occupancy`` (gauges)
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

from workers.engine.loop import EngineStats
from workers.evaluation.evaluate import EvalSpec
from workers.models import ModelSpec, load_model
from workers.service.assignments import Assignment, VectorOutcome, run_assignments

log = logging.getLogger(__name__)


class SteeringWorker:
    """Loads its model once, then runs batches of :class:`Assignment`."""

    def __init__(
        self,
        model: ModelSpec,
        evaluation: EvalSpec,
        *,
        label: str,
        max_batch_jobs: int = 64,
        torch_threads: int | None = None,
    ) -> None:
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        started = time.perf_counter()
        self.label = label
        self.lm = load_model(model)
        self.evaluation = evaluation
        self.max_batch_jobs = max_batch_jobs
        self.load_s = time.perf_counter() - started
        self._metrics = _Metrics(label, model.name)
        self._unsteered: dict[tuple[str, float], list[float]] = {}
        log.info("%s loaded %s in %.1f s", label, model.name, self.load_s)

    def __repr__(self) -> str:  # Ray prefixes actor log lines with this
        return self.label

    def info(self) -> dict[str, Any]:
        """Where and what this actor is; also a cheap liveness check."""
        return {
            "label": self.label,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "model": self.lm.model_id,
            "revision": self.lm.revision,
            "n_layers": self.lm.n_layers,
            "d_model": self.lm.d_model,
            "device": str(self.lm.device),
            "dtype": str(self.lm.dtype).replace("torch.", ""),
            "load_s": self.load_s,
        }

    def run(self, assignments: Sequence[Assignment]) -> list[VectorOutcome]:
        started = time.perf_counter()
        # One engine run: at most max_batch_jobs rows at a time, a finished
        # row taking the next assignment (continuous batching).
        stats = EngineStats()
        outcomes = run_assignments(
            self.lm,
            self.evaluation,
            assignments,
            self._unsteered,
            max_batch_jobs=self.max_batch_jobs,
            stats=stats,
        )
        elapsed = time.perf_counter() - started
        self._metrics.record(
            done=sum(o.error is None for o in outcomes),
            failed=sum(o.error is not None for o in outcomes),
            steps_per_s=stats.vector_steps / max(elapsed, 1e-9),
            occupancy=stats.occupancy,
        )
        return outcomes

    def surprisal(
        self,
        context: Sequence[str],
        texts: Sequence[str],
        *,
        log_base: float = 2.0,
        batch_size: int = 16,
    ) -> list[float]:
        """Surprisal per token of each text given ``context``, under this
        actor's model (the base model of §2.2): ``transfer.surprisal_per_token``."""
        from workers.evaluation.transfer import surprisal_per_token

        return surprisal_per_token(
            self.lm, context, texts, log_base=log_base, batch_size=batch_size
        )


class _Metrics:
    """Ray metrics when running inside Ray; silently absent outside it."""

    def __init__(self, label: str, model: str) -> None:
        self.tags = {"actor": label, "model": model}
        try:
            from ray.util import metrics

            keys = ("actor", "model")
            self.done = metrics.Counter("steer_sweep_vectors_done", "vectors finished", keys)
            self.failed = metrics.Counter("steer_sweep_failures", "vectors that failed", keys)
            self.rate = metrics.Gauge(
                "steer_sweep_vector_steps_per_s", "optimizer vector-steps/s", keys
            )
            self.occupancy = metrics.Gauge("steer_sweep_batch_occupancy", "batch fill, 0-1", keys)
            self.enabled = True
        except Exception:  # noqa: BLE001 - metrics are optional outside a Ray worker
            self.enabled = False

    def record(self, *, done: int, failed: int, steps_per_s: float, occupancy: float) -> None:
        if not self.enabled:
            return
        if done:
            self.done.inc(done, tags=self.tags)
        if failed:
            self.failed.inc(failed, tags=self.tags)
        self.rate.set(steps_per_s, tags=self.tags)
        self.occupancy.set(occupancy, tags=self.tags)


def remote_worker_class(num_cpus: float, num_gpus: float) -> Any:
    """``ray.remote(SteeringWorker)`` with the given resources; restarts on crash."""
    import ray

    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=-1, max_task_retries=0)(
        SteeringWorker
    )
