"""Load examples from JSONL, CSV or Parquet, with a column mapping.

Every row becomes a :class:`workers.examples.Example`. The default column of
each field is the field's own name (see ``DEFAULT_MAPPING``); a user mapping
``{field: column}`` renames some of them. A string ``prompt`` becomes a single
user turn of chat messages unless its format is ``raw``: the bundled model is a
chat model, and an un-templated question is out of distribution for it.
Columns that no field maps to are kept, as strings, in ``Example.meta``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from orchestrator.datasets.fields import (
    PROMPT_FORMATS,
    PromptFormat,
    Row,
    kind_of,
    parse_choices,
    parse_id,
    parse_meta,
    parse_prompt,
    parse_strings,
    parse_thresholds,
)
from orchestrator.datasets.rows import READERS, DatasetError, RawRow
from workers.examples import Example

FIELDS = (
    "id",
    "prompt",
    "messages",
    "prompt_format",
    "promote",
    "suppress",
    "thresholds",
    "split",
    "group",
    "choices",
    "correct",
    "meta",
)
DEFAULT_MAPPING: dict[str, str] = {name: name for name in FIELDS}
SPLITS = ("train", "transfer")


Targets = tuple[tuple[str, ...], tuple[str, ...]]
"""``(promote, suppress)`` target strings."""


def _example(
    row: Row,
    stem: str,
    default_split: str | None,
    fmt: PromptFormat,
    mapped: set[str],
    default_targets: Targets,
) -> Example:
    prompt = parse_prompt(row, fmt)
    promote, suppress = parse_strings(row, "promote"), parse_strings(row, "suppress")
    if not (promote or suppress):
        promote, suppress = default_targets
    choices, correct = parse_choices(row)
    if not (promote or suppress or choices):
        raise row.fail(
            "promote",
            "the example has no promote or suppress targets and no choices (a data set of "
            "bare prompts can take the same targets for every row from task.targets)",
        )
    split = row.get("split")
    if split is None:
        if default_split is None:
            raise row.fail("split", "missing split; give a split column or default_split")
        split = default_split
    if split not in SPLITS:
        raise row.fail("split", f"is {split!r}; use 'train' or 'transfer'")
    group = row.get("group")
    if group is not None and not isinstance(group, str | int):
        raise row.fail("group", f"expected a string, got {kind_of(group)}")
    return Example(
        id=parse_id(row, stem),
        prompt=prompt,
        promote=promote,
        suppress=suppress,
        thresholds=parse_thresholds(row, len(promote) + len(suppress)),
        split=split,
        group="" if group is None else str(group),
        choices=choices,
        correct=correct,
        meta=parse_meta(row, mapped),
    )


def _columns(mapping: Mapping[str, str] | None) -> dict[str, str]:
    columns = dict(DEFAULT_MAPPING)
    for name, column in (mapping or {}).items():
        if name not in FIELDS:
            raise ValueError(f"unknown field {name!r} in the column mapping; fields: {FIELDS}")
        if not isinstance(column, str) or not column:
            raise ValueError(f"the column mapped to {name!r} must be a non-empty string")
        columns[name] = column
    taken = [c for c in columns.values() if list(columns.values()).count(c) > 1]
    if taken:
        raise ValueError(f"column {taken[0]!r} is mapped to two fields; map each column once")
    return columns


def _check_args(
    mapping: Mapping[str, str] | None, default_split: str | None, prompt_format: str
) -> dict[str, str]:
    if default_split is not None and default_split not in SPLITS:
        raise ValueError(f"default_split is {default_split!r}; use 'train', 'transfer' or None")
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format is {prompt_format!r}; use 'chat' or 'raw'")
    return _columns(mapping)


def examples_from_rows(
    rows: Iterable[RawRow],
    source: str,
    mapping: Mapping[str, str] | None = None,
    *,
    default_split: str | None = None,
    prompt_format: PromptFormat = "chat",
    id_prefix: str = "example",
    default_targets: Targets = ((), ()),
) -> list[Example]:
    """Validate raw rows into examples; ``source`` names them in errors.
    A row with neither promote nor suppress targets takes ``default_targets``.

    Raises:
        DatasetError: a malformed row, or two rows with the same id.
        ValueError: a bad mapping, default split or prompt format.
    """
    columns = _check_args(mapping, default_split, prompt_format)
    mapped = set(columns.values())
    out: list[Example] = []
    seen: dict[str, str] = {}
    for raw in rows:
        row = Row(raw, source, columns, explicit=(mapping or {}).keys())
        ex = _example(row, id_prefix, default_split, prompt_format, mapped, default_targets)
        if ex.id in seen:
            raise row.fail("id", f"duplicate id {ex.id!r} (first used at {seen[ex.id]})")
        seen[ex.id] = raw.where
        out.append(ex)
    return out


def load_examples(
    path: str | Path,
    mapping: Mapping[str, str] | None = None,
    *,
    default_split: str | None = None,
    prompt_format: PromptFormat = "chat",
    default_targets: Targets = ((), ()),
) -> list[Example]:
    """Read examples from a ``.jsonl``/``.ndjson``, ``.csv`` or ``.parquet``/``.pq`` file.

    ``mapping`` is ``{field: column}`` for the fields whose column is not
    named after the field. ``default_split`` fills rows without a split (with
    ``None``, every row must give one). ``prompt_format`` says how string
    prompts are read: ``chat`` (one user turn) or ``raw`` (verbatim); a row's
    own ``prompt_format`` column wins. A row with no targets of its own takes
    ``default_targets`` (``(promote, suppress)``).

    Raises:
        DatasetError: the file is missing, unreadable or has a malformed row;
            the message names the file, the line or row, and the field.
        ValueError: a bad mapping, default split or prompt format.
    """
    _check_args(mapping, default_split, prompt_format)
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DatasetError(
            str(path), "", None, f"unknown file type {path.suffix!r}; use {', '.join(READERS)}"
        )
    if not path.is_file():
        raise DatasetError(str(path), "", None, "no such file")
    return examples_from_rows(
        reader(path),
        str(path),
        mapping,
        default_split=default_split,
        prompt_format=prompt_format,
        id_prefix=path.stem,
        default_targets=default_targets,
    )
