"""Study configs: every shipped example loads; bad ones fail readably, before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sweep_helpers import tiny_config

from orchestrator.run.preflight import PreflightError, prepare
from orchestrator.study.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def test_there_are_example_configs() -> None:
    assert EXAMPLES, "examples/*.yaml is empty"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_loads_and_passes_preflight(path: Path, tmp_path) -> None:
    cfg = load_config(path, [f"store.root={tmp_path / 'store'}"])
    plan = prepare(cfg)
    assert len(plan.train) == cfg.vectors_per_trial
    assert plan.transfer


def test_overrides_apply_with_yaml_values(tmp_path) -> None:
    path = REPO / "examples" / "quickstart.yaml"
    cfg = load_config(path, ["n_trials=3", "search.layer=[4, 8]", "sampler.name=random"])
    assert cfg.n_trials == 3 and cfg.search.layer == [4, 8] and cfg.sampler.name == "random"
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(path, ["n_trials"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"nme": "x"}, "nme: unknown key"),
        ({"search": {"layr": 3}}, "search.layr: unknown key"),
        ({"n_trials": "many"}, "n_trials: Input should be a valid integer"),
        ({"n_trials": 0}, "n_trials: Input should be greater than or equal to 1"),
        ({"search": {"norm": {"low": 5.0, "high": 1.0}}}, "high .1.0. is below low .5.0."),
        (
            {"task": {"builtin": "refusal", "path": "x.jsonl"}},
            "exactly one of task.builtin, task.path or task.hf",
        ),
        ({"sampler": {"name": "cmaes"}}, "sampler.name"),
    ],
)
def test_bad_configs_name_the_key(change, message, tmp_path) -> None:
    base = tiny_config(str(tmp_path)).model_dump(mode="json")
    base.update(change)
    with pytest.raises(ConfigError, match=message):
        parse_config(base, "study.yaml")


def test_layer_out_of_range_is_caught_against_the_model(tmp_path) -> None:
    with pytest.raises(
        PreflightError, match="search.layer 9 is out of range for a model with 4 layers"
    ):
        prepare(tiny_config(str(tmp_path), search={"layer": 9}))
    with pytest.raises(PreflightError, match="out of range"):
        prepare(tiny_config(str(tmp_path), search={"layer": {"low": 0, "high": 7}}))
    # Negative layers count from the end.
    plan = prepare(tiny_config(str(tmp_path), search={"layer": [-1, -4]}))
    assert plan.space.layer == [3, 0]


def test_an_unreachable_store_fails_in_preflight(tmp_path, monkeypatch) -> None:
    from store.factories import free_port, set_fake_aws_env

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    set_fake_aws_env(monkeypatch, endpoint, tmp_path)
    cfg = tiny_config("s3://no-bucket/prefix")
    with pytest.raises(PreflightError, match="store.root"):
        prepare(cfg)


def test_the_cli_exits_2_without_a_traceback_and_writes_nothing(tmp_path) -> None:
    store = tmp_path / "store"
    path = tmp_path / "bad.yaml"
    path.write_text(
        f"name: bad\nn_trials: 2\ntask: {{builtin: refusal}}\nstore: {{root: {store}}}\n"
        f"model: {{name: tiny-random-llama}}\nsearch: {{layer: 40}}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "run", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "search.layer 40 is out of range" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not store.exists()
    typo = tmp_path / "typo.yaml"
    typo.write_text("name: t\nn_trials: 1\ntask: {builtin: refusal}\nsaerch: {}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "run", str(typo)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "saerch: unknown key" in proc.stderr


def test_evaluation_coldness_is_a_setting_that_reaches_the_workers(tmp_path) -> None:
    root = str(tmp_path / "store")
    assert prepare(tiny_config(root)).evaluation.coldness == 0.7  # the paper's, by default
    plan = prepare(tiny_config(root, evaluation={"coldness": 0.5}))
    assert plan.evaluation.coldness == 0.5
    with pytest.raises(ConfigError, match="evaluation.coldness"):
        tiny_config(root, evaluation={"coldness": 0})


def test_a_stored_config_from_before_a_setting_existed_still_resumes(tmp_path) -> None:
    """A setting added later (evaluation.coldness) at its default changes
    neither the comparison with a stored config nor the study's identity."""
    from orchestrator.run.runner import identity_hash, store_config
    from orchestrator.store import load_study_config, redact, resolve_root, save_study_config

    cfg = tiny_config(str(tmp_path / "store"))
    root = resolve_root(cfg.store.root)
    new = redact(cfg.model_dump(mode="json"))
    old = {**new, "evaluation": {k: v for k, v in new["evaluation"].items() if k != "coldness"}}
    save_study_config(root, cfg.name, old)
    assert store_config(cfg, root) == identity_hash(old) == identity_hash(new)
    assert load_study_config(root, cfg.name) == new  # now with the setting spelled out
    changed = tiny_config(str(tmp_path / "store"), evaluation={"coldness": 0.5})
    with pytest.raises(Exception, match="evaluation.coldness"):
        store_config(changed, root)


def test_keep_generations_may_change_between_runs_of_a_study(tmp_path) -> None:
    """How much text a study keeps is not what it computes: a config stored
    before the setting existed, or with another value, resumes as the same study."""
    from orchestrator.run.runner import identity_hash, store_config
    from orchestrator.store import redact, resolve_root, save_study_config

    cfg = tiny_config(str(tmp_path / "store"))
    assert cfg.evaluation.keep_generations == 2
    assert prepare(cfg).evaluation.keep_generations == 2
    root = resolve_root(cfg.store.root)
    new = redact(cfg.model_dump(mode="json"))
    old = {**new, "evaluation": {k: v for k, v in new["evaluation"].items()
                                 if k not in ("keep_generations", "coldness")}}  # fmt: skip
    save_study_config(root, cfg.name, old)
    assert store_config(cfg, root) == identity_hash(old)
    more = tiny_config(str(tmp_path / "store"), evaluation={"keep_generations": 7})
    assert store_config(more, root) == identity_hash(old)
    with pytest.raises(ConfigError, match="keep_generations"):
        tiny_config(str(tmp_path / "store"), evaluation={"keep_generations": -1})
