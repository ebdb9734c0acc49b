"""Helpers for the result-store tests: moto start-up, fake AWS settings, and a
factory of realistic trials built from ``workers.jobs.VectorResult``."""

from __future__ import annotations

import logging
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest

from orchestrator.store import (
    ExampleRecord,
    GenerationRecord,
    StudyContext,
    TransferRecord,
    TrialRecord,
    VectorRecord,
    vector_id,
)
from workers.jobs import Target, VectorResult, chat

# Distinctive fake credentials: tests grep every written byte for them.
FAKE_KEY_ID = "AKIAFAKESTEERSWEEP042"
FAKE_SECRET = "fakeSecret/SteerSweep+0123456789abcdefXYZ"
FAKE_TOKEN = "FakeSessionTokenSteerSweep987654321"
D_MODEL = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto(port: int) -> Any:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server


def set_fake_aws_env(mp: pytest.MonkeyPatch, endpoint: str, tmp: Any) -> None:
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_PROFILE"):
        mp.delenv(var, raising=False)
    mp.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    mp.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    mp.setenv("AWS_SESSION_TOKEN", FAKE_TOKEN)
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.setenv("AWS_REGION", "us-east-1")
    mp.setenv("AWS_ENDPOINT_URL", endpoint)
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never probe 169.254.169.254
    # Keep a developer's real ~/.aws out of the tests.
    mp.setenv("AWS_CONFIG_FILE", str(tmp / "no-aws-config"))
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp / "no-aws-credentials"))


@dataclass(frozen=True)
class S3Env:
    endpoint: str
    bucket: str
    root: str  # s3://bucket/prefix
    client: Any  # boto3 S3 client


def make_bucket(endpoint: str) -> tuple[Any, str]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    bucket = f"steer-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


# ---------------------------------------------------------------- data factory


@dataclass
class TrialData:
    trial: TrialRecord
    vectors: list[VectorRecord]
    transfer: list[TransferRecord]
    generations: list[GenerationRecord] | None = None

    def args(
        self,
    ) -> tuple[
        TrialRecord, list[VectorRecord], list[TransferRecord], list[GenerationRecord] | None
    ]:
        """The arguments of ``StoreWriter.write_trial``."""
        return self.trial, self.vectors, self.transfer, self.generations

    def ids(self, study: str) -> list[tuple[str, VectorRecord]]:
        """(vector id, record) of every vector of this trial."""
        return [(vector_id(study, self.trial.number, v.example_id), v) for v in self.vectors]


def make_context(study: str = "study-a", d_model: int = D_MODEL) -> StudyContext:
    return StudyContext(
        study=study,
        config_hash="cfg0123456789abc",
        model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        model_revision="rev-1",
        d_model=d_model,
    )


def make_trial(
    ctx: StudyContext,
    number: int,
    *,
    k: int = 3,
    n_eval: int = 2,
    state: str = "COMPLETE",
    seed: int = 0,
    layer: int | None = None,
    params: dict[str, Any] | None = None,
    texts: bool = False,
) -> TrialData:
    """A trial with ``k`` vectors (one per training example) and ``n_eval``
    held-out examples x 2 metrics of transfer rows per vector; with ``texts``,
    a generation per (vector, held-out example) too, with text that tests
    escaping and Unicode."""
    rng = np.random.default_rng(seed * 1000 + number)
    lay = layer if layer is not None else 2 + number % 3
    vecs, rows, gens = [], [], []
    for j in range(k):
        history = [float(x) for x in np.linspace(2.0, 0.2 + 0.01 * j, 4)]
        affine = j == 1  # one affine job per trial exercises the factor columns
        res = VectorResult(
            job_id=f"t{number}-j{j}",
            vector=rng.standard_normal(ctx.d_model).astype(np.float32),
            layers=(lay,) if j != 2 else (lay, lay + 1),
            loss_history=history,
            target_losses=[history[-1] / 2, history[-1] / 2],
            iterations=3,
            stop_reason="converged",
            final_norm=float(rng.uniform(1, 4)),
            seed=100 + j,
            log_base=10.0,
            factors=(
                (
                    rng.standard_normal((2, ctx.d_model)).astype(np.float32),
                    rng.standard_normal((2, ctx.d_model)).astype(np.float32),
                )
                if affine
                else None
            ),
        )
        ex = f"train-{j}"
        vecs.append(
            VectorRecord(
                res,
                example_id=ex,
                loss_kind="promotion",
                lr=0.05,
                norm_bound=4.0 if j else None,
                intervention="affine" if affine else "add",
            )
        )
        vid = vector_id(ctx.study, number, ex)
        for e in range(n_eval):
            for metric in ("target_logprob", "generation_hit"):
                steered = float(rng.uniform(-3, 0))
                rows.append(
                    TransferRecord(vid, f"eval-{e}", metric, steered, steered - 1, steered > -1.5)
                )
            if texts:
                gens.append(
                    GenerationRecord(
                        vid,
                        f"eval-{e}",
                        f'<b>steered</b> {number}/{j} & \u00e9t\u00e9\n"line two"',
                        f"plain {e} \U0001f600",
                        7 + j,
                        4,
                        "eos" if j % 2 else "length",
                        "length",
                        8,
                    )
                )
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=number)
    trial = TrialRecord(
        number=number,
        state=state,
        params=params if params is not None else {"layer": lay, "lr": 0.05, "loss": "promotion"},
        values=[float(rng.uniform())] if state == "COMPLETE" else None,
        intermediate_values={i: float(i) / 10 for i in range(k)},
        started_at=t0,
        finished_at=t0 + timedelta(seconds=12.5),
        error="loss became NaN" if state == "FAIL" else None,
        distributions_json='{"layer": {"name": "IntDistribution"}}',
    )
    return TrialData(trial, vecs, rows, gens if texts else None)


