"""A fake worker for real Ray actor processes: the streaming protocol
(``info``, ``put``, ``drain``) over a :class:`BatchWorker` that sleeps
``seconds`` per assignment and returns a plausible outcome. No model and no
torch (it imports ``workers.service.protocol`` and plain data only), so a
machine can hold dozens of these processes.

It takes :class:`SteeringWorker`'s arguments, as ``RayPool(actor_class=...)``
passes them; ``model`` is a dict: ``seconds`` per assignment and the
held-out ``transfer_ids`` its outcomes have rows for. ``busy()`` says how
long it worked, for the idle share.
"""

from __future__ import annotations

import os
import socket
import time
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from workers.evaluation.rows import TransferRow
from workers.jobs import VectorResult
from workers.service.protocol import Assignment, BatchWorker, Drained, VectorOutcome

WIDTH = 64  # the tiny models' width


def fake_outcome(assignment: Assignment, transfer_ids: Sequence[str]) -> VectorOutcome:
    """An outcome whose success grows with the layer (a sampler has signal):
    the fake workers' one outcome, in threads (``sweep_helpers.FakeWorker``)
    and in Ray actor processes (:class:`SleepWorker`)."""
    seed = zlib.crc32(assignment.vector_id.encode())
    vec = np.random.default_rng(seed).normal(size=WIDTH).astype(np.float32)
    layer = assignment.job.layers[0]
    result = VectorResult(
        job_id=assignment.vector_id,
        vector=vec,
        layers=(layer,),
        loss_history=[3.0, 2.0],
        target_losses=[2.0],
        iterations=1,
        stop_reason="max_iters",
        final_norm=float(np.linalg.norm(vec)),
        seed=assignment.job.seed,
        log_base=10.0,
    )
    rows = [
        TransferRow(
            assignment.vector_id, ex, "target_logprob:promote:0", -1.0 if ok else -5.0, -3.0, ok
        )
        for i, ex in enumerate(transfer_ids)
        for ok in [(seed + i) % 4 < layer]  # higher layers succeed more often
    ]
    return VectorOutcome(
        assignment.vector_id, assignment.trial, assignment.example_id, result=result, rows=rows
    )


class SleepWorker:
    def __init__(
        self,
        model: dict[str, Any],
        evaluation: Any = None,
        *,
        label: str,
        max_batch_jobs: int = 1,
        torch_threads: int | None = None,
        streaming: bool = True,
    ) -> None:
        self.label = label
        self.seconds = float(model["seconds"])
        self.transfer_ids = list(model["transfer_ids"])
        self.max_rows = max_batch_jobs
        self.busy_s = 0.0
        self.first: float | None = None
        self.last: float | None = None
        self.worker = BatchWorker(self._run, max_rows=max_batch_jobs)

    def __repr__(self) -> str:
        return self.label

    def _run(self, batch: list[Assignment]) -> list[VectorOutcome]:
        start = time.time()
        time.sleep(self.seconds * len(batch))
        out = [fake_outcome(a, self.transfer_ids) for a in batch]
        end = time.time()
        self.busy_s += end - start
        self.first = start if self.first is None else self.first
        self.last = end
        return out

    def info(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "model": "sleep",
            "revision": None,
            "n_layers": 4,
            "d_model": WIDTH,
            "device": "cpu",
            "dtype": "float32",
            "load_s": 0.0,
            "max_rows": self.max_rows,
            "torch": "torch" in __import__("sys").modules,
        }

    def put(self, assignments: Sequence[Assignment]) -> int:
        return self.worker.put(assignments)

    def drain(self, timeout: float = 0.5) -> Drained:
        return self.worker.drain(timeout)

    def busy(self) -> dict[str, float | None]:
        return {"busy_s": self.busy_s, "first": self.first, "last": self.last}
