"""Pools of workers, shaped like Ray's ``ActorPool``: the caller says what to run.

A pool holds one actor per key; ``keys`` lists those that can take calls now
(a :class:`RayPool`'s changes as actors start, die and come back).
``submit(key, fn, value, tag)`` runs ``fn(actor, value)``, which calls a
method the Ray way (``actor.put.remote(value)``), and ``poll(timeout)``
returns finished calls as :class:`Done`, whose ``value`` is the call's result
or :class:`WorkerLost`. The pool knows nothing of what its actors do: the
steering feeder (:mod:`orchestrator.run.feeder`) and the surprisal scorer
(:mod:`orchestrator.run.surprisal`) use the same two classes.

:class:`RayPool` runs named ``SteeringWorker`` actors; :class:`LocalPool`
holds objects in this process (tests, benchmarks) and runs each call on a
thread, behind a handle with the same ``.method.remote(...)`` spelling.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from workers.evaluation.evaluate import EvalSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerLost:
    reason: str


@dataclass(frozen=True)
class Done:
    """A finished call: its actor's key, the caller's tag, and its result (or
    :class:`WorkerLost` when the actor died or the call raised)."""

    key: int
    tag: str
    value: Any


Call = Callable[[Any, Any], Any]  # fn(actor, value) -> a Ray ObjectRef or a local future


class Pool(Protocol):
    keys: list[int]
    size: int

    def submit(self, key: int, fn: Call, value: Any, tag: str = "") -> None: ...

    def poll(self, timeout: float) -> list[Done]: ...

    def info(self, timeout: float = 600.0) -> list[dict[str, Any]]: ...

    def shutdown(self) -> None: ...


class _LocalMethod:
    def __init__(self, executor: cf.ThreadPoolExecutor, method: Callable[..., Any]) -> None:
        self.executor, self.method = executor, method

    def remote(self, *args: Any, **kwargs: Any) -> cf.Future:
        return self.executor.submit(self.method, *args, **kwargs)


class LocalHandle:
    """An in-process object called the Ray way: ``handle.drain.remote(t)``
    runs ``obj.drain(t)`` on a thread and returns a future."""

    def __init__(self, obj: Any, executor: cf.ThreadPoolExecutor) -> None:
        self._obj, self._executor = obj, executor

    def __getattr__(self, name: str) -> _LocalMethod:
        return _LocalMethod(self._executor, getattr(self._obj, name))


class LocalPool:
    """Objects in this process as a pool: one key per object; every call on a
    thread (``threads_per_actor`` at once per object, so a long-polling
    ``drain`` never blocks a ``put``)."""

    def __init__(self, actors: Sequence[Any], *, threads_per_actor: int = 4) -> None:
        self.objects = list(actors)
        self.keys = list(range(len(self.objects)))
        self.size = len(self.objects)
        self.executor = cf.ThreadPoolExecutor(
            max_workers=max(1, threads_per_actor * len(self.objects)),
            thread_name_prefix="local-actor",
        )
        self.actors = [LocalHandle(o, self.executor) for o in self.objects]
        self.futures: dict[cf.Future, tuple[int, str]] = {}
        # Finished calls, in the order they finished: a poll takes them
        # without looking at the calls still running.
        self._done: deque[cf.Future] = deque()
        self._wake = threading.Event()

    def submit(self, key: int, fn: Call, value: Any, tag: str = "") -> None:
        fut = fn(self.actors[key], value)
        self.futures[fut] = (key, tag)
        fut.add_done_callback(self._finished)  # runs at once if it is done already

    def _finished(self, fut: cf.Future) -> None:
        self._done.append(fut)
        self._wake.set()

    def info(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        """The shape of :meth:`RayPool.info`, for workers in this process."""
        host, pid = socket.gethostname(), os.getpid()
        out = []
        for k, obj in enumerate(self.objects):
            meta = obj.info() if hasattr(obj, "info") else {}
            out.append(
                {
                    "label": f"local:{k}",
                    "host": host,
                    "pid": pid,
                    "model": "in-process",
                    "device": "this process",
                    "load_s": 0.0,
                    **meta,
                }  # fmt: skip
            )
        return out

    def poll(self, timeout: float) -> list[Done]:
        if not self.futures:
            return []
        if not self._done and timeout > 0:
            self._wake.clear()
            if not self._done:  # a call that finished after the clear set it again
                self._wake.wait(timeout)
        out: list[Done] = []
        while self._done:
            fut = self._done.popleft()
            key, tag = self.futures.pop(fut)
            exc = fut.exception()
            out.append(Done(key, tag, WorkerLost(repr(exc)) if exc else fut.result()))
        return out

    def shutdown(self) -> None:
        for obj in self.objects:
            if hasattr(obj, "close"):
                obj.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


def local_batch_pool(fn: Callable[[int, list[Any]], list[Any]], n: int, rows: int = 1) -> LocalPool:
    """``n`` in-process workers that each run ``fn(key, assignments)`` on one
    batch at a time (:class:`workers.service.stream.BatchWorker`): fakes in
    tests and benchmarks."""
    from functools import partial

    from workers.service.protocol import BatchWorker

    return LocalPool([BatchWorker(partial(fn, k), max_rows=rows) for k in range(n)])


class RayPool:
    """One named ``SteeringWorker`` actor per key, restarted by Ray if it dies.

    ``keys`` holds the actors that are ready (model loaded, reachable) and so
    can take calls; it changes while a study runs. An actor that Ray cannot
    place yet (its node is still joining, or the autoscaler is adding one)
    joins ``keys`` once it has loaded its model; an actor that dies leaves
    ``keys`` (its calls come back as :class:`WorkerLost`) and rejoins once
    Ray has restarted it elsewhere. Work is therefore never sent to an actor
    that may not run for minutes, and the study goes on with the actors it
    has. ``size`` is the number of actors asked for.
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
        streaming: bool = True,
        placement_timeout_s: float = 600.0,
        actor_class: type | None = None,
    ) -> None:
        from workers.service.actor import remote_worker_class

        cls = remote_worker_class(num_cpus, num_gpus, actor_class)
        self.size = num_actors
        self.keys: list[int] = []
        self.resources = {"CPU": num_cpus, "GPU": num_gpus}
        self.label = label
        self.placement_timeout_s = placement_timeout_s
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
                streaming=streaming,
            )
            for i in range(num_actors)
        ]
        self.refs: dict[Any, tuple[int, str]] = {}
        # One ``info`` call per actor that is not in ``keys``: it returns once
        # the actor has (re)started and loaded its model.
        self.probes: dict[Any, int] = {}
        self.infos: dict[int, dict[str, Any]] = {}
        # calls answered per actor, by the caller's tag ("put", "drain", "score")
        self.calls: dict[int, dict[str, int]] = {k: {} for k in range(num_actors)}
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

        While no node has room for one actor, the wait is for the cluster to
        grow (an autoscaler): at most ``placement_timeout_s``, with a line a
        minute on what it waits for, then :class:`PlacementTimeout`. Once an
        actor can be placed, loading gets ``timeout`` seconds. Fit is judged
        by the nodes' total resources, so an actor that waits for a node
        still to come is not waited for. After the first actor is ready, the
        others get as long again (at least 10 s) to catch up, since actors
        placed at the same time load in about the same time. Actors not
        ready by then join ``keys`` when they start, while the study runs.
        """
        import ray

        from orchestrator.run.placement import PlacementTimeout

        started = time.monotonic()
        deadline = started + timeout
        first: float | None = None  # when the first actor was ready
        unplaced_since: float | None = None  # since when no actor could be placed
        said = started
        while self.probes and len(self.keys) < max(1, fit := self._fit()):
            now = time.monotonic()
            if now >= deadline or (first is not None and now >= first + max(10.0, first - started)):
                break
            if not self.keys and fit == 0:
                unplaced_since = unplaced_since if unplaced_since is not None else now
                waited = now - unplaced_since
                if waited >= self.placement_timeout_s:
                    raise PlacementTimeout(self._unplaceable(waited))
                if now - said >= 60.0:
                    log.warning("still waiting for room: %s", self._unplaceable(waited))
                    said = now
            elif unplaced_since is not None:  # the cluster grew: loading starts now
                unplaced_since, deadline = None, now + timeout
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

    def _demand(self) -> Any:
        from orchestrator.run.placement import Demand

        return [Demand(self.label, self.size, dict(self.resources))]

    def _unplaceable(self, waited: float) -> str:
        from orchestrator.run import placement

        nodes = placement.cluster_nodes()
        why = placement.explain(self._demand(), nodes, placement.shortfall(self._demand(), nodes))
        return (
            f"{why}. Waited {waited:.0f} s of model.placement_timeout_s "
            f"{self.placement_timeout_s:g}"
        )

    def _fit(self) -> int:
        """How many of the actors the cluster's alive nodes can hold, each on one node."""
        from orchestrator.run import placement

        missing = placement.shortfall(self._demand(), placement.cluster_nodes())
        return self.size - sum(d.actors for d in missing)

    def submit(self, key: int, fn: Call, value: Any, tag: str = "") -> None:
        self.refs[fn(self.actors[key], value)] = (key, tag)

    def poll(self, timeout: float) -> list[Done]:
        import ray
        from ray.exceptions import RayActorError, RayError

        if not self.refs and not self.probes:
            return []
        ready, _ = ray.wait([*self.refs, *self.probes], num_returns=1, timeout=timeout)
        # Take every other call that is done too: a busy pool returns many at once.
        if ready:
            more, _ = ray.wait([*self.refs], num_returns=len(self.refs), timeout=0)
            ready = list(dict.fromkeys([*ready, *more]))
        out: list[Done] = []
        for ref in ready:
            if ref in self.probes:
                self._probed(ref)
                continue
            key, tag = self.refs.pop(ref)
            try:
                out.append(Done(key, tag, ray.get(ref)))
                kind = tag.partition(":")[0]
                self.calls[key][kind] = self.calls[key].get(kind, 0) + 1
            except RayActorError as exc:
                # Ray restarts the actor (max_restarts=-1), maybe on another
                # node once there is room; the caller requeues what it had
                # sent, and the actor gets no new calls until it answers again.
                if key in self.keys:
                    log.warning("actor %d died; requeueing what it held: %s", key, exc)
                    self.keys = [k for k in self.keys if k != key]
                    self._probe(key)
                out.append(Done(key, tag, WorkerLost(f"actor died: {type(exc).__name__}")))
            except RayError as exc:
                # Anything else that escaped the actor (out of memory, a bug).
                log.warning("a call on actor %d failed: %s", key, str(exc)[:500])
                out.append(Done(key, tag, WorkerLost(f"{type(exc).__name__}: {str(exc)[:200]}")))
        return out

    def shutdown(self) -> None:
        import ray

        for key in range(self.size):
            counts = ", ".join(f"{n} {kind} calls" for kind, n in sorted(self.calls[key].items()))
            log.info(
                "%s: %s%s",
                self.names[key],
                counts or "no calls",
                "" if key in self.keys else " (not ready at the end)",
            )
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
