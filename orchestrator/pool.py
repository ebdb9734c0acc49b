"""Worker pools: where batches of vector tasks run.

A pool has a fixed set of worker keys; ``submit(key, tasks)`` starts a batch
on an idle worker and ``poll(timeout)`` returns finished batches as
``(key, outcomes)`` or ``(key, WorkerLost)``. :class:`RayPool` runs one
``SteeringWorker`` actor per key; :class:`LocalPool` runs any callable in
threads (tests, benchmarks, and the driver-capacity check).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from workers.tasks import EvalSpec, VectorOutcome, VectorTask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerLost:
    reason: str


Finished = tuple[int, list[VectorOutcome] | WorkerLost]


class Pool(Protocol):
    keys: list[int]

    def submit(self, key: int, tasks: list[VectorTask]) -> None: ...

    def poll(self, timeout: float) -> list[Finished]: ...

    def shutdown(self) -> None: ...


class LocalPool:
    """``n`` in-process workers, each a thread calling ``fn(key, tasks)``."""

    def __init__(self, fn: Callable[[int, list[VectorTask]], list[VectorOutcome]], n: int) -> None:
        self.keys = list(range(n))
        self.fn = fn
        self.executor = cf.ThreadPoolExecutor(max_workers=n, thread_name_prefix="steer-worker")
        self.futures: dict[cf.Future, int] = {}

    def submit(self, key: int, tasks: list[VectorTask]) -> None:
        self.futures[self.executor.submit(self.fn, key, tasks)] = key

    def poll(self, timeout: float) -> list[Finished]:
        if not self.futures:
            return []
        done, _ = cf.wait(list(self.futures), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        out: list[Finished] = []
        for fut in done:
            key = self.futures.pop(fut)
            exc = fut.exception()
            out.append((key, WorkerLost(repr(exc)) if exc else fut.result()))
        return out

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class RayPool:
    """One named ``SteeringWorker`` actor per key, restarted by Ray if it dies."""

    def __init__(
        self,
        *,
        model: Any,
        evaluation: EvalSpec,
        label: str,
        num_actors: int,
        num_cpus: float,
        num_gpus: float,
        max_batch_jobs: int,
        torch_threads: int | None,
        namespace: str,
    ) -> None:
        from workers.actor import remote_worker_class

        cls = remote_worker_class(num_cpus, num_gpus)
        self.keys = list(range(num_actors))
        # A run id keeps names unique when a resumed driver starts while the
        # actors of a killed one are still being torn down.
        run = uuid.uuid4().hex[:6]
        self.names = [f"SteeringWorker:{label}:{i}:{run}" for i in self.keys]
        self.actors = [
            cls.options(name=self.names[i], namespace=namespace).remote(
                model,
                evaluation,
                label=self.names[i],
                max_batch_jobs=max_batch_jobs,
                torch_threads=torch_threads,
            )
            for i in self.keys
        ]
        self.refs: dict[Any, int] = {}

    def info(self, timeout: float = 600.0) -> list[dict[str, Any]]:
        """Wait for every actor to load its model; returns each actor's info."""
        import ray

        return list(ray.get([a.info.remote() for a in self.actors], timeout=timeout))

    def submit(self, key: int, tasks: list[VectorTask]) -> None:
        self.refs[self.actors[key].run.remote(tasks)] = key

    def poll(self, timeout: float) -> list[Finished]:
        import ray
        from ray.exceptions import RayActorError, RayError

        if not self.refs:
            return []
        ready, _ = ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        out: list[Finished] = []
        for ref in ready:
            key = self.refs.pop(ref)
            try:
                out.append((key, ray.get(ref)))
            except RayActorError as exc:
                # Ray restarts the actor (max_restarts=-1); its batch is requeued.
                log.warning("actor %d died mid-batch; requeueing its tasks: %s", key, exc)
                out.append((key, WorkerLost(f"actor died: {type(exc).__name__}")))
            except RayError as exc:
                # Anything else that escaped the actor (out of memory, a bug):
                # requeue too; the scheduler fails a task after 3 such losses.
                log.warning("batch on actor %d failed: %s", key, str(exc)[:500])
                out.append((key, WorkerLost(f"{type(exc).__name__}: {str(exc)[:200]}")))
        return out

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)


def tasks_error(tasks: Sequence[VectorTask], error: str) -> list[VectorOutcome]:
    return [VectorOutcome(t.vector_id, t.trial, t.example_id, error=error) for t in tasks]
