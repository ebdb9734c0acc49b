"""The command line's conventions: ``--version``; the store root from
``--root``, a study YAML or ``$STEER_SWEEP_ROOT``; a study YAML in place of
the study's name; positional ids anywhere among ``try``'s and ``export``'s
options; a description for every subcommand; exported files with one mode;
GGUF control vectors that read back as the stored vector; ``-q`` without
loading bars; an unknown study named with the studies that exist."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pytest
from cli_checks import assert_one_paragraph
from ranking_studies import StdoutCapture, run_study_cli

from orchestrator import cli
from orchestrator.store import NoSuchStudy, open_study, read_control_vector
from orchestrator.store.reader import fixed_list_to_numpy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("conventions")
    mp = pytest.MonkeyPatch()
    try:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            run_out = run_study_cli(folder, "tmax", mp, StdoutCapture(buf))  # type: ignore[arg-type]
    finally:
        mp.undo()
    root = folder / "store"
    st = open_study(root, "tmax")
    ids = st.vectors.to_table(columns=["vector_id"]).column(0).to_pylist()
    return {"root": str(root), "yaml": str(folder / "tmax.yaml"), "run": run_out, "ids": ids}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["-q", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"steer-sweep {version('steer-sweep')}"


def test_every_subcommand_has_a_description(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    names = list(sub.choices)  # type: ignore[union-attr]
    assert {"status", "best", "compact", "report", "export", "try", "run"} <= set(names)
    for name, p in sub.choices.items():  # type: ignore[union-attr]
        assert p.description, f"`steer-sweep {name} --help` has no description"
    helps = {a.dest: a.help for a in sub._choices_actions}  # type: ignore[attr-defined]
    assert all(helps[n] for n in names)


def test_the_run_line_names_the_commands_to_read_it(study: dict[str, Any]) -> None:
    for command in ("status", "best", "report"):
        assert f"  steer-sweep {command} {study['yaml']}" in study["run"]


@pytest.mark.parametrize("form", ["yaml", "env", "config", "root"])
def test_a_study_is_found_by_yaml_env_config_or_root(
    study: dict[str, Any],
    form: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STEER_SWEEP_ROOT", raising=False)
    args = {
        "yaml": [study["yaml"]],
        "env": ["tmax"],
        "config": ["tmax", "--config", study["yaml"]],
        "root": ["tmax", "--root", study["root"]],
    }[form]
    if form == "env":
        monkeypatch.setenv("STEER_SWEEP_ROOT", study["root"])
    code, out, err = run_cli(capsys, "status", *args)
    assert code == 0, err
    assert out.startswith(f"study tmax in {Path(study['root']).as_uri()}: 12/12 trials"), out
    code, best, err = run_cli(capsys, "best", *args, "--top", "1")
    assert code == 0 and "rank" in best, err


def test_root_beats_the_yaml_and_the_yaml_beats_the_environment(
    study: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("STEER_SWEEP_ROOT", str(tmp_path))  # an empty store
    code, _, err = run_cli(capsys, "status", study["yaml"])
    assert code == 0, err
    code, _, err = run_cli(capsys, "status", study["yaml"], "--root", str(tmp_path))
    assert code == 2
    assert_one_paragraph(err, "no study 'tmax'")


def test_without_any_root_the_error_says_the_three_ways(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STEER_SWEEP_ROOT", raising=False)
    code, out, err = run_cli(capsys, "best", "tmax")
    assert code == 2 and out == ""
    assert_one_paragraph(err, "--root", "$STEER_SWEEP_ROOT", "YAML")
    code, out, err = run_cli(capsys, "best", "no/such/study.yaml")
    assert code == 2
    assert_one_paragraph(err, "no/such/study.yaml: no such study file")


def test_try_and_export_take_ids_anywhere(
    study: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    vid = study["ids"][0]
    forms = [
        ["tmax", vid, "--root", study["root"]],
        ["tmax", "--root", study["root"], vid],  # the form docs/cli.md shows
        ["--root", study["root"], "tmax", vid],
        [study["yaml"], vid],
        [study["yaml"], "--tokens", "2", vid],
    ]
    got = []
    for form in forms:
        code, out, err = run_cli(capsys, "try", *form, "--json", "--tokens", "2", "--examples", "1")
        assert code == 0, (form, err)
        got.append(json.loads(out.splitlines()[0]))
    assert all(g == got[0] for g in got) and got[0]["vector_id"] == vid
    code, _, err = run_cli(capsys, "try", "tmax", vid, "extra", "--root", study["root"])
    assert code == 2
    assert_one_paragraph(err, "unrecognized arguments")
    a, b = study["ids"][:2]
    code, out, err = run_cli(capsys, "export", study["yaml"], a, "--out", str(tmp_path), b)
    assert code == 0, err
    from safetensors import safe_open

    with safe_open(str(tmp_path / "tmax.safetensors"), "np") as f:
        assert list(f.keys()) == sorted([a, b])


def test_exported_files_get_the_mode_of_a_new_file(
    study: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    vid = study["ids"][0]
    run_cli(capsys, "export", study["yaml"], vid, "--out", str(tmp_path / "s"))
    run_cli(capsys, "export", study["yaml"], vid, "--out", str(tmp_path / "g"), "--format", "gguf")
    umask = os.umask(0)
    os.umask(umask)
    files = [tmp_path / "s" / "tmax.safetensors", tmp_path / "g" / f"{vid}.gguf"]
    assert [stat.S_IMODE(p.stat().st_mode) for p in files] == [0o666 & ~umask] * 2


def test_a_gguf_export_reads_back_and_tries_as_the_stored_vector(
    study: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    st = open_study(study["root"], "tmax")
    table = st.vectors.to_table(columns=["vector_id", "layer", "vector"])
    row = table.filter(pc.field("layer") >= 2).slice(0, 1)
    vid, layer = row["vector_id"][0].as_py(), row["layer"][0].as_py()
    stored = fixed_list_to_numpy(row["vector"])[0]
    code, out, err = run_cli(capsys, "export", study["yaml"], vid, "--format", "gguf", "--out",
                             str(tmp_path))  # fmt: skip
    assert code == 0, err
    cv = read_control_vector(tmp_path / f"{vid}.gguf")
    assert cv.vector_id == vid and cv.model_hint == "tiny-random-llama"
    assert list(cv.directions) == [layer]
    assert np.array_equal(cv.directions[layer], stored)
    prompts = ["--prompt", "Say hi.", "--prompt", "Name a colour.", "--tokens", "4", "--json"]
    _, from_store, _ = run_cli(capsys, "try", study["yaml"], vid, *prompts)
    code, from_file, err = run_cli(
        capsys, "try", "--vector", str(tmp_path / f"{vid}.gguf"), *prompts
    )
    assert code == 0, err
    steered = [
        [c["steered"] for c in json.loads(o)["continuations"]] for o in (from_store, from_file)
    ]
    assert steered[0] == steered[1]


def test_a_repeng_style_file_with_several_directions_applies_them_together(
    study: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import gguf

    rng = np.random.default_rng(0)
    path = tmp_path / "repeng.gguf"
    w = gguf.GGUFWriter(str(path), "controlvector")
    w.add_string("controlvector.model_hint", "tiny-random-llama")
    w.add_uint32("controlvector.layer_count", 2)
    dirs = {il: rng.normal(size=64).astype(np.float32) for il in (1, 2)}
    for il, d in dirs.items():
        w.add_tensor(f"direction.{il}", d)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    cv = read_control_vector(path)
    assert sorted(cv.directions) == [2, 3]  # direction.<il> is the input of block il + 1
    assert all(np.array_equal(cv.directions[il + 1], d) for il, d in dirs.items())
    code, out, err = run_cli(capsys, "try", "--vector", str(path), "--prompt", "Hi", "--json")
    assert code == 0, err
    assert "layer 2,3" in json.loads(out)["label"]
    code, _, err = run_cli(capsys, "try", "--vector", str(path), "--prompt", "Hi", "--layer", "1")
    assert code == 2
    assert_one_paragraph(err, "--layer moves a file of one direction only")


def test_open_study_names_the_studies_that_exist(study: dict[str, Any]) -> None:
    with pytest.raises(NoSuchStudy) as exc:
        open_study(study["root"], "misspeled")
    text = str(exc.value)
    assert "no study 'misspeled'" in text and "the studies there are: tmax" in text
    assert "\n" not in text


@pytest.mark.real_model
def test_quiet_loads_the_real_model_without_bars(smollm2: Any) -> None:
    """``-q`` silences the loading bars (transformers' and the GGUF
    conversion's); without it, they are there."""
    argv = [sys.executable, "-m", "orchestrator.cli", "optimize", "--prompt", "Hi",
            "--promote", "No", "--max-iters", "1", "--layer", "3"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    loud = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    quiet = subprocess.run(
        [*argv[:3], "-q", *argv[3:]], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )
    assert loud.returncode == quiet.returncode == 0, loud.stderr + quiet.stderr
    assert "Loading weights" in loud.stderr
    assert "Loading weights" not in quiet.stderr and "it/s" not in quiet.stderr, quiet.stderr


def test_the_python_api_ranks_as_best_lists(study: dict[str, Any], capsys: Any) -> None:
    import orchestrator

    ranked = orchestrator.rank_vectors(orchestrator.open_study(study["root"], "tmax"))
    _, out, _ = run_cli(capsys, "best", study["yaml"], "--top", "100")
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:1] == ["rank"])
    col = lines[head].split().index("vector_id")
    assert [line.split()[col] for line in lines[head + 1 :]] == list(ranked["vector_id"])
    trials = orchestrator.rank_trials(orchestrator.open_study(study["root"], "tmax"))
    assert list(trials["trial"]) == list(dict.fromkeys(ranked["trial"]))
    assert "Only COMPLETE trials are ranked" in orchestrator.RULE


