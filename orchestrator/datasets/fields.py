"""Parsing and checking the fields of one row; every failure names file, line and field.

Lists in CSV cells are JSON arrays; ``messages`` and ``meta`` may be JSON
strings in any format. See docs/datasets.md for the field table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from orchestrator.datasets.rows import DatasetError, RawRow
from workers.jobs import ChatMessages, Prompt

PromptFormat = Literal["chat", "raw"]
PROMPT_FORMATS = ("chat", "raw")
ROLES = ("system", "user", "assistant")


class Row:
    """One raw row with the column mapping applied; ``fail`` names file, line and field."""

    def __init__(
        self, raw: RawRow, source: str, columns: Mapping[str, str], explicit: Iterable[str]
    ) -> None:
        self.raw, self.source, self.columns = raw, source, columns
        for name in explicit:
            if not self.has(name):
                raise self.fail(name, "missing column (it is named in the column mapping)")

    def has(self, name: str) -> bool:
        return self.columns[name] in self.raw.fields

    def get(self, name: str) -> Any:
        return self.raw.fields.get(self.columns[name])

    def fail(self, name: str | None, problem: str) -> DatasetError:
        column = None if name is None else self.columns.get(name, name)
        return DatasetError(self.source, self.raw.where, column, problem)

    def json_cell(self, name: str, value: Any, expect: type) -> Any:
        """A CSV cell (or any string, for ``messages``/``meta``) holding JSON."""
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise self.fail(
                name, f"expected a JSON {expect.__name__} in this cell ({exc.msg})"
            ) from None


def kind_of(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def parse_strings(row: Row, name: str) -> tuple[str, ...]:
    """A target-like field: one string, or a list of strings (a JSON array in CSV)."""
    value = row.get(name)
    if value is None:
        return ()
    if isinstance(value, str) and row.raw.text_cells and value.lstrip().startswith("["):
        value = row.json_cell(name, value, list)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise row.fail(name, f"expected a string or a list of strings, got {kind_of(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise row.fail(name, f"item {i} is {kind_of(item)}, expected a string")
        if not item:
            raise row.fail(name, f"item {i} is an empty string")
    return tuple(value)


def _number(row: Row, name: str, value: Any, i: int) -> float:
    if isinstance(value, str) and row.raw.text_cells:
        try:
            value = float(value)
        except ValueError:
            raise row.fail(name, f"item {i} is {value!r}, expected a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise row.fail(name, f"item {i} is {kind_of(value)}, expected a number")
    if not math.isfinite(value):
        raise row.fail(name, f"item {i} is {value}, expected a finite number")
    if value > 0:
        raise row.fail(
            name, f"item {i} is {value}: a threshold is a log-probability, so it must be <= 0"
        )
    return float(value)


def parse_thresholds(row: Row, n_targets: int) -> tuple[float, ...]:
    value = row.get("thresholds")
    if value is None:
        return ()
    if isinstance(value, str) and row.raw.text_cells and value.lstrip().startswith("["):
        value = row.json_cell("thresholds", value, list)
    items = value if isinstance(value, list | tuple) else [value]
    out = tuple(_number(row, "thresholds", v, i) for i, v in enumerate(items))
    if out and len(out) != n_targets:
        raise row.fail(
            "thresholds",
            f"has {len(out)} values, but the example has {n_targets} targets "
            "(one threshold per target, promote targets first)",
        )
    return out


def _messages(row: Row) -> ChatMessages:
    value = row.get("messages")
    if isinstance(value, str):
        value = row.json_cell("messages", value, list)
    if not isinstance(value, list | tuple) or not value:
        raise row.fail("messages", f"expected a non-empty list of messages, got {kind_of(value)}")
    out: list[tuple[str, str]] = []
    for i, msg in enumerate(value):
        if isinstance(msg, dict) and set(msg) >= {"role", "content"}:
            role, content = msg["role"], msg["content"]
        elif isinstance(msg, list | tuple) and len(msg) == 2:
            role, content = msg
        else:
            raise row.fail("messages", f"message {i} must be {{'role': ..., 'content': ...}}")
        if role not in ROLES:
            raise row.fail("messages", f"message {i} has role {role!r}; use one of {ROLES}")
        if not isinstance(content, str) or not content.strip():
            raise row.fail("messages", f"message {i} has empty or non-string content")
        out.append((role, content))
    if out[-1][0] == "assistant":
        raise row.fail(
            "messages",
            "the last message is an assistant turn; the chat template would open another "
            "one after it. For a prefilled reply, give the templated text as a raw prompt",
        )
    return tuple(out)


def parse_prompt(row: Row, default_format: PromptFormat) -> Prompt:
    if not row.has("prompt") and not row.has("messages"):
        raise row.fail("prompt", "missing column (give a prompt or a messages column)")
    prompt, messages = row.get("prompt"), row.get("messages")
    fmt = row.get("prompt_format") or default_format
    if fmt not in PROMPT_FORMATS:
        raise row.fail("prompt_format", f"is {fmt!r}; use 'chat' or 'raw'")
    if messages is not None:
        if prompt is not None:
            raise row.fail("messages", "give either a prompt or messages, not both")
        if fmt == "raw":
            raise row.fail("prompt_format", "is 'raw', but the row gives chat messages")
        return _messages(row)
    if prompt is None:
        raise row.fail("prompt", "the prompt is empty (give a prompt or messages)")
    if not isinstance(prompt, str):
        raise row.fail("prompt", f"expected a string, got {kind_of(prompt)}")
    if not prompt.strip():
        raise row.fail("prompt", "the prompt is empty")
    return prompt if fmt == "raw" else (("user", prompt),)


def parse_id(row: Row, stem: str) -> str:
    if not row.has("id"):
        return f"{stem}-{row.raw.number}"
    value = row.get("id")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise row.fail("id", f"expected a string, got {kind_of(value)}")
    if not value.strip():
        raise row.fail("id", "the id is empty")
    return value


def parse_choices(row: Row) -> tuple[tuple[str, ...], int | None]:
    choices = parse_strings(row, "choices")
    if choices and (len(choices) < 2 or len(set(choices)) != len(choices)):
        raise row.fail("choices", f"needs at least two distinct choices, got {list(choices)}")
    correct = row.get("correct")
    if correct is None:
        return choices, None
    if isinstance(correct, str) and row.raw.text_cells and correct.strip().lstrip("-").isdigit():
        correct = int(correct)
    if isinstance(correct, float) and correct.is_integer():
        correct = int(correct)
    if isinstance(correct, bool) or not isinstance(correct, int):
        raise row.fail("correct", f"expected an integer index, got {kind_of(correct)}")
    if not 0 <= correct < len(choices):
        raise row.fail(
            "correct", f"index {correct} is out of range for {len(choices)} choices {list(choices)}"
        )
    return choices, correct


def parse_meta(row: Row, mapped: set[str]) -> dict[str, str]:
    value = row.get("meta")
    if isinstance(value, str):
        value = row.json_cell("meta", value, dict)
    if value is not None and not isinstance(value, dict):
        raise row.fail("meta", f"expected an object of strings, got {kind_of(value)}")
    meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (value or {}).items()}
    for column, v in row.raw.fields.items():
        if column not in mapped and v is not None:
            meta[column] = v if isinstance(v, str) else json.dumps(v)
    return meta
