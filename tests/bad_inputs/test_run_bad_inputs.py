"""``steer-sweep run`` on bad input: a one-paragraph error that names what is
wrong and where, exit code 2, no traceback (``--debug`` shows it), and nothing
written to the store. Each case goes through the command line in-process
(``orchestrator.cli.main``); ``--debug`` also in a child process.

The lower layers are tested case by case elsewhere (tests/orchestrator/
test_config.py, tests/datasets/test_datasets_malformed.py, tests/workers/
test_models_and_bad_input.py, tests/store/test_store_s3.py); here every case
is checked end to end, for the exit code, the output and the store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_checks import assert_one_paragraph
from store.factories import free_port, make_bucket, set_fake_aws_env

from orchestrator.cli import main

TRAIN = {"id": "t1", "prompt": "Tell me a joke.", "promote": "I cannot", "split": "train"}
HELD_OUT = {"id": "h1", "prompt": "Say hi.", "promote": "I cannot", "split": "transfer"}


def study_yaml(tmp: Path, root: str, **extra: Any) -> Path:
    """A valid study of the tiny random Llama whose results would go to ``root``."""
    data: dict[str, Any] = {
        "name": "bad",
        "n_trials": 2,
        "vectors_per_trial": 1,
        "model": {"name": "tiny-random-llama"},
        "task": {"builtin": "refusal"},
        "search": {"layer": [1, 2], "norm": 4.0, "max_iters": 2},
        "store": {"root": root},
        "ray": {"num_cpus": 1},
    }
    data.update(extra)
    path = tmp / "study.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def dataset(tmp: Path, *rows: dict, raw: bytes | None = None) -> dict:
    """A JSONL task file holding ``rows`` (or the bytes ``raw``); returns the task key."""
    path = tmp / "examples.jsonl"
    path.write_bytes(raw if raw is not None else "\n".join(map(json.dumps, rows)).encode())
    return {"path": str(path)}


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    code = main(["run", *argv])
    out, err = capsys.readouterr()
    assert out == "", out  # no results, no progress
    return code, err


def truncated_gguf(tmp: Path) -> str:
    from workers.models.sources import bundled_gguf

    path = tmp / "cut.gguf"
    with bundled_gguf("smollm2-135m-instruct").open("rb") as src:
        path.write_bytes(src.read(200_000))  # of about 98 MB
    return str(path)


# (case id, extra study keys or a function of tmp giving them, overrides, expected words)
CASES: list[tuple[str, Any, list[str], list[str]]] = [
    ("unknown key", {}, ["search.layr=3"], ["search.layr: unknown key"]),
    ("unknown section", {"trainer": {}}, [], ["trainer: unknown key"]),
    ("wrong type", {}, ["n_trials=many"], ["n_trials: Input should be a valid integer"]),
    ("wrong nested type", {}, ["model.num_actors=[2]"], ["model.num_actors", "valid integer"]),
    ("layer out of range", {}, ["search.layer=9"], ["search.layer 9 is out of range", "4 layers"]),
    (
        "layer range out of range",
        {},
        ["search.layer={low: 0, high: 7}"],
        ["search.layer", "out of range"],
    ),
    ("negative norm", {}, ["search.norm=-1.0"], ["search.norm", "greater than 0"]),
    ("norm range through 0", {}, ["search.norm={low: 0, high: 8}"], ["search.norm", "than 0"]),
    ("zero lr", {}, ["search.lr=0"], ["search.lr", "greater than 0"]),
    ("empty layer list", {}, ["search.layer=[]"], ["search.layer: an empty list"]),
    ("empty norm list", {}, ["search.norm=[]"], ["search.norm: an empty list"]),
    ("empty int range", {}, ["search.layer={low: 3, high: 1}"], ["high (1) is below low (3)"]),
    ("unknown token mode", {}, ["search.tokens=[all, every]"], ["token selection 'every'"]),
    ("unknown intervention", {}, ["search.intervention=scale"], ["search.intervention"]),
    (
        "grid larger than n_trials",
        {"sampler": {"name": "grid"}},
        ["n_trials=5"],
        ["n_trials is 5 but the grid has only 2 points"],
    ),
    (
        "missing prompt column",
        lambda tmp: {"task": dataset(tmp, {"id": "t1", "promote": "x", "split": "train"})},
        [],
        ["examples.jsonl, line 1, field 'prompt': missing column"],
    ),
    (
        "empty prompt",
        lambda tmp: {"task": dataset(tmp, {**TRAIN, "prompt": ""}, HELD_OUT)},
        [],
        ["examples.jsonl, line 1, field 'prompt': the prompt is empty"],
    ),
    (
        "target that tokenizes to nothing",
        lambda tmp: {"task": dataset(tmp, TRAIN, {**HELD_OUT, "promote": ["ok", ""]})},
        [],
        ["examples.jsonl, line 2, field 'promote': item 1 is an empty string"],
    ),
    (
        "prompt longer than the context",
        lambda tmp: {"task": dataset(tmp, TRAIN, {**HELD_OUT, "prompt": "Say hi. " * 800})},
        [],
        ["transfer example 'h1'", "longer than the context of tiny-random-llama (1024 tokens)"],
    ),
    (
        "non-UTF-8 bytes",
        lambda tmp: {
            "task": dataset(
                tmp,
                raw=(json.dumps(TRAIN) + "\n" + json.dumps(HELD_OUT))
                .encode()
                .replace(b"hi", b"h\xe9"),
            )
        },
        [],
        ["examples.jsonl, line 2, field 'prompt'", "not valid UTF-8", "0xe9"],
    ),
    (
        "no held-out examples",
        lambda tmp: {"task": dataset(tmp, TRAIN)},
        [],
        ["no examples in split 'transfer'"],
    ),
    (
        "missing task file",
        lambda tmp: {"task": {"path": str(tmp / "nowhere.jsonl")}},
        [],
        ["nowhere.jsonl"],
    ),
    (
        "missing model path",
        lambda tmp: {"model": {"name": str(tmp / "no" / "model")}},
        [],
        ["model.name: model path does not exist", "no/model"],
    ),
    (
        # conftest sets HF_HUB_OFFLINE=1: a hub id not in the cache, one paragraph
        "hub model not in the cache",
        lambda tmp: {"model": {"name": "no-such-org/no-such-model"}},
        [],
        ["could not read the config of 'no-such-org/no-such-model'", "local folder"],
    ),
    (
        "truncated GGUF",
        lambda tmp: {"model": {"name": truncated_gguf(tmp)}},
        [],
        ["model.name: could not read GGUF metadata", "cut.gguf"],
    ),
    ("study name escaping the root", {"name": "../outside"}, [], ["name:", "'../outside'"]),
    # Values that only a run would otherwise find out: refused by the checks.
    ("infinite lr", {}, ["search.lr=.inf"], ["search.lr", "finite number"]),
    ("nan norm in a list", {}, ["search.norm=[4.0, .nan]"], ["search.norm", "finite number"]),
    ("infinite max_kl", {}, ["evaluation.max_kl=.inf"], ["evaluation.max_kl", "finite number"]),
    ("last_k that selects nothing", {}, ["search.tokens=last_k:0"], ["'last_k:0'", "K >= 1"]),
    ("positions that are not numbers", {}, ["search.tokens=positions:a"], ["'positions:a'"]),
    ("an unknown dtype", {}, ["model.dtype=float8"], ["model.dtype", "float8", "bfloat16"]),
    ("an unknown device", {}, ["model.device=gpu0"], ["model.device", "gpu0"]),
    (
        "a GPU device with no GPU for the actors",
        {},
        ["model.device=cuda"],
        ["model.device is 'cuda'", "gpus_per_actor is 0"],
    ),
    ("log base 1", {}, ["evaluation.log_base=1"], ["evaluation.log_base", "no logarithm"]),
    ("an int range with step 0", {}, ["search.layer={low: 0, high: 3, step: 0}"], ["step"]),
    ("an empty model name", {}, ["model.name="], ["model.name"]),
    (
        "positions outside a training prompt",
        {},
        ["search.tokens=positions:0,9999"],
        ["search.tokens 'positions:0,9999'", "[9999] fall outside training example"],
    ),
    (
        "an objective on a metric the study does not measure",
        {},
        ["objectives=[{metric: judge}]"],
        ["objectives[0].metric 'judge' is not measured", "target_logprob:promote:0"],
    ),
    (
        "metrics that leave the objective nothing",
        {},
        ["evaluation.metrics=[choice_flip]"],
        ["objectives[0].metric 'target_logprob' is not measured", "measures nothing"],
    ),
]


@pytest.mark.parametrize(
    ("extra", "overrides", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_one_paragraph_exit_2_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    extra: Any,
    overrides: list[str],
    needles: list[str],
) -> None:
    store = tmp_path / "store"
    extra = extra(tmp_path) if callable(extra) else extra
    path = study_yaml(tmp_path, str(store), **extra)
    code, err = run_cli(capsys, str(path), *overrides)
    assert code == 2, err
    assert_one_paragraph(err, *needles)
    assert not store.exists(), list(store.rglob("*"))
    assert not (tmp_path / "outside").exists()


def test_malformed_yaml(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("name: bad\nsearch: {layer: [1, 2}\n")
    code, err = run_cli(capsys, str(path))
    assert code == 2
    assert_one_paragraph(err, f"{path} is not valid YAML", "line 2")
    code, err = run_cli(capsys, str(tmp_path / "missing.yaml"))
    assert code == 2
    assert_one_paragraph(err, "study config not found", "missing.yaml")


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        # a second search: section would silently replace the first
        ("search:\n  layer: [1, 2]\nsearch:\n  norm: 4.0\n", "search", "lines 6 and 8"),
        ("search:\n  layer: [1, 2]\n  layer: 3\n", "layer", "lines 7 and 8"),
    ],
)
def test_a_key_given_twice_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, text: str, key: str, lines: str
) -> None:
    store = tmp_path / "store"
    head = "name: dup\nn_trials: 2\nmodel: {name: tiny-random-llama}\n"
    head += f"task: {{builtin: refusal}}\nstore: {{root: {store}}}\n"
    path = tmp_path / "study.yaml"
    path.write_text(head + text)
    code, err = run_cli(capsys, str(path))
    assert code == 2, err
    assert_one_paragraph(err, f"key '{key}' appears twice", lines)
    assert not store.exists()


def test_a_key_yaml_reads_as_a_boolean_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``yes:`` and ``no:`` are booleans to YAML: named, located, exit 2."""
    store = tmp_path / "store"
    path = tmp_path / "study.yaml"
    path.write_text(
        f"name: judged\nn_trials: 1\nmodel: {{name: tiny-random-llama}}\n"
        f"task: {{builtin: refusal}}\nstore: {{root: {store}}}\nevaluation:\n"
        "  metrics: [target_logprob, judge]\n  llm_judge:\n    template: '{response}'\n"
        "    yes: 'Yes'\n"
    )
    code, err = run_cli(capsys, str(path))
    assert code == 2, err
    assert_one_paragraph(
        err, "key 'yes' is read by YAML as the boolean True", "yes_answer", "line 10"
    )
    assert not store.exists()


