"""The Ray actor that keeps one model resident and runs assignments.

``SteeringWorker`` is a plain class; :func:`remote_worker_class` wraps it with
``ray.remote`` and the resources of the study config (the orchestrator's
``RayPool`` does). It is a threaded actor (``max_concurrency``), so ``put``,
``drain`` and ``info`` are answered while its engine loop runs on a thread of
its own (:mod:`workers.service.stream`). Each actor is named
``SteeringWorker:<model>:<study>:<i>`` so the Ray dashboard's Actors page
shows which model and study it serves, and it exports Prometheus metrics
through ``ray.util.metrics`` (Metrics page / Grafana):

- ``steer_sweep_vectors_done`` (counter), ``steer_sweep_failures`` (counter)
- ``steer_sweep_vector_steps_per_s``, ``steer_sweep_batch_occupancy`` (rows
  holding a job over rows, since the first assignment) and
  ``steer_sweep_eval_share`` (time in held-out evaluation) (gauges)
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

from workers.engine.loop import EngineStats
from workers.evaluation.evaluate import EvalCache, EvalSpec
from workers.models import ModelSpec, load_model
from workers.service.assignments import run_assignments
from workers.service.protocol import Assignment, BatchWorker, Drained, EngineReport, VectorOutcome
from workers.service.stream import StreamingEngine

log = logging.getLogger(__name__)

# put, drain and info at once, beside a long-polling drain
MAX_CONCURRENCY = 4


class SteeringWorker:
    """Loads its model once; streams assignments through one resident engine
    (``put``/``drain``), or runs a whole batch per call (``run``)."""

    def __init__(
        self,
        model: ModelSpec,
        evaluation: EvalSpec,
        *,
        label: str,
        max_batch_jobs: int = 64,
        torch_threads: int | None = None,
        streaming: bool = True,
    ) -> None:
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        started = time.perf_counter()
        self.label = label
        self.lm = load_model(model)
        self.evaluation = evaluation
        self.max_batch_jobs = max_batch_jobs
        self.streaming = streaming
        self.load_s = time.perf_counter() - started
        self._metrics = _Metrics(label, model.name)
        self._cache = EvalCache()
        self._stream: StreamingEngine | BatchWorker | None = None
        self._batch_stats = EngineStats()  # run()'s counters, summed over calls
        self._model_lock = threading.Lock()  # the stream and run() never share the model
        self._start_lock = threading.Lock()
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
            "max_rows": self.max_batch_jobs,
        }

    # ------------------------------------------------------------ streaming

    def put(self, assignments: Sequence[Assignment]) -> int:
        """Add to the engine's inbox; returns the inbox depth."""
        with self._start_lock:  # put() calls run at once on a threaded actor
            if self._stream is None:
                if not self.streaming:  # one batch per call, behind the same contract
                    self._stream = BatchWorker(
                        self.run, max_rows=self.max_batch_jobs, stats=self._batch_stats
                    )
                    return self._stream.put(assignments)
                if not self._model_lock.acquire(blocking=False):
                    raise RuntimeError("a batch run() holds the model; streaming cannot start")
                self._stream = StreamingEngine(
                    self.lm,
                    self.evaluation,
                    max_rows=self.max_batch_jobs,
                    on_report=self._metrics.report,
                    cache=self._cache,
                )
        return self._stream.put(assignments)

    def drain(self, timeout: float = 0.5) -> Drained:
        """The outcomes finished since the last drain (waits up to ``timeout`` s)."""
        if self._stream is None:
            time.sleep(min(timeout, 0.05))
            return Drained([], EngineReport(max_rows=self.max_batch_jobs))
        return self._stream.drain(timeout)

    # ------------------------------------------------------------ one batch per call

    def run(self, assignments: Sequence[Assignment]) -> list[VectorOutcome]:
        """Optimize and evaluate ``assignments`` as one batch; all outcomes at once."""
        with self._model_lock:
            started = time.perf_counter()
            stats = self._batch_stats
            steps_before = stats.vector_steps
            outcomes = run_assignments(
                self.lm,
                self.evaluation,
                assignments,
                self._cache,
                max_batch_jobs=self.max_batch_jobs,
                stats=stats,
            )
            elapsed = time.perf_counter() - started
        rate = (stats.vector_steps - steps_before) / max(elapsed, 1e-9)
        self._metrics.batch(outcomes, rate, stats.occupancy)
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

        with self._model_lock:
            return surprisal_per_token(
                self.lm, context, texts, log_base=log_base, batch_size=batch_size
            )


class _Metrics:
    """Ray metrics when running inside Ray; silently absent outside it."""

    def __init__(self, label: str, model: str) -> None:
        self.tags = {"actor": label, "model": model}
        self.started = time.perf_counter()
        self._seen = (0, 0)  # vectors and failures already counted
        try:
            from ray.util import metrics

            keys = ("actor", "model")
            self.done = metrics.Counter("steer_sweep_vectors_done", "vectors finished", keys)
            self.failed = metrics.Counter("steer_sweep_failures", "vectors that failed", keys)
            self.rate = metrics.Gauge(
                "steer_sweep_vector_steps_per_s", "optimizer vector-steps/s", keys
            )
            self.occupancy = metrics.Gauge(
                "steer_sweep_batch_occupancy", "rows holding a job over rows, 0-1", keys
            )
            self.eval_share = metrics.Gauge(
                "steer_sweep_eval_share", "share of time in held-out evaluation, 0-1", keys
            )
            self.enabled = True
        except Exception:  # noqa: BLE001 - metrics are optional outside a Ray worker
            self.enabled = False

    def report(self, r: EngineReport) -> None:
        if not self.enabled:
            return
        span = max(time.perf_counter() - self.started, 1e-9)
        done, failed = self._seen
        if r.vectors > done:
            self.done.inc(r.vectors - done, tags=self.tags)
        if r.failed > failed:
            self.failed.inc(r.failed - failed, tags=self.tags)
        self._seen = (r.vectors, r.failed)
        self.rate.set(r.vector_steps / max(r.step_s + r.eval_s, 1e-9), tags=self.tags)
        self.occupancy.set(r.busy_row_s / max(r.max_rows * span, 1e-9), tags=self.tags)
        self.eval_share.set(r.eval_s / span, tags=self.tags)

    def batch(self, outcomes: list[VectorOutcome], steps_per_s: float, occupancy: float) -> None:
        if not self.enabled:
            return
        done = sum(o.error is None for o in outcomes)
        if done:
            self.done.inc(done, tags=self.tags)
        if len(outcomes) > done:
            self.failed.inc(len(outcomes) - done, tags=self.tags)
        self.rate.set(steps_per_s, tags=self.tags)
        self.occupancy.set(occupancy, tags=self.tags)


def remote_worker_class(num_cpus: float, num_gpus: float, cls: type | None = None) -> Any:
    """``ray.remote(cls)`` (default :class:`SteeringWorker`) with the given
    resources, threaded, restarted on crash. ``cls`` takes SteeringWorker's
    arguments and answers ``info``, ``put`` and ``drain`` (a fake worker in
    benchmarks and tests of the driver on real Ray actors)."""
    import ray

    options: dict[str, Any] = {
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "max_restarts": -1,
        "max_task_retries": 0,
        "max_concurrency": MAX_CONCURRENCY,
    }
    return ray.remote(**options)(cls or SteeringWorker)
