"""A job that raises inside the worker every time fails only its trial.

Token positions outside a prompt, the way this used to be staged, are now
refused before the study starts (tests/bad_inputs), so the fault is injected:
``encode_job`` raises for one grid point's jobs, inside the streaming worker,
on every attempt. Real driver, sampler, store and tiny model; the worker's
engine runs in this process.
"""

from __future__ import annotations

from typing import Any

import pytest
from sweep_helpers import audit, study_dict

import workers.service.stream as stream
from orchestrator.run.pools import LocalPool
from orchestrator.run.runner import run_study
from orchestrator.study.config import parse_config
from workers.models import load_model
from workers.service.stream import StreamingEngine
from workers.steering.encoding import JobError


def test_a_job_that_always_fails_fails_only_its_trial(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = str(tmp_path / "store")
    tokens = ["all", "prompt", "last_k:2", "positions:0,-1"]
    data = study_dict(root, "failjob", 4, sampler={"name": "grid"})
    data["search"].update(layer=1, norm=4.0, tokens=tokens)
    cfg = parse_config(data)
    real_encode = stream.encode_job

    def encode(lm: Any, job: Any) -> Any:
        if job.tokens.mode == "positions":
            raise JobError(f"job '{job.job_id}': injected fault")
        return real_encode(lm, job)

    monkeypatch.setattr(stream, "encode_job", encode)
    from orchestrator.run.preflight import prepare

    plan = prepare(cfg)
    lm = load_model(plan.model_spec)
    engine = StreamingEngine(lm, plan.evaluation, max_rows=2)
    summary = run_study(cfg, pool=LocalPool([engine]), show_progress=False)
    assert summary.states == {"COMPLETE": 3, "FAIL": 1}
    result = audit(root, "failjob", 4, 2, states={"COMPLETE": 3, "FAIL": 1}, norm_bounded=True)
    [failed] = [t for t in result["trials"] if t.state == "FAIL"]
    assert failed.params["tokens"] == "positions:0,-1"
    assert failed.error and "injected fault" in failed.error
    assert failed.values is None
    assert not [v for v in result["vectors"] if v["trial"] == failed.number]
