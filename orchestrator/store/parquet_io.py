"""Parquet bytes in and out, and the write-with-retries step every writer shares."""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.store.retry import RetryPolicy, RetryStats, with_retries
from orchestrator.store.roots import StoreRoot, put_bytes

ROW_GROUP_BYTES = 16 * 1024 * 1024
"""Target row-group size in bytes (in memory): big enough for fast scans,
small enough that a filter on ``layer`` can skip most of a compacted file."""


def to_parquet_bytes(table: pa.Table, metadata: Mapping[bytes, bytes]) -> bytes:
    """Serialize ``table`` as one zstd-compressed Parquet file with ``metadata``
    merged into its key-value metadata."""
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    strings = [f.name for f in table.schema if pa.types.is_string(f.type)]
    row_bytes = max(1, table.nbytes // max(1, table.num_rows))
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        compression="zstd",
        # Dictionary pages help the repetitive string columns and only cost
        # time on float columns (vectors), so name the strings explicitly.
        use_dictionary=strings,
        row_group_size=max(1024, ROW_GROUP_BYTES // row_bytes),
    )
    return bytes(sink.getvalue().to_pybytes())


def read_table(root: StoreRoot, key: str) -> pa.Table:
    """Read exactly one Parquet object (no partition discovery, no extra columns)."""
    with root.filesystem.open_input_file(root.path(key)) as f:
        return pq.ParquetFile(f).read()


def read_schema(root: StoreRoot, key: str) -> pa.Schema:
    """The schema (with key-value metadata) of one Parquet object, from its footer."""
    with root.filesystem.open_input_file(root.path(key)) as f:
        return pq.ParquetFile(f).schema_arrow


def put_with_retries(
    root: StoreRoot, key: str, data: bytes, policy: RetryPolicy, stats: RetryStats
) -> None:
    with_retries(
        lambda: put_bytes(root, key, data),
        what=f"put {root.display(key)}",
        policy=policy,
        stats=stats,
    )
