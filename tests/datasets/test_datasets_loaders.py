"""Loading examples from JSONL, CSV and Parquet: round trips and the column mapping."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.datasets import (
    BUILTIN_TASKS,
    builtin_task,
    load_examples,
    save_examples,
)
from workers.examples import Example
from workers.jobs import chat

FORMATS = ["jsonl", "csv", "parquet"]

HAND_MADE = [
    Example(
        id="multi",
        prompt=(("system", "Be brief."), ("user", "Hi, what is 2+2?")),
        promote=("4", "Four"),
        suppress=("5",),
        thresholds=(-1.5, -2.0, -0.25),
        split="transfer",
        group="math",
        meta={"source": "hand", "note": 'quotes " and, commas'},
    ),
    Example(
        id="raw, with comma",
        prompt="Question: A) yes\nB) no\nAnswer:",
        promote=(" B",),
        choices=("A", "B", "C"),
        correct=2,
    ),
    Example(
        id="unicode",
        prompt=chat("Écris «bonjour» en japonais 🙂"),
        suppress=("[not json", "こんにちは", "\n\nline"),
        split="transfer",
    ),
    Example(id="choices-only", prompt=chat("Pick."), choices=("Yes", "No"), correct=0),
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_hand_made(tmp_path, fmt):
    path = save_examples(HAND_MADE, tmp_path / f"ex.{fmt}")
    back = load_examples(path)
    assert back == HAND_MADE
    assert [ex.meta for ex in back] == [ex.meta for ex in HAND_MADE]


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_builtin_tasks(tmp_path, fmt):
    examples = [ex for name in BUILTIN_TASKS for ex in builtin_task(name).examples]
    back = load_examples(save_examples(examples, tmp_path / f"all.{fmt}"))
    assert back == examples
    assert [ex.meta for ex in back] == [ex.meta for ex in examples]


def test_string_prompt_is_a_user_turn_unless_raw(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [
        {"id": "a", "prompt": "Hello", "promote": "Hi", "split": "train"},
        {"id": "b", "prompt": "Hello", "promote": ["Hi"], "split": "train", "prompt_format": "raw"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    a, b = load_examples(path)
    assert a.prompt == (("user", "Hello"),) and a.promote == ("Hi",)
    assert b.prompt == "Hello"
    a, b = load_examples(path, prompt_format="raw")
    assert a.prompt == "Hello" and b.prompt == "Hello"


def test_mapping_defaults_and_extra_columns_csv(tmp_path):
    path = tmp_path / "theirs.csv"
    path.write_text(
        "question,answer,avoid,fold,topic,source\n"
        'Is water wet?,Yes,"[""No"", ""Maybe""]",,physics,web\n'
        '"Multi\nline?","[""a"",""b""]",,transfer,,\n'
    )
    mapping = {"prompt": "question", "promote": "answer", "suppress": "avoid", "split": "fold"}
    first, second = load_examples(path, mapping, default_split="train")
    assert first.id == "theirs-2" and second.id == "theirs-3"  # auto ids: file stem + line
    assert first.prompt == chat("Is water wet?")
    assert first.promote == ("Yes",) and first.suppress == ("No", "Maybe")
    assert first.split == "train" and second.split == "transfer"
    assert first.group == "" and first.meta == {"topic": "physics", "source": "web"}
    assert second.prompt == chat("Multi\nline?") and second.promote == ("a", "b")


def test_parquet_with_native_types_and_mapping(tmp_path):
    table = pa.table(
        {
            "uid": [7, 8],
            "chat": [
                [{"role": "user", "content": "Pick one.\nA) x\nB) y"}],
                [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
            ],
            "labels": [["A", "B"], ["A", "B"]],
            "gold": [1, None],
            "promote": [["A"], ["B"]],
            "split": ["transfer", "train"],
            "thresholds": [[-0.5], None],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    a, b = load_examples(
        tmp_path / "t.parquet",
        {"id": "uid", "messages": "chat", "choices": "labels", "correct": "gold"},
    )
    assert a.id == "7" and a.choices == ("A", "B") and a.correct == 1 and a.thresholds == (-0.5,)
    assert b.prompt == (("system", "S"), ("user", "Q")) and b.correct is None


def test_bom_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "w.csv"
    path.write_bytes(b"\xef\xbb\xbfid,prompt,promote,split\r\nx,Hi,Yo,train\r\n")
    (ex,) = load_examples(path)
    assert ex.id == "x" and ex.promote == ("Yo",)
    path = tmp_path / "w.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "x", "prompt": "Hi", "promote": "Yo"}\r\n')
    (ex,) = load_examples(path, default_split="transfer")
    assert ex.split == "transfer"


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown field 'prompts'"):
        load_examples("x.jsonl", {"prompts": "q"})
    with pytest.raises(ValueError, match="mapped to two fields"):
        load_examples("x.jsonl", {"promote": "t", "suppress": "t"})
    with pytest.raises(ValueError, match="default_split"):
        load_examples("x.jsonl", default_split="test")


def test_examples_from_rows_in_memory():
    from orchestrator.datasets import RawRow, examples_from_rows

    rows = [RawRow("record 0", 0, {"prompt": "Hi", "promote": ["Yo"]})]
    (ex,) = examples_from_rows(rows, "<inline>", default_split="train", id_prefix="inline")
    assert ex.id == "inline-0" and ex.prompt == chat("Hi") and ex.split == "train"