def make_examples() -> list[ExampleRecord]:
    return [
        ExampleRecord("train-0", "train", "The capital of France is", [Target(" Paris")]),
        ExampleRecord(
            "eval-0",
            "heldout",
            chat("Say something.", ("assistant", "Sure:")),
            [Target(" hello", "promote", 0.1, 2.0), Target(" bye", "suppress")],
        ),
    ]


# ---------------------------------------------------------------- checks


def write_study(writer: Any, trials: list[TrialData]) -> None:
    writer.write_examples(make_examples())
    for t in trials:
        writer.write_trial(*t.args())


def standard_trials(ctx: StudyContext) -> list[TrialData]:
    """Three finished trials: COMPLETE, PRUNED (with vectors), FAIL (none)."""
    return [
        make_trial(ctx, 0),
        make_trial(ctx, 1, state="PRUNED"),
        make_trial(ctx, 2, k=0, state="FAIL"),
        make_trial(
            ctx, 3, params={"layer": 5, "lr": 1, "loss": "mixed", "coldness": 0.7}, texts=True
        ),
    ]


def check_round_trip(study: Any, ctx: StudyContext, trials: list[TrialData]) -> None:
    """Every value written comes back, through the public read API."""
    import pyarrow as pa

    from orchestrator.store import SCHEMA_VERSION

    # trials
    stored = {t.number: t for t in study.completed_trials()}
    assert sorted(stored) == [t.trial.number for t in trials]
    for t in trials:
        s = stored[t.trial.number]
        assert s.state == t.trial.state
        assert s.params == t.trial.params
        assert s.values == (list(t.trial.values) if t.trial.values else None)
        assert s.intermediate_values == dict(t.trial.intermediate_values)
        assert s.error == t.trial.error
        assert s.distributions_json == t.trial.distributions_json
        assert s.started_at == t.trial.started_at
        assert s.finished_at == t.trial.finished_at
    trow = {r["trial"]: r for r in study.trials.to_table().to_pylist()}
    assert trow[0]["duration_s"] == 12.5
    assert trow[3]["param_coldness"] == 0.7 and trow[0]["param_coldness"] is None
    assert trow[3]["param_lr"] == 1.0  # int in one trial, float in others: promoted
    assert {r["config_hash"] for r in trow.values()} == {ctx.config_hash}

    # vectors
    vt = study.vectors.to_table()
    assert vt.schema.field("vector").type == pa.list_(pa.float32(), ctx.d_model)
    rows = {r["vector_id"]: r for r in vt.to_pylist()}
    expected = [(t.trial.number, v) for t in trials for v in t.vectors]
    assert len(rows) == len(expected) == vt.num_rows
    for number, v in expected:
        r = rows[vector_id(ctx.study, number, v.example_id)]
        res = v.result
        assert np.array_equal(np.asarray(r["vector"], np.float32), res.vector)
        assert r["trial"] == number and r["job_id"] == res.job_id
        assert r["layers"] == list(res.layers) and r["layer"] == res.layers[0]
        assert r["loss_history"] == res.loss_history and r["final_loss"] == res.final_loss
        assert r["target_losses"] == res.target_losses and r["log_base"] == 10.0
        assert r["norm_bound"] == v.norm_bound and r["intervention"] == v.intervention
        assert r["model_id"] == ctx.model_id and r["model_revision"] == ctx.model_revision
        assert r["dtype"] == "float32" and r["seed"] == res.seed
        assert r["train_example_ids"] == list(v.train_example_ids or (v.example_id,))
        if res.factors is None:
            assert r["affine_a"] is None and r["affine_rank"] is None
        else:
            a = np.asarray(r["affine_a"], np.float32).reshape(r["affine_rank"], ctx.d_model)
            assert np.array_equal(a, res.factors[0])

    # transfer
    got = {
        (r["vector_id"], r["eval_example_id"], r["metric"]): (
            r["steered"],
            r["unsteered"],
            r["success"],
        )
        for r in study.transfer.to_table().to_pylist()
    }
    want = {
        (x.vector_id, x.eval_example_id, x.metric): (x.steered, x.unsteered, x.success)
        for t in trials
        for x in t.transfer
    }
    assert got == want

    # generations: every field of every row back, text byte for byte
    gen_fields = ("steered_text", "unsteered_text", "steered_tokens", "unsteered_tokens",
                  "steered_stop", "unsteered_stop", "max_tokens")  # fmt: skip
    got_g = {
        (r["vector_id"], r["eval_example_id"], r["trial"]): tuple(r[f] for f in gen_fields)
        for r in study.generations.to_table().to_pylist()
    }
    want_g = {
        (g.vector_id, g.eval_example_id, t.trial.number): tuple(getattr(g, f) for f in gen_fields)
        for t in trials
        for g in t.generations or ()
    }
    assert got_g == want_g

    # examples
    ex = {r["example_id"]: r for r in study.examples.to_table().to_pylist()}
    assert ex["train-0"]["prompt"] == "The capital of France is"
    assert ex["train-0"]["chat"] is None
    assert ex["eval-0"]["chat"] == [
        {"role": "user", "content": "Say something."},
        {"role": "assistant", "content": "Sure:"},
    ]
    assert ex["eval-0"]["targets"][0] == {
        "text": " hello",
        "kind": "promote",
        "threshold": 0.1,
        "weight": 2.0,
    }

    # every file explains itself
    for table in ("trials", "vectors", "transfer", "generations", "examples"):
        for frag in study.dataset(table).get_fragments():
            meta = frag.physical_schema.metadata
            assert meta[b"steer_sweep.schema_version"] == str(SCHEMA_VERSION).encode()
            assert meta[b"steer_sweep.table"] == table.encode()
            assert meta[b"steer_sweep.study"] == ctx.study.encode()
            assert meta[b"steer_sweep.config_hash"] == ctx.config_hash.encode()
            assert meta[b"steer_sweep.model_id"] == ctx.model_id.encode()
            assert meta[b"steer_sweep.model_revision"] == ctx.model_revision.encode()
            assert meta[b"steer_sweep.code_version"]
            assert b"pandas" not in meta  # plain Arrow, no pandas (or pickle) blobs