def test_a_bad_override_names_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = study_yaml(tmp_path, str(tmp_path / "store"))
    code, err = run_cli(capsys, str(path), "n_trials")
    assert code == 2
    assert_one_paragraph(err, "override 'n_trials' is not of the form key.path=value")
    code, err = run_cli(capsys, str(path), "n_trials.x=3")
    assert code == 2
    assert_one_paragraph(err, "override n_trials.x: 'n_trials' is not a section")


# ---------------------------------------------------------------- the store


def test_an_unreachable_store(tmp_path: Path, capsys, monkeypatch) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    set_fake_aws_env(monkeypatch, dead, tmp_path)
    path = study_yaml(tmp_path, "s3://steer-nowhere/sweeps")
    code, err = run_cli(capsys, str(path))
    assert code == 2
    assert_one_paragraph(err, "store.root:", f"cannot reach the S3 endpoint {dead}")


def test_a_missing_bucket(tmp_path: Path, capsys, monkeypatch, moto_endpoint: str) -> None:
    import boto3

    set_fake_aws_env(monkeypatch, moto_endpoint, tmp_path)
    path = study_yaml(tmp_path, "s3://steer-no-such-bucket/sweeps")
    code, err = run_cli(capsys, str(path))
    assert code == 2
    assert_one_paragraph(err, "store.root:", "bucket 'steer-no-such-bucket' does not exist")
    names = [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]]
    assert "steer-no-such-bucket" not in names  # not created behind the user's back


