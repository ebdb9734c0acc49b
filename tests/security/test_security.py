"""Security properties of the package:

- the sources (orchestrator/, workers/) never unpickle, never ``torch.load``
  without ``weights_only=True``, never ``eval``/``exec``, never ``yaml.load``
  without a safe loader;
- remote model code is off by default (the refusal itself is tested in
  tests/workers/test_models_and_bad_input.py);
- credentials set in the environment never reach the store or the logs of a
  study (a whole study on moto S3 with fake keys, then every byte searched;
  the same search runs after the S3-outage study in tests/faults/);
- a study name or an S3 prefix cannot reach outside the store root.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest
from store.factories import (
    FAKE_SECRET,
    assert_no_credentials,
    bucket_bytes,
    make_bucket,
    set_fake_aws_env,
)
from sweep_helpers import FakeWorker, audit, tiny_config

from orchestrator.cli import main
from orchestrator.run.pools import local_batch_pool
from orchestrator.run.preflight import model_spec, prepare
from orchestrator.run.runner import run_study
from orchestrator.study.config import ModelConfig, parse_config

REPO = Path(__file__).resolve().parents[2]
UNSAFE_MODULES = {"pickle", "cPickle", "cloudpickle", "dill", "marshal", "shelve", "joblib"}


def unsafe_calls(source: str) -> list[str]:
    """What in ``source`` could run code hidden in data."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names]
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [f"import {n}" for n in names if n.split(".")[0] in UNSAFE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("eval", "exec", "__import__"):
            found.append(f"{func.id}()")
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            dotted = f"{func.value.id}.{func.attr}"
            kw = {k.arg: k.value for k in node.keywords}
            if dotted == "torch.load":
                safe = kw.get("weights_only")
                if not (isinstance(safe, ast.Constant) and safe.value is True):
                    found.append("torch.load() without weights_only=True")
            if dotted == "yaml.load":
                loader = kw.get("Loader")
                if not (isinstance(loader, ast.Attribute) and "Safe" in loader.attr):
                    found.append("yaml.load() without a safe Loader")
            if dotted in ("np.load", "numpy.load") and "allow_pickle" in kw:
                if not _false(kw["allow_pickle"]):
                    found.append(f"{dotted}() with allow_pickle")
    return found


def _false(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def test_the_scanner_catches_what_it_looks_for() -> None:
    planted = (
        "import pickle\nfrom dill import loads\nimport torch, yaml, numpy as np\n"
        "torch.load(f)\ntorch.load(f, weights_only=False)\nyaml.load(s, Loader=yaml.Loader)\n"
        "eval('1')\nexec('x = 1')\nnp.load(p, allow_pickle=True)\n"
    )
    assert len(unsafe_calls(planted)) == 8, unsafe_calls(planted)
    fine = (
        "import torch, yaml, numpy as np\ntorch.load(f, weights_only=True)\n"
        "yaml.safe_load(s)\nyaml.load(s, Loader=yaml.SafeLoader)\nmodel.eval()\nnp.load(p)\n"
    )
    assert unsafe_calls(fine) == []


def test_the_package_never_loads_code_hidden_in_data() -> None:
    files = sorted((REPO / "orchestrator").rglob("*.py")) + sorted((REPO / "workers").rglob("*.py"))
    assert len(files) > 30
    problems = {
        str(f.relative_to(REPO)): hits
        for f in files
        if (hits := unsafe_calls(f.read_text(encoding="utf-8")))
    }
    assert problems == {}


def test_remote_code_is_off_unless_the_study_turns_it_on(tmp_path) -> None:
    assert ModelConfig().trust_remote_code is False
    cfg = tiny_config(str(tmp_path))
    assert model_spec(cfg).trust_remote_code is False
    on = tiny_config(str(tmp_path), model={"name": "tiny-random-llama", "trust_remote_code": True})
    assert model_spec(on).trust_remote_code is True


def test_env_credentials_reach_no_stored_byte_and_no_log(
    s3_root: str, moto_endpoint: str, caplog: pytest.LogCaptureFixture, capsys
) -> None:
    """A whole study (fake workers, the real driver and store) on moto S3 with
    fake AWS keys in the environment, then ``status``, ``best`` and
    ``compact``: the keys are in no object, no log record and no output."""
    import boto3

    cfg = tiny_config(s3_root, name="secrets", n_trials=3)
    plan = prepare(cfg)
    pool = local_batch_pool(FakeWorker([e.id for e in plan.transfer]), 2)
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    bucket = s3_root.split("/")[2]
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("botocore").setLevel(logging.WARNING)  # as the command line sets it
        summary = run_study(cfg, pool=pool, show_progress=False)
        pool.shutdown()
        assert main(["status", "secrets", "--root", s3_root]) == 0
        assert main(["best", "secrets", "--root", s3_root]) == 0
        blobs = bucket_bytes(client, bucket)
        assert main(["compact", "secrets", "--root", s3_root]) == 0
    assert summary.states == {"COMPLETE": 3}
    audit(s3_root, "secrets", 3, cfg.vectors_per_trial)
    assert len(blobs) >= 3 * 3 + 2  # trials, vectors, transfer; examples, config
    blobs += bucket_bytes(client, bucket)  # and after compaction
    printed = capsys.readouterr()
    assert "trials" in printed.out  # the commands did print
    assert_no_credentials(blobs + [caplog.text, printed.out, printed.err])


@pytest.mark.parametrize("where", ["transfer metric", "example prompt", "trial param"])
def test_the_credential_check_finds_a_secret_inside_a_compressed_column(
    tmp_path: Path, where: str
) -> None:
    """The check must be able to fail: a secret planted in a column of a
    zstd-compressed Parquet file is found. Among many other prompts (zstd then
    Huffman-codes the dictionary page) and between its column's smallest and
    largest value (the footer's statistics hold those in clear), it is not in
    the file's raw bytes at all, so a search of those would miss it."""
    from store.factories import make_context, make_examples, make_trial

    from orchestrator.store import ExampleRecord, StoreWriter, TransferRecord
    from workers.jobs import Target

    ctx = make_context()
    params = {"layer": 2, "note": FAKE_SECRET if where == "trial param" else "x"}
    trial = make_trial(ctx, 0, params=params)
    if where == "transfer metric":
        t = trial.transfer[0]
        trial.transfer[0] = TransferRecord(
            t.vector_id, t.eval_example_id, f"h:{FAKE_SECRET}", t.steered, t.unsteered, t.success
        )
    examples = make_examples() + [
        ExampleRecord(
            f"q{i}", "train", f"Question {i}: the weather in town {7 * i}?", [Target("x")]
        )
        for i in range(200)
    ]
    if where == "example prompt":
        examples.insert(100, ExampleRecord("leak", "train", f"Question 99: {FAKE_SECRET}", []))
    writer = StoreWriter(str(tmp_path), ctx)
    writer.write_examples(examples)
    writer.write_trial(*trial.args())
    blobs = [p.read_bytes() for p in tmp_path.rglob("*.parquet")]
    if where == "example prompt":
        assert not any(FAKE_SECRET.encode() in b for b in blobs), "hidden from a byte search"
    with pytest.raises(AssertionError, match="leaked"):
        assert_no_credentials(blobs)


@pytest.mark.parametrize("name", ["../outside", "/etc", "a/../../b", "..", ".hidden", "a\\b"])
@pytest.mark.parametrize("command", ["status", "best", "compact"])
def test_a_study_name_cannot_leave_the_root(tmp_path, capsys, command: str, name: str) -> None:
    root = tmp_path / "root" / "store"
    code = main([command, name, "--root", str(root)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: study name") and "Traceback" not in err, err
    assert not (tmp_path / "root").exists() and not (tmp_path / "outside").exists()


def test_a_study_config_name_cannot_leave_the_root(tmp_path) -> None:
    from orchestrator.study.config import ConfigError

    data = tiny_config(str(tmp_path / "store")).model_dump(mode="json")
    for name in ("../outside", "/abs", "a/b"):
        with pytest.raises(ConfigError, match="name: String should match pattern"):
            parse_config({**data, "name": name})


@pytest.mark.parametrize("prefix", ["a/../../b", "../b", "a/./b"])
def test_an_s3_prefix_cannot_climb_out_of_its_bucket(
    tmp_path, capsys, monkeypatch, moto_endpoint: str, prefix: str
) -> None:
    set_fake_aws_env(monkeypatch, moto_endpoint, tmp_path)
    client, bucket = make_bucket(moto_endpoint)
    code = main(["status", "x", "--root", f"s3://{bucket}/{prefix}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "'.' and '..' are not allowed in an S3 prefix" in err and "Traceback" not in err
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