def bucket_bytes(client: Any, bucket: str) -> list[bytes]:
    """The content of every object in ``bucket``."""
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return [client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys]


def stored_strings(blob: bytes) -> list[str]:
    """Every string a stored object holds, decoded: for a Parquet file each
    string or binary value of every column (nested ones too) and its key-value
    metadata, read back through pyarrow (its bytes are compressed, so a search
    of the raw bytes would miss a secret in a column); other objects as text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not blob.startswith(b"PAR1"):
        return [blob.decode("utf-8", errors="replace")]
    table = pq.read_table(pa.BufferReader(blob))
    meta = table.schema.metadata or {}
    out = [f"{k.decode(errors='replace')}={v.decode(errors='replace')}" for k, v in meta.items()]
    for column in table.columns:
        out += _strings(column.combine_chunks())
    return out


def _strings(arr: Any) -> list[str]:
    import pyarrow as pa

    t = arr.type
    if pa.types.is_dictionary(t):
        return _strings(arr.dictionary_decode())
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return [v for v in arr.to_pylist() if v is not None]
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return [v.decode("utf-8", errors="replace") for v in arr.to_pylist() if v is not None]
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _strings(arr.flatten())
    if pa.types.is_struct(t):
        return [x for i in range(t.num_fields) for x in _strings(arr.field(i))]
    return []


def assert_no_credentials(chunks: Any) -> None:
    """None of the fake credentials occurs in any of ``chunks`` (bytes, as
    written and as decoded by :func:`stored_strings`, or str)."""
    for chunk in chunks:
        texts = [chunk] if isinstance(chunk, str) else stored_strings(chunk)
        data = [chunk] if isinstance(chunk, bytes) else []
        data += [t.encode() for t in texts]
        for secret in (FAKE_KEY_ID, FAKE_SECRET, FAKE_TOKEN):
            assert not any(secret.encode() in d for d in data), f"{secret} leaked"