_NO_TORCH = """
import sys
sys.modules["torch"] = None  # an import of either now raises ImportError
sys.modules["transformers"] = None
from orchestrator.cli import main
sys.exit(main(sys.argv[1:]))  # an import of torch fails the command (exit 1)
"""


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["status", "tmax"], 0),
        (["best", "tmax", "--top", "3"], 0),
        (["export", "tmax", "--best", "1", "--format", "gguf", "--out", "{tmp}/gguf"], 0),
        (["report", "tmax", "--out", "{tmp}/report"], 0),
        (["compact", "tmax"], 0),
        (["status", "no-such-study"], 2),  # the error path names no torch class either
    ],
    ids=["status", "best", "export", "report", "compact", "bad-name"],
)
def test_a_read_command_never_imports_torch_or_transformers(
    study: dict[str, Any], argv: list[str], code: int, tmp_path: Path
) -> None:
    args = [*(a.format(tmp=tmp_path) for a in argv), "--root", study["root"]]
    done = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, "-q", *args], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == code, done.stderr
    if code:
        assert_one_paragraph(done.stderr, "no study 'no-such-study'")


def test_every_error_the_command_line_names_is_a_real_exception_class() -> None:
    import importlib

    for name in (*cli._STOPPED, *cli._BAD_INPUT):
        module, _, cls = name.partition(":")
        found = getattr(importlib.import_module(module), cls)
        assert isinstance(found, type) and issubclass(found, Exception), name
    # An error of each kind gets its exit code (a subclass too), anything else none.
    from orchestrator.run.committer import StoreUnavailable
    from orchestrator.run.placement import PlacementError
    from workers.models import ModelLoadError

    assert cli._exit_code(StoreUnavailable("x")) == 1
    assert cli._exit_code(PlacementError("x")) == 2
    assert cli._exit_code(ModelLoadError("x")) == 2
    assert cli._exit_code(KeyError("x")) is None
