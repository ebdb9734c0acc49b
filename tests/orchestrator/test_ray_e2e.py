"""End to end on a real local Ray cluster, a tiny model and the moto S3 endpoint.
The same study under faults (killed driver, killed actors, an S3 outage, a
failing job) is in tests/faults/."""

from __future__ import annotations

from sweep_helpers import audit, study_dict

from orchestrator.run.runner import run_study
from orchestrator.store import open_study
from orchestrator.study.config import parse_config


def test_a_study_on_ray_writes_every_trial_to_s3(ray_cluster, s3_root) -> None:
    cfg = parse_config(study_dict(s3_root, "e2e", 5))
    summary = run_study(cfg, show_progress=False)
    assert summary.told == 5 and summary.states == {"COMPLETE": 5}
    audit(s3_root, "e2e", 5, 2, norm_bounded=True)
    study = open_study(s3_root, "e2e")
    metrics = set(study.transfer.to_table(columns=["metric"]).column("metric").to_pylist())
    assert {"side_effect_kl", "target_logprob:promote:0"} <= metrics
    assert study.examples.count_rows() >= 2 + 3
