"""Studies for the ranking tests: the real driver, store and command line,
with fake workers whose numbers make "best" unambiguous but not trivial.

Every held-out row succeeds (as on the quickstart), so transfer success
says nothing; the objective's statistic (``delta``) does. A vector's delta
is one of four values, the same on all its rows, so trials and vectors tie
now and then and the tie rules matter. Its final norm is a fraction of its
trial's norm bound, for the ``norm`` objective of the two-objective study.
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sweep_helpers import FakeWorker, use_local_pool

from orchestrator import cli
from orchestrator.run.pools import local_batch_pool
from workers.evaluation.transfer import TransferRow
from workers.jobs import VectorResult
from workers.service.protocol import Assignment, VectorOutcome

DELTA = {"metric": "target_logprob", "statistic": "delta", "reduce": "mean"}
NORM = {"metric": "norm", "statistic": "steered", "reduce": "mean", "direction": "minimize"}
STUDIES: dict[str, list[dict[str, Any]]] = {
    "tmin": [{**DELTA, "direction": "minimize"}],
    "tmax": [{**DELTA, "direction": "maximize"}],
    "two": [{**DELTA, "direction": "maximize"}, NORM],
}
N_TRIALS, K = 12, 3


class RankWorker(FakeWorker):
    def outcome(self, assignment: Assignment) -> VectorOutcome:
        seed = zlib.crc32(assignment.vector_id.encode())
        rng = np.random.default_rng(seed)
        vec = rng.normal(size=64)
        bound = float(assignment.job.norm_bound or 1.0)
        norm = bound * float(rng.choice([0.25, 0.5, 0.75, 1.0]))
        vec = (vec * norm / np.linalg.norm(vec)).astype(np.float32)
        delta = float(rng.choice([0.5, 1.0, 1.5, 2.0]))
        loss = float(rng.choice([1.0, 2.0]))
        result = VectorResult(
            job_id=assignment.vector_id,
            vector=vec,
            layers=assignment.job.layers,
            loss_history=[3.0, loss],
            target_losses=[loss],
            iterations=1,
            stop_reason="max_iters",
            final_norm=float(np.linalg.norm(vec)),
            seed=assignment.job.seed,
            log_base=10.0,
        )
        rows = [
            TransferRow(
                assignment.vector_id, ex, "target_logprob:promote:0", -3.0 + delta, -3.0, True
            )
            for ex in self.transfer_ids
        ]
        return VectorOutcome(
            assignment.vector_id, assignment.trial, assignment.example_id, result=result, rows=rows
        )


class StdoutCapture:
    """What ``run_study_cli`` needs of capsys, over a redirected stdout (a
    module-scoped fixture has no capsys)."""

    def __init__(self, buf: Any) -> None:
        self.buf = buf

    def readouterr(self) -> Any:
        text = self.buf.getvalue()
        self.buf.seek(0)
        self.buf.truncate()
        return type("Out", (), {"out": text, "err": ""})()


def study_yaml(folder: Path, name: str) -> Path:
    data = {
        "name": name,
        "n_trials": N_TRIALS,
        "vectors_per_trial": K,
        "model": {"name": "tiny-random-llama", "cpus_per_actor": 1},
        "task": {"builtin": "refusal", "max_transfer": 4},
        "search": {"layer": {"low": 2, "high": 3}, "norm": [2.0, 8.0], "lr": 0.1, "max_iters": 2},
        "objectives": STUDIES[name],
        "sampler": {"name": "random", "seed": 1},
        "store": {"root": str(folder / "store")},
        "ray": {"num_cpus": 2},
    }
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(data))
    return path


def run_study_cli(
    folder: Path, name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> str:
    """``steer-sweep run`` on the fake workers; its standard output."""

    def pool(plan: Any) -> Any:
        return local_batch_pool(RankWorker([e.id for e in plan.transfer], delay=0.0), 2)

    use_local_pool(monkeypatch, pool)
    path = study_yaml(folder, name)
    capsys.readouterr()
    assert cli.main(["-q", "run", str(path)]) == 0
    return capsys.readouterr().out


def run_line_trials(out: str) -> list[int]:
    """The trials ``run``'s summary names as best, in its order."""
    return [int(n) for n in re.findall(r"^(?:best trial|  trial) (\d+):", out, re.M)]


def table_column(out: str, column: str) -> list[str]:
    """One column of a table ``best`` printed (pandas' ``to_string``)."""
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "trial"])
    names = lines[head].split()
    return [line.split()[names.index(column)] for line in lines[head + 1 :] if line.strip()]


def report_top_ids(html: str, top: int) -> list[str]:
    table = html.split(f'<h2 id="top-vectors">Top {top} vectors</h2>')[1].split("<h2")[0]
    return re.findall(r'<td><a href="#vector-([0-9a-f]{16})">\1</a></td>', table)
