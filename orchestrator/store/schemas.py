"""Arrow schemas, object keys and file metadata of the result store.

Layout under a root (``file:///...`` or ``s3://bucket/prefix``)::

    trials/study=<study>/trial-00000042.parquet        one object per trial
    vectors/study=<study>/trial-00000042.parquet
    transfer/study=<study>/trial-00000042.parquet
    generations/study=<study>/trial-00000042.parquet   when the study keeps text
    examples/study=<study>/examples-<name>.parquet     written once per study
    <table>/study=<study>/compact-<lo>-<hi>-<tag>.parquet   made by ``compact``
    _studies/<study>/config.json                        the redacted study config
    _studies/<study>/compacted                          marker: compaction has run

The ``study`` column comes from the hive partition folder, so it is not stored
inside the files (a file column and a partition field of the same name would
clash in pyarrow and DuckDB). Every file carries its study, table, schema
version, code version, config hash and model in the Parquet key-value metadata,
so a file found alone explains itself.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import re
from collections.abc import Mapping

import pyarrow as pa

from orchestrator.store.errors import StoreNameError

SCHEMA_VERSION = 4
"""Bump when a table or column is added, renamed, removed or changes type.

Version history: 1, the first store; 2 added the ``generations`` table (a
version-1 store simply has none, and reads as a study that kept no text) and
``vectors.train_example_ids`` (null in version-1 files); 3 added
``vectors.screened`` (null in older files: no vector of theirs was screened);
4 added ``examples.example_group`` (null in older files, and for an example
with no group)."""

TABLES = ("trials", "vectors", "transfer", "generations", "examples")
TRIAL_TABLES = ("transfer", "generations", "vectors", "trials")
"""Tables written per trial, in write order: ``trials`` last, because a trial
row is the commit marker ``completed_trials`` reads. ``generations`` is
written only by studies that keep text (see ``StoreWriter.write_trial``)."""

TRIAL_STATES = ("COMPLETE", "PRUNED", "FAIL")
PARAM_PREFIX = "param_"
META_PREFIX = "steer_sweep."

_STUDY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@functools.lru_cache(maxsize=1)
@functools.cache
def code_version() -> str:
    """The installed ``steer-sweep`` version, or ``0+unknown`` from a bare checkout
    (read once per process: the metadata lookup scans the installed packages)."""
    try:
        return importlib.metadata.version("steer-sweep")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def check_study_name(study: str) -> str:
    """Study names become folder names and hive partition values: keep them plain."""
    if not _STUDY_RE.match(study):
        raise StoreNameError(
            f"study name {study!r} must be 1-128 characters of letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return study


def check_part_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise StoreNameError(
            f"name {name!r} must be 1-64 characters of letters, digits, '.', '_', '-'"
        )
    return name


def vector_id(study: str, trial: int, example_id: str) -> str:
    """Deterministic id of the vector a trial optimized on one training example.

    16 hex digits of SHA-256: the same (study, trial, example) always maps to
    the same id, so a retried trial overwrites instead of adding new vectors.
    """
    h = hashlib.sha256(f"{study}\x1f{int(trial)}\x1f{example_id}".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- keys


def study_dir(table: str, study: str) -> str:
    return f"{table}/study={study}"


def trial_key(table: str, study: str, trial: int) -> str:
    return f"{study_dir(table, study)}/trial-{trial:08d}.parquet"


def examples_key(study: str, name: str) -> str:
    return f"{study_dir('examples', study)}/examples-{check_part_name(name)}.parquet"


def compact_key(table: str, study: str, lo: int, hi: int, tag: str) -> str:
    return f"{study_dir(table, study)}/compact-{lo:08d}-{hi:08d}-{tag}.parquet"


def config_key(study: str) -> str:
    return f"_studies/{study}/config.json"


def compacted_marker_key(study: str) -> str:
    return f"_studies/{study}/compacted"


_TRIAL_FILE = re.compile(r"trial-(\d+)\.parquet$")
_COMPACT_FILE = re.compile(r"compact-(\d+)-(\d+)-[0-9a-f]+\.parquet$")


def parse_trial_file(key: str) -> int | None:
    """Trial number of a per-trial object key, or None."""
    m = _TRIAL_FILE.search(key.rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


def parse_compact_file(key: str) -> tuple[int, int] | None:
    """(lowest, highest) trial number covered by a compacted object key, or None."""
    m = _COMPACT_FILE.search(key.rsplit("/", 1)[-1])
    return (int(m.group(1)), int(m.group(2))) if m else None


# ---------------------------------------------------------------- schemas

_INTERMEDIATE = pa.list_(pa.struct([("step", pa.int64()), ("value", pa.float64())]))
_TARGET = pa.struct(
    [
        ("text", pa.string()),
        ("kind", pa.string()),
        ("threshold", pa.float64()),
        ("weight", pa.float64()),
    ]
)
_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
_UTC_US = pa.timestamp("us", tz="UTC")


def trials_schema(params: Mapping[str, pa.DataType] | None = None) -> pa.Schema:
    """Schema of ``trials``: fixed columns, then one ``param_<name>`` column per
    Optuna parameter (types follow the Python values: int64, float64, bool, string).

    ``params_json`` holds the exact parameters for resuming; ``values`` the
    objective values (``value`` repeats the first for easy queries);
    ``duration_s`` is wall time in seconds.
    """
    fields = [
        pa.field("trial", pa.int64(), nullable=False),
        pa.field("state", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("values", pa.list_(pa.float64())),
        pa.field("intermediate_values", _INTERMEDIATE),
        pa.field("params_json", pa.string(), nullable=False),
        pa.field("distributions_json", pa.string()),
        pa.field("started_at", _UTC_US),
        pa.field("finished_at", _UTC_US),
        pa.field("duration_s", pa.float64()),
        pa.field("n_vectors", pa.int32(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("code_version", pa.string(), nullable=False),
        pa.field("config_hash", pa.string(), nullable=False),
    ]
    for name, typ in (params or {}).items():
        fields.append(pa.field(PARAM_PREFIX + name, typ))
    return pa.schema(fields)


def vectors_schema(d_model: int) -> pa.Schema:
    """Schema of ``vectors``. Losses are in units of ``log_base`` (10: hartleys,
    e: nats). ``vector`` is the optimized vector, float32, ``d_model`` wide;
    ``dtype`` is the dtype it was optimized in. ``affine_a``/``affine_b`` hold
    the ``(affine_rank, d_model)`` factors of affine jobs, flattened row-major.
    ``train_example_ids`` lists every training example the vector was
    optimized on, ``example_id`` first (one for a one-shot vector; null in a
    file written before schema version 2). ``screened`` is true when the
    transfer screen stopped the vector's evaluation at its first slice of
    held-out examples: its ``transfer`` rows cover only that slice (null in
    a file written before schema version 3)."""
    return pa.schema(
        [
            pa.field("vector_id", pa.string(), nullable=False),
            pa.field("trial", pa.int64(), nullable=False),
            pa.field("job_id", pa.string(), nullable=False),
            pa.field("example_id", pa.string(), nullable=False),
            pa.field("model_id", pa.string(), nullable=False),
            pa.field("model_revision", pa.string(), nullable=False),
            pa.field("config_hash", pa.string(), nullable=False),
            pa.field("layer", pa.int32(), nullable=False),
            pa.field("layers", pa.list_(pa.int32()), nullable=False),
            pa.field("intervention", pa.string(), nullable=False),
            pa.field("norm_bound", pa.float64()),
            pa.field("loss_kind", pa.string(), nullable=False),
            pa.field("lr", pa.float64(), nullable=False),
            pa.field("seed", pa.int64(), nullable=False),
            pa.field("log_base", pa.float64(), nullable=False),
            pa.field("initial_loss", pa.float64()),
            pa.field("final_loss", pa.float64()),
            pa.field("loss_history", pa.list_(pa.float64())),
            pa.field("target_losses", pa.list_(pa.float64())),
            pa.field("iterations", pa.int32(), nullable=False),
            pa.field("stop_reason", pa.string(), nullable=False),
            pa.field("final_norm", pa.float64()),
            pa.field("vector", pa.list_(pa.float32(), d_model), nullable=False),
            pa.field("dtype", pa.string(), nullable=False),
            pa.field("affine_rank", pa.int32()),
            pa.field("affine_a", pa.list_(pa.float32())),
            pa.field("affine_b", pa.list_(pa.float32())),
            pa.field("train_example_ids", pa.list_(pa.string())),
            pa.field("screened", pa.bool_()),
        ]
    )


TRANSFER_SCHEMA = pa.schema(
    [
        pa.field("vector_id", pa.string(), nullable=False),
        pa.field("trial", pa.int64(), nullable=False),
        pa.field("eval_example_id", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("steered", pa.float64()),
        pa.field("unsteered", pa.float64()),
        pa.field("success", pa.bool_()),
    ]
)
"""Schema of ``transfer``: one row per (vector, held-out example, metric)."""

GENERATIONS_SCHEMA = pa.schema(
    [
        pa.field("vector_id", pa.string(), nullable=False),
        pa.field("trial", pa.int64(), nullable=False),
        pa.field("eval_example_id", pa.string(), nullable=False),
        pa.field("steered_text", pa.string(), nullable=False),
        pa.field("unsteered_text", pa.string(), nullable=False),
        pa.field("steered_tokens", pa.int32(), nullable=False),
        pa.field("unsteered_tokens", pa.int32(), nullable=False),
        pa.field("steered_stop", pa.string(), nullable=False),
        pa.field("unsteered_stop", pa.string(), nullable=False),
        pa.field("max_tokens", pa.int32(), nullable=False),
    ]
)
"""Schema of ``generations``: one row per (vector, held-out example) the study
generated for. Greedy continuations of the held-out prompt with and without
the vector, special tokens dropped; ``*_tokens`` counts generated tokens (the
end-of-sequence token not counted); ``*_stop`` is ``eos`` (the model ended the
text) or ``length`` (it reached ``max_tokens``)."""

EXAMPLES_SCHEMA = pa.schema(
    [
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("chat", pa.list_(_MESSAGE)),
        pa.field("targets", pa.list_(_TARGET), nullable=False),
        pa.field("example_group", pa.string()),
    ]
)
"""Schema of ``examples``. ``prompt`` is the raw prompt, or for chat prompts the
messages as JSON; ``chat`` holds chat messages as (role, content) structs;
``example_group`` is the example's group (``benign``/``harmful`` in §3, an
occupation in §5; null without one; not ``group``, a word SQL reserves)."""


def file_metadata(
    *,
    table: str,
    study: str,
    config_hash: str,
    model_id: str,
    model_revision: str,
    trials: list[int] | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[bytes, bytes]:
    """Parquet key-value metadata that makes a file self-describing."""
    meta = {
        "schema_version": str(SCHEMA_VERSION),
        "code_version": code_version(),
        "table": table,
        "study": study,
        "config_hash": config_hash,
        "model_id": model_id,
        "model_revision": model_revision,
    }
    if trials is not None:
        meta["trials"] = json.dumps(sorted(trials))
    meta.update(extra or {})
    return {(META_PREFIX + k).encode(): v.encode() for k, v in meta.items()}


def read_metadata(schema: pa.Schema) -> dict[str, str]:
    """The ``steer_sweep.*`` metadata of a file schema, without the prefix."""
    raw = schema.metadata or {}
    out = {}
    for k, v in raw.items():
        key = k.decode()
        if key.startswith(META_PREFIX):
            out[key[len(META_PREFIX) :]] = v.decode()
    return out


def param_type(value: object) -> pa.DataType:
    """Arrow type of an Optuna parameter value (bool is checked before int)."""
    if value is None:
        return pa.null()
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    if isinstance(value, str):
        return pa.string()
    raise TypeError(f"parameter value {value!r} must be a bool, int, float, str or None")
