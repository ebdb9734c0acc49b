"""`steer-sweep optimize` end to end, in a subprocess like a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

from safetensors import safe_open


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_optimize_writes_a_self_describing_vector(tmp_path) -> None:
    out = tmp_path / "v.safetensors"
    proc = run_cli(
        "optimize",
        "--model",
        "tiny-random-llama",
        "--prompt",
        "Hello world",
        "--promote",
        "Paris is lovely.",
        "--layer",
        "-2",
        "--norm",
        "3",
        "--max-iters",
        "4",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "hartleys in 4 steps" in proc.stdout
    with safe_open(str(out), "np") as fh:
        vec = fh.get_tensor("vector")
        meta = fh.metadata()
    assert vec.shape == (64,)
    assert json.loads(meta["layers"]) == [2]
    assert len(json.loads(meta["loss_history"])) == 5
    assert meta["model"] == "tiny-random-llama"


def test_bad_input_exits_2_with_one_paragraph_and_no_traceback() -> None:
    bad_layer = ["optimize", "--model", "tiny-random-llama", "--prompt", "Hi", "--promote", "x",
                 "--layer", "9"]  # fmt: skip
    proc = run_cli(*bad_layer)
    assert proc.returncode == 2
    assert "layer 9 is out of range" in proc.stderr
    assert "Traceback" not in proc.stderr
    debug = run_cli("--debug", *bad_layer)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    missing = run_cli("optimize", "--model", "./no/such/model", "--prompt", "Hi", "--promote", "x")
    assert missing.returncode == 2 and "model path does not exist" in missing.stderr
