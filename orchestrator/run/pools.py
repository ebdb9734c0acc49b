"""Worker pools: where batches of vector assignments run.

A pool has a list of worker keys, ``keys``, the workers that can take a batch
now (a :class:`RayPool`'s changes as actors start, die and come back);
``submit(key, assignments)`` starts a batch on an idle worker and ``poll(timeout)``
returns finished batches as ``(key, outcomes)`` or ``(key, WorkerLost)``.
:class:`RayPool` runs one ``SteeringWorker`` actor per key; :class:`LocalPool`
runs any callable in threads (tests, benchmarks, and the driver-capacity check).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from workers.evaluation.evaluate import EvalSpec
from workers.service.assignments import Assignment, VectorOutcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerLost:
    reason: str


Finished = tuple[int, list[VectorOutcome] | WorkerLost]


class Pool(Protocol):
    keys: list[int]

    def submit(self, key: int, assignments: list[Assignment]) -> None: ...

    def poll(self, timeout: float) -> list[Finished]: ...

    def shutdown(self) -> None: ...


class LocalPool:
    """``n`` in-process workers, each a thread calling ``fn(key, assignments)``."""

    def __init__(self, fn: Callable[[int, list[Assignment]], list[VectorOutcome]], n: int) -> None:
        self.keys = list(range(n))
        self.fn = fn
        self.executor = cf.ThreadPoolExecutor(max_workers=n, thread_name_prefix="steer-worker")
        self.futures: dict[cf.Future, int] = {}

    def submit(self, key: int, assignments: list[Assignment]) -> None:
        self.futures[self.executor.submit(self.fn, key, assignments)] = key

    def info(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        """The shape of :meth:`RayPool.info`, for workers in this process."""
        host, pid = socket.gethostname(), os.getpid()
        return [
            {"label": f"local:{k}", "host": host, "pid": pid, "model": "in-process",
             "device": "this process", "load_s": 0.0}
            for k in self.keys
        ]  # fmt: skip

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
    """One named ``SteeringWorker`` actor per key, restarted by Ray if it dies.

    ``keys`` holds the actors that are ready (model loaded, reachable) and so
    can take a batch; it changes while a study runs. An actor that Ray cannot
    place yet (its node is still joining, or the autoscaler is adding one)
    joins ``keys`` once it has loaded its model; an actor that dies leaves
    ``keys`` (its batch comes back as :class:`WorkerLost`) and rejoins once
    Ray has restarted it elsewhere. A batch is therefore never sent to an
    actor that may not run for minutes, and the study goes on with the actors
    it has. ``size`` is the number of actors asked for.
    """

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
        placement: str = "default",
    ) -> None:
        from workers.service.actor import remote_worker_class

        cls = remote_worker_class(num_cpus, num_gpus)
        self.size = num_actors
        self.keys: list[int] = []
        self.resources = {"CPU": num_cpus, "GPU": num_gpus}
        # A run id keeps names unique when a resumed driver starts while the
        # actors of a killed one are still being torn down.
        run = uuid.uuid4().hex[:6]
        self.names = [f"SteeringWorker:{label}:{i}:{run}" for i in range(num_actors)]
        # "spread": Ray's SPREAD strategy, actors across as many nodes as
        # possible; "default": Ray's own policy, which favours busy nodes.
        options: dict[str, Any] = {"namespace": namespace}
        if placement == "spread":
            options["scheduling_strategy"] = "SPREAD"
        self.actors = [
            cls.options(name=self.names[i], **options).remote(
                model,
                evaluation,
                label=self.names[i],
                max_batch_jobs=max_batch_jobs,
                torch_threads=torch_threads,
            )
            for i in range(num_actors)
        ]
        self.refs: dict[Any, int] = {}
        # One ``info`` call per actor that is not in ``keys``: it returns once
        # the actor has (re)started and loaded its model.
        self.probes: dict[Any, int] = {}
        self.infos: dict[int, dict[str, Any]] = {}
        self.batches = dict.fromkeys(range(num_actors), 0)
        for i in range(num_actors):
            self._probe(i)

    def _probe(self, key: int) -> None:
        # Retried by Ray while the actor restarts (a call with the actor's
        # own max_task_retries=0 fails at once), so it returns when the actor
        # is back, however long Ray takes to find it a node.
        self.probes[self.actors[key].info.options(max_task_retries=-1).remote()] = key

    def _probed(self, ref: Any) -> None:
        """An actor's ``info`` returned: it joins ``keys``. If it failed, the
        actor is gone for good (its model did not load, or it was killed)."""
        import ray
        from ray.exceptions import RayError

        key = self.probes.pop(ref)
        try:
            info = ray.get(ref)
        except RayError as exc:
            log.error("actor %d cannot run: %s", key, str(exc)[:1000])
            if not self.keys and not self.probes:
                raise RuntimeError(f"no SteeringWorker actor can run: {exc}") from None
            return
        self.infos[key] = info
        self.keys = sorted({*self.keys, key})
        log.info(
            "actor %d ready (pid %s on %s); %d of %d ready",
            key,
            info.get("pid"),
            info.get("host"),
            len(self.keys),
            self.size,
        )

    def info(self, timeout: float = 600.0) -> list[dict[str, Any]]:
        """Wait until the actors that fit in the cluster have loaded their
        model (at least one); returns the ready actors' info.

        Fit is judged by the cluster's total resources, so an actor that
        waits for a node still to come is not waited for. After the first
        actor is ready, the others get as long again (at least 10 s) to catch
        up, since actors placed at the same time load in about the same time.
        Actors not ready by then join ``keys`` when they start, while the
        study runs.
        """
        import ray

        started = time.monotonic()
        deadline = started + timeout
        first: float | None = None  # when the first actor was ready
        while self.probes and len(self.keys) < max(1, self._fit()):
            now = time.monotonic()
            if now >= deadline or (first is not None and now >= first + max(10.0, first - started)):
                break
            ready, _ = ray.wait(list(self.probes), num_returns=1, timeout=1.0)
            for ref in ready:
                self._probed(ref)
            if self.keys and first is None:
                first = time.monotonic()
        if not self.keys:
            raise TimeoutError(
                f"no SteeringWorker actor started within {timeout:.0f} s: Ray could not "
                f"place any, or none loaded its model (each needs {self.resources}; "
                "see the Ray dashboard's Actors page)"
            )
        if len(self.keys) < self.size:
            log.warning(
                "%d of %d actors are ready; the study starts with them and the others join "
                "when Ray places them (each needs %s)",
                len(self.keys),
                self.size,
                self.resources,
            )
        return [self.infos[k] for k in self.keys]

    def _fit(self) -> int:
        """How many of the actors the cluster's total resources can hold."""
        import ray

        total = ray.cluster_resources()
        n = self.size
        for name, need in self.resources.items():
            if need > 0:
                n = min(n, int(total.get(name, 0.0) / need + 1e-9))
        return n

    def submit(self, key: int, assignments: list[Assignment]) -> None:
        self.refs[self.actors[key].run.remote(assignments)] = key

    def poll(self, timeout: float) -> list[Finished]:
        import ray
        from ray.exceptions import RayActorError, RayError

        if not self.refs and not self.probes:
            return []
        ready, _ = ray.wait([*self.refs, *self.probes], num_returns=1, timeout=timeout)
        out: list[Finished] = []
        for ref in ready:
            if ref in self.probes:
                self._probed(ref)
                continue
            key = self.refs.pop(ref)
            try:
                out.append((key, ray.get(ref)))
                self.batches[key] += 1
            except RayActorError as exc:
                # Ray restarts the actor (max_restarts=-1), maybe on another
                # node once there is room; its batch is requeued, and it gets
                # no new batch until it answers again.
                log.warning("actor %d died mid-batch; requeueing its assignments: %s", key, exc)
                out.append((key, WorkerLost(f"actor died: {type(exc).__name__}")))
                self.keys = [k for k in self.keys if k != key]
                self._probe(key)
            except RayError as exc:
                # Anything else that escaped the actor (out of memory, a bug):
                # requeue too; the ledger fails an assignment after 3 such losses.
                log.warning("batch on actor %d failed: %s", key, str(exc)[:500])
                out.append((key, WorkerLost(f"{type(exc).__name__}: {str(exc)[:200]}")))
        return out

    def shutdown(self) -> None:
        import ray

        for key in range(self.size):
            log.info(
                "%s: %d batches%s",
                self.names[key],
                self.batches[key],
                "" if key in self.keys else " (not ready at the end)",
            )
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
