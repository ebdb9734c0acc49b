"""Rerunning a study with a changed config: refused, unless --extend (more
trials, nothing else) or --force-config (anything; the old config is kept)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sweep_helpers import audit, tiny_config
from test_driver import fake_pool

from orchestrator.cli import main
from orchestrator.run.runner import run_study
from orchestrator.store import StudyConfigMismatch, config_hash, open_study


def _run(cfg, **flags):
    pool, _ = fake_pool(cfg)
    return run_study(cfg, pool=pool, show_progress=False, **flags)


def _history(root: Path) -> list[str]:
    folder = root / "_studies" / "tiny" / "history"
    return sorted(p.name for p in folder.glob("*.json")) if folder.exists() else []


def test_extend_raises_n_trials_and_nothing_else(tmp_path) -> None:
    root = tmp_path / "store"
    first = tiny_config(str(root), n_trials=4)
    _run(first)
    more = tiny_config(str(root), n_trials=7)
    with pytest.raises(StudyConfigMismatch, match=r"changed: n_trials.*--extend"):
        _run(more)
    assert len(open_study(str(root), "tiny").completed_trials()) == 4  # nothing ran
    fewer = tiny_config(str(root), n_trials=3)
    with pytest.raises(StudyConfigMismatch, match="larger n_trials"):
        _run(fewer, extend=True)
    other = tiny_config(str(root), n_trials=7, search__norm=[4.0])
    with pytest.raises(StudyConfigMismatch, match=r"changed: n_trials, search.norm"):
        _run(other, extend=True)

    summary = _run(more, extend=True)
    assert summary.resumed == 4 and summary.told == 3
    audit(str(root), "tiny", 7, 2)
    stored = open_study(str(root), "tiny").config()
    assert stored is not None and stored["n_trials"] == 7
    old_hash = config_hash(json.loads(first.model_dump_json()))
    assert _history(root) == [f"config-{old_hash}.json"]
    # The extended config is now the study's: a plain rerun resumes it.
    assert _run(more).told == 0


def test_force_config_accepts_a_change_and_keeps_the_old_config(tmp_path) -> None:
    root = tmp_path / "store"
    _run(tiny_config(str(root), n_trials=3))
    changed = tiny_config(str(root), n_trials=5, search__norm=[4.0])
    with pytest.raises(StudyConfigMismatch, match="--force-config"):
        _run(changed)
    summary = _run(changed, force_config=True)
    assert summary.resumed == 3 and summary.told == 2
    trials = audit(str(root), "tiny", 5, 2)["trials"]
    assert [t.params["norm"] for t in trials[3:]] == [4.0, 4.0]
    assert len(_history(root)) == 1
    hashes = open_study(str(root), "tiny").trials.to_table(columns=["config_hash"])
    assert len(set(hashes.column("config_hash").to_pylist())) == 2  # rows say which config


def test_the_cli_refuses_a_changed_study_with_a_hint(tmp_path, capsys) -> None:
    root = tmp_path / "store"
    _run(tiny_config(str(root), n_trials=2))
    study = tmp_path / "study.yaml"
    study.write_text(tiny_config(str(root), n_trials=5).model_dump_json())  # JSON is YAML
    assert main(["-q", "run", str(study)]) == 2
    err = capsys.readouterr().err
    assert "changed: n_trials" in err and "--extend" in err


def test_other_resources_resume_the_same_study(tmp_path) -> None:
    """Actors, GPUs, batch rows and the cluster are not part of a study's identity."""
    root = tmp_path / "store"
    _run(tiny_config(str(root), n_trials=3))
    moved = tiny_config(
        str(root),
        n_trials=3,
        model__num_actors=3,
        model__max_batch_jobs=16,
        model__placement="spread",
        ray__num_cpus=1,
    )
    summary = _run(moved)  # no flag needed
    assert summary.resumed == 3 and summary.told == 0
    assert _history(root) == []
    stored = open_study(str(root), "tiny").config()
    assert stored is not None and stored["model"]["max_batch_jobs"] == 16
    more = tiny_config(str(root), n_trials=4, model__max_batch_jobs=8)
    assert _run(more, extend=True).told == 1
    hashes = open_study(str(root), "tiny").trials.to_table(columns=["config_hash"])
    # n_trials did change the identity; the resources alone did not.
    assert len(set(hashes.column("config_hash").to_pylist())) == 2
    with pytest.raises(StudyConfigMismatch, match=r"changed: search.lr"):
        _run(tiny_config(str(root), n_trials=4, search__lr=0.3))
