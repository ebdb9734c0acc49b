"""Write examples to JSONL, CSV or Parquet in the default column layout.

``load_examples(save_examples(examples, path))`` gives back equal examples
(``meta`` included). Every row states its ``prompt_format``, so the files read
the same whatever default a reader uses.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.datasets.loaders import FIELDS
from workers.examples import Example


def example_record(ex: Example) -> dict[str, Any]:
    """The default-layout record of one example: plain JSON-ready values."""
    rec: dict[str, Any] = {"id": ex.id, "prompt": None, "messages": None}
    if isinstance(ex.prompt, str):
        rec["prompt"], rec["prompt_format"] = ex.prompt, "raw"
    elif len(ex.prompt) == 1 and ex.prompt[0][0] == "user":
        rec["prompt"], rec["prompt_format"] = ex.prompt[0][1], "chat"
    else:
        rec["messages"] = [{"role": r, "content": c} for r, c in ex.prompt]
        rec["prompt_format"] = "chat"
    rec |= {
        "promote": list(ex.promote),
        "suppress": list(ex.suppress),
        "thresholds": list(ex.thresholds),
        "split": ex.split,
        "group": ex.group,
        "choices": list(ex.choices),
        "correct": ex.correct,
        "meta": dict(ex.meta),
    }
    return rec


def _write_jsonl(records: list[dict[str, Any]], path: Path) -> None:
    lines = []
    for rec in records:
        kept = {k: v for k, v in rec.items() if v not in (None, [], {})}
        lines.append(json.dumps(kept, ensure_ascii=False))
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))


def _cell(value: Any) -> str:
    if value is None or value == [] or value == {}:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _write_csv(records: list[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FIELDS)
    for rec in records:
        writer.writerow([_cell(rec.get(name)) for name in FIELDS])
    path.write_bytes(buf.getvalue().encode("utf-8"))


def _write_parquet(records: list[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    strings = pa.list_(pa.string())
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("prompt", pa.string()),
            ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
            ("prompt_format", pa.string()),
            ("promote", strings),
            ("suppress", strings),
            ("thresholds", pa.list_(pa.float64())),
            ("split", pa.string()),
            ("group", pa.string()),
            ("choices", strings),
            ("correct", pa.int64()),
            ("meta", pa.string()),
        ]
    )
    rows = [rec | {"meta": json.dumps(rec["meta"]) if rec["meta"] else None} for rec in records]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


_WRITERS = {
    ".jsonl": _write_jsonl,
    ".ndjson": _write_jsonl,
    ".csv": _write_csv,
    ".parquet": _write_parquet,
    ".pq": _write_parquet,
}


def save_examples(examples: Sequence[Example], path: str | Path) -> Path:
    """Write ``examples`` to ``path``; the extension picks the format. Returns the path."""
    path = Path(path)
    writer = _WRITERS.get(path.suffix.lower())
    if writer is None:
        raise ValueError(f"unknown file type {path.suffix!r}; use {', '.join(_WRITERS)}")
    writer([example_record(ex) for ex in examples], path)
    return path
