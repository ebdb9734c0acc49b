"""Malformed dataset files: each error names the file, the line (or row) and the field."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.datasets import DatasetError, load_examples

GOOD = {"id": "ok", "prompt": "Hi", "promote": ["Yo"], "split": "train"}


def _jsonl(tmp_path, rows, name="bad.jsonl"):
    """Rows are dicts (dumped as JSON) or raw ``bytes`` lines."""
    path = tmp_path / name
    lines = [r if isinstance(r, bytes) else json.dumps(r).encode() for r in rows]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _expect(path, where, field, problem, **kwargs):
    with pytest.raises(DatasetError) as info:
        load_examples(path, **kwargs)
    msg = str(info.value)
    assert msg.startswith(str(path)), msg
    assert f", {where}" in msg, msg
    if field is None:
        assert "field" not in msg, msg
    else:
        assert f"field '{field}'" in msg, msg
    assert re.search(problem, msg), msg
    assert info.value.where == where and info.value.field == field
    return msg


JSONL_CASES = [
    (
        "missing prompt column",
        {"id": "x", "promote": "a", "split": "train"},
        "prompt",
        "missing column",
    ),
    (
        "empty prompt",
        {"id": "x", "prompt": "  ", "promote": "a", "split": "train"},
        "prompt",
        "empty",
    ),
    (
        "prompt wrong type",
        {"id": "x", "prompt": 3, "promote": "a", "split": "train"},
        "prompt",
        "expected a string, got int",
    ),
    (
        "targets not strings",
        {"id": "x", "prompt": "p", "promote": ["a", 1], "split": "train"},
        "promote",
        "item 1 is int",
    ),
    (
        "target not a list",
        {"id": "x", "prompt": "p", "suppress": {"a": 1}, "split": "train"},
        "suppress",
        "got dict",
    ),
    (
        "empty target",
        {"id": "x", "prompt": "p", "promote": [""], "split": "train"},
        "promote",
        "empty string",
    ),
    (
        "no targets",
        {"id": "x", "prompt": "p", "split": "train"},
        "promote",
        "no promote or suppress",
    ),
    (
        "bad split",
        {"id": "x", "prompt": "p", "promote": "a", "split": "test"},
        "split",
        "'test'; use 'train' or 'transfer'",
    ),
    ("missing split", {"id": "x", "prompt": "p", "promote": "a"}, "split", "missing split"),
    (
        "correct out of range",
        {"id": "x", "prompt": "p", "choices": ["A", "B"], "correct": 2, "split": "train"},
        "correct",
        "index 2 is out of range",
    ),
    (
        "correct without choices",
        {"id": "x", "prompt": "p", "promote": "a", "correct": 0, "split": "train"},
        "correct",
        "out of range for 0 choices",
    ),
    (
        "correct wrong type",
        {"id": "x", "prompt": "p", "choices": ["A", "B"], "correct": "A", "split": "train"},
        "correct",
        "expected an integer",
    ),
    (
        "one choice",
        {"id": "x", "prompt": "p", "choices": ["A"], "split": "train"},
        "choices",
        "at least two distinct",
    ),
    (
        "thresholds count",
        {"id": "x", "prompt": "p", "promote": ["a", "b"], "thresholds": [-1], "split": "train"},
        "thresholds",
        "1 values, but the example has 2 targets",
    ),
    (
        "threshold positive",
        {"id": "x", "prompt": "p", "promote": "a", "thresholds": 0.9, "split": "train"},
        "thresholds",
        "must be <= 0",
    ),
    (
        "threshold not a number",
        {"id": "x", "prompt": "p", "promote": "a", "thresholds": ["-1"], "split": "train"},
        "thresholds",
        "item 0 is str",
    ),
    (
        "prompt and messages",
        {
            "id": "x",
            "prompt": "p",
            "messages": [{"role": "user", "content": "q"}],
            "promote": "a",
            "split": "train",
        },
        "messages",
        "not both",
    ),
    (
        "bad role",
        {
            "id": "x",
            "messages": [{"role": "bot", "content": "q"}],
            "promote": "a",
            "split": "train",
        },
        "messages",
        "role 'bot'",
    ),
    (
        "assistant last",
        {
            "id": "x",
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "promote": "a",
            "split": "train",
        },
        "messages",
        "last message is an assistant",
    ),
    (
        "empty messages",
        {"id": "x", "messages": [], "promote": "a", "split": "train"},
        "messages",
        "non-empty list",
    ),
    (
        "bad prompt_format",
        {"id": "x", "prompt": "p", "prompt_format": "plain", "promote": "a", "split": "train"},
        "prompt_format",
        "'plain'",
    ),
    ("empty id", {"id": "", "prompt": "p", "promote": "a", "split": "train"}, "id", "empty"),
    (
        "id wrong type",
        {"id": 1.5, "prompt": "p", "promote": "a", "split": "train"},
        "id",
        "got float",
    ),
    (
        "meta wrong type",
        {"id": "x", "prompt": "p", "promote": "a", "split": "train", "meta": [1]},
        "meta",
        "got list",
    ),
]


@pytest.mark.parametrize(
    ("case", "row", "field", "problem"), JSONL_CASES, ids=[c[0] for c in JSONL_CASES]
)
def test_jsonl_row_errors(tmp_path, case, row, field, problem):
    # Line 1 is good, line 2 blank, so the bad row sits on line 3.
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(row) + "\n")
    _expect(path, "line 3", field, problem)


def test_jsonl_duplicate_id(tmp_path):
    path = _jsonl(tmp_path, [GOOD, {**GOOD, "id": "other"}, GOOD])
    _expect(path, "line 3", "id", r"duplicate id 'ok' \(first used at line 1\)")


def test_jsonl_non_utf8_names_line_and_field(tmp_path):
    bad = b'{"id": "x", "prompt": "caf\xe9 \xff", "promote": "a", "split": "train"}'
    path = _jsonl(tmp_path, [json.dumps(GOOD).encode(), bad])
    _expect(path, "line 2", "prompt", r"not valid UTF-8 \(0xe9")
    nested = b'{"id": "x", "prompt": "p", "promote": ["a", "\xc3"], "split": "train"}'
    _expect(_jsonl(tmp_path, [nested]), "line 1", "promote", "not valid UTF-8")


def test_jsonl_not_json_or_not_an_object(tmp_path):
    _expect(_jsonl(tmp_path, [GOOD, b'{"id": "x",']), "line 2", None, "not valid JSON")
    _expect(_jsonl(tmp_path, [b'["a", "b"]']), "line 1", None, "expected a JSON object, got list")


def test_mapped_column_missing(tmp_path):
    path = _jsonl(tmp_path, [GOOD])
    _expect(path, "line 1", "target", "missing column", mapping={"promote": "target"})


def _csv(tmp_path, data: bytes):
    path = tmp_path / "bad.csv"
    path.write_bytes(data)
    return path


def test_csv_errors(tmp_path):
    head = b"id,prompt,promote,split,correct,choices\n"
    ok = b"a,Hi,Yo,train,,\n"
    _expect(
        _csv(tmp_path, head + ok + b"b,,Yo,train,,\n"), "line 3", "prompt", "the prompt is empty"
    )
    _expect(_csv(tmp_path, head + ok + b"b,Hi,Yo,dev,,\n"), "line 3", "split", "'dev'")
    _expect(
        _csv(tmp_path, head + ok + b'b,Hi,Yo,train,2,"[""A"",""B""]"\n'),
        "line 3",
        "correct",
        "out of range",
    )
    _expect(
        _csv(tmp_path, head + ok + b'b,Hi,"[""x"", 2]",train,,\n'),
        "line 3",
        "promote",
        "item 1 is int",
    )
    _expect(
        _csv(tmp_path, head + ok + b'b,Hi,"[oops",train,,\n'),
        "line 3",
        "promote",
        "expected a JSON list",
    )
    _expect(_csv(tmp_path, head + ok + b"a,Hi,Yo,train,,\n"), "line 3", "id", "duplicate id 'a'")
    _expect(
        _csv(tmp_path, head + ok + b"b,Hi,Yo\n"),
        "line 3",
        None,
        "has 3 cells, but the header has 6",
    )
    # A record spanning lines 3-4, then a bad one on line 5.
    _expect(
        _csv(tmp_path, head + ok + b'b,"two\nlines",Yo,train,,\n' + b"c,\xffHi,Yo,train,,\n"),
        "line 5",
        "prompt",
        r"not valid UTF-8 \(0xff at character 0\)",
    )


def test_csv_missing_prompt_column_and_bad_header(tmp_path):
    _expect(
        _csv(tmp_path, b"id,text,promote,split\na,Hi,Yo,train\n"),
        "line 2",
        "prompt",
        "missing column",
    )
    _expect(_csv(tmp_path, b"id,prompt,id\n"), "line 1", "id", "appears twice")
    _expect(_csv(tmp_path, b""), "line 1", None, "empty")


def test_parquet_errors(tmp_path):
    path = tmp_path / "bad.parquet"

    def write(**cols):
        base = {
            "id": ["a", "b"],
            "prompt": ["Hi", "Hi"],
            "promote": [["Yo"], ["Yo"]],
            "split": ["train", "train"],
        }
        pq.write_table(pa.table(base | cols), path)
        return path

    _expect(write(split=["train", "eval"]), "row 1", "split", "'eval'")
    _expect(write(id=["a", "a"]), "row 1", "id", "duplicate id 'a' \\(first used at row 0\\)")
    _expect(write(promote=[["Yo"], [""]]), "row 1", "promote", "empty string")
    _expect(write(prompt=["Hi", None]), "row 1", "prompt", "the prompt is empty")
    _expect(write(choices=[["A", "B"], ["A", "B"]], correct=[0, 5]), "row 1", "correct", "index 5")
    binary = pa.array([b"Hi", b"caf\xe9"], type=pa.binary())
    _expect(write(prompt=binary), "row 1", "prompt", r"not valid UTF-8 \(0xe9 at byte 3\)")
    pq.write_table(pa.table({"id": ["a"], "promote": [["Yo"]], "split": ["train"]}), path)
    _expect(path, "row 0", "prompt", "missing column")


def test_file_level_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_examples(tmp_path / "missing.jsonl")
    with pytest.raises(DatasetError, match="unknown file type '.txt'"):
        load_examples(tmp_path / "x.txt")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        load_examples(junk)


def test_jsonl_non_utf8_key_is_named_printably(tmp_path):
    path = _jsonl(tmp_path, [b'{"id": "x", "pr\xffompt": "p", "promote": "a", "split": "train"}'])
    msg = _expect(path, "line 1", "pr\\xffompt", "the key contains bytes that are not valid UTF-8")
    msg.encode("utf-8")  # printable: no lone surrogates left in the message