def test_bad_credentials(
    tmp_path: Path, capsys, monkeypatch, moto_endpoint: str, moto_auth
) -> None:
    set_fake_aws_env(monkeypatch, moto_endpoint, tmp_path)
    client, bucket = make_bucket(moto_endpoint)
    path = study_yaml(tmp_path, f"s3://{bucket}/sweeps")
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    moto_auth(True)  # moto now checks every signature: the fake key is unknown
    try:
        code, err = run_cli(capsys, str(path))
    finally:
        moto_auth(False)
    assert code == 2
    assert_one_paragraph(err, "store.root:", "access key was not recognised")
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_read_only_credentials_are_caught_by_the_write_probe(
    tmp_path: Path, capsys, monkeypatch, moto_endpoint: str, moto_auth
) -> None:
    """A user who may list and read the bucket but not write to it gets past the
    list call; the probe write before the study catches it."""
    import boto3

    set_fake_aws_env(monkeypatch, moto_endpoint, tmp_path)
    client, bucket = make_bucket(moto_endpoint)
    iam = boto3.client("iam", endpoint_url=moto_endpoint, region_name="us-east-1")
    iam.create_user(UserName="reader")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{bucket}"},
            {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": f"arn:aws:s3:::{bucket}/*"},
        ],
    }
    iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    path = study_yaml(tmp_path, f"s3://{bucket}/sweeps")
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    moto_auth(True)
    try:
        listed = (
            boto3.session.Session().client("s3").list_objects_v2(Bucket=bucket, Prefix="sweeps/")
        )
        assert listed["ResponseMetadata"]["HTTPStatusCode"] == 200, "the user may list"
        code, err = run_cli(capsys, str(path))
    finally:
        moto_auth(False)
    assert code == 2
    assert_one_paragraph(err, "store.root:", "readable but a test write failed", "denied")
    assert key["SecretAccessKey"] not in err
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


# ------------------------------------------------------- tracebacks, for real


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    from orchestrator.study.config import ConfigError

    path = study_yaml(tmp_path, str(tmp_path / "store"), n_trials="many")
    with pytest.raises(ConfigError, match="n_trials"):
        main(["--debug", "run", str(path)])
    debug = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "--debug", "run", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr
    assert "ConfigError" in debug.stderr
    assert not (tmp_path / "store").exists()
