"""Raw rows from JSONL, CSV and Parquet files, each tagged with where it came from.

Files are read as bytes and decoded explicitly, so a byte sequence that is not
UTF-8 is reported with its line (or row) and field instead of surfacing as a
bare ``UnicodeDecodeError``. Bad bytes are kept through decoding as lone
surrogates (``surrogateescape``); a field holding one is the field to blame.
Nothing here uses pickle or eval: JSON and CSV are parsed by the standard
library, Parquet by pyarrow.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_BAD_BYTE = re.compile("[\udc80-\udcff]")


class DatasetError(ValueError):
    """A dataset file or row is malformed.

    The message names the file, the location (``line N`` counted from 1 for
    JSONL and CSV, ``row N`` counted from 0 for Parquet) and the field.
    """

    def __init__(self, source: str, where: str, field: str | None, problem: str) -> None:
        self.source, self.where, self.field, self.problem = source, where, field, problem
        place = f"{source}, {where}" if where else source
        if field is not None:
            place += f", field '{field}'"
        super().__init__(f"{place}: {problem}")


@dataclass(frozen=True)
class RawRow:
    """One record before validation: ``where`` is e.g. ``line 3`` or ``row 2``."""

    where: str
    number: int
    fields: dict[str, Any]
    text_cells: bool = False  # CSV: every value is a string cell


def _show(value: str) -> str:
    """``value`` with each undecodable byte written as ``\\xNN``, safe to print."""
    return _BAD_BYTE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", value)


def _bad_bytes_problem(value: str) -> str:
    m = _BAD_BYTE.search(value)
    byte = ord(m.group()) - 0xDC00 if m else 0
    return f"contains bytes that are not valid UTF-8 (0x{byte:02x} at character {m.start() if m else 0})"


def _find_bad_field(value: Any, name: str) -> tuple[str, str] | None:
    """``(field, problem)`` for the first string holding undecodable bytes, if any."""
    if isinstance(value, str):
        return (name, _bad_bytes_problem(value)) if _BAD_BYTE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if _BAD_BYTE.search(str(key)):
                return (name or _show(str(key)), f"the key {_bad_bytes_problem(str(key))}")
            found = _find_bad_field(item, name or str(key))
            if found:
                return found
    if isinstance(value, list):
        for item in value:
            found = _find_bad_field(item, name)
            if found:
                return found
    return None


def _decode(data: bytes) -> str:
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    return data.decode("utf-8", "surrogateescape")


def read_jsonl(path: Path) -> Iterator[RawRow]:
    """One JSON object per line; blank lines are skipped."""
    source = str(path)
    for n, line in enumerate(_decode(path.read_bytes()).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            if _BAD_BYTE.search(line):
                raise DatasetError(source, where, None, _bad_bytes_problem(line)) from None
            raise DatasetError(
                source, where, None, f"not valid JSON ({exc.msg} at column {exc.colno})"
            ) from None
        if not isinstance(obj, dict):
            raise DatasetError(
                source, where, None, f"expected a JSON object, got {type(obj).__name__}"
            )
        bad = _find_bad_field(obj, "")
        if bad:
            raise DatasetError(source, where, bad[0], bad[1])
        yield RawRow(where, n, obj)


def read_csv(path: Path) -> Iterator[RawRow]:
    """A header line, then one record per row (quoted cells may span lines).

    An empty cell reads as missing. Lines are counted from 1, the header being
    line 1; a record spanning lines is reported at its first line.
    """
    source = str(path)
    reader = csv.reader(io.StringIO(_decode(path.read_bytes()), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DatasetError(source, "line 1", None, "the file is empty; expected a header") from None
    except csv.Error as exc:
        raise DatasetError(source, "line 1", None, f"not valid CSV ({exc})") from None
    for col, name in enumerate(header):
        if _BAD_BYTE.search(name):
            raise DatasetError(source, "line 1", f"column {col + 1}", _bad_bytes_problem(name))
        if not name.strip():
            raise DatasetError(source, "line 1", f"column {col + 1}", "the header name is empty")
        if name in header[:col]:
            raise DatasetError(source, "line 1", name, "the column appears twice in the header")
    last = reader.line_num
    while True:
        start = last + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DatasetError(source, f"line {start}", None, f"not valid CSV ({exc})") from None
        last = reader.line_num
        if not record or all(not cell.strip() for cell in record):
            continue
        where = f"line {start}"
        if len(record) != len(header):
            raise DatasetError(
                source, where, None, f"has {len(record)} cells, but the header has {len(header)}"
            )
        for name, cell in zip(header, record, strict=True):
            if _BAD_BYTE.search(cell):
                raise DatasetError(source, where, name, _bad_bytes_problem(cell))
        fields = {
            name: (cell if cell != "" else None) for name, cell in zip(header, record, strict=True)
        }
        yield RawRow(where, start, fields, text_cells=True)


def _decode_bytes(value: Any, source: str, where: str, name: str) -> Any:
    """Binary Parquet values become strings, decoded strictly."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(
                source,
                where,
                name,
                f"contains bytes that are not valid UTF-8 (0x{value[exc.start]:02x} at byte {exc.start})",
            ) from None
    if isinstance(value, list):
        return [_decode_bytes(v, source, where, name) for v in value]
    if isinstance(value, dict):
        return {k: _decode_bytes(v, source, where, name) for k, v in value.items()}
    return value


def read_parquet(path: Path) -> Iterator[RawRow]:
    """Rows of a Parquet file; rows are counted from 0 (``row 0`` is the first)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = str(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(source, "", None, f"not a readable Parquet file ({exc})") from None
    columns: dict[str, list[Any]] = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        try:
            columns[name] = column.to_pylist()
        except UnicodeDecodeError:
            for i in range(len(column)):
                try:
                    column[i].as_py()
                except UnicodeDecodeError:
                    raise DatasetError(
                        source, f"row {i}", name, "contains bytes that are not valid UTF-8"
                    ) from None
            raise
    for i in range(table.num_rows):
        where = f"row {i}"
        fields = {n: _decode_bytes(col[i], source, where, n) for n, col in columns.items()}
        yield RawRow(where, i, fields)


READERS = {
    ".jsonl": read_jsonl,
    ".ndjson": read_jsonl,
    ".csv": read_csv,
    ".parquet": read_parquet,
    ".pq": read_parquet,
}
