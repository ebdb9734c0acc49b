"""The documents say what the code does.

- Every ``steer-sweep ...`` line in README.md, docs/ and the example headers
  parses with the command's own parser, and its ``key=value`` overrides
  validate against the study schema; every YAML block is a valid study (or a
  part of one).
- docs/config.md lists every key of the schema once, with the schema's
  default; the command tables name exactly the parser's commands; a quoted
  ``SCHEMA_VERSION`` is the code's.
- Every relative link and every ``bench/results/*.json`` a document names
  exists, anchors included.
- No document, example or source comment tells the history of the work, or
  points outside the repository.
- Example headers back every time claim with ``check`` or a benchmark.
- ``mkdocs build --strict`` passes.

Everything compared is read from the code, never copied into this file.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import sys
import typing
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def _prose(text: str) -> str:
    return FENCE.sub("", text)


# ---------------------------------------------------------------- commands


def _command_lines() -> list[tuple[str, str]]:
    """(where, command line) for every steer-sweep command a reader may type."""
    found: list[tuple[str, str]] = []
    for doc in DOCS:
        text = doc.read_text()
        for lang, body in _blocks(text):
            if lang in ("python", "sql", "yaml", "json"):
                continue
            body = body.replace("\\\n", " ")
            for line in body.splitlines():
                found += [(_rel(doc), c) for c in _commands_in(line)]
        for span in INLINE.findall(_prose(text)):
            if span.startswith("steer-sweep ") and not re.search(r"[\[|<]|\.\.\.", span):
                found.append((_rel(doc), span))
    for example in EXAMPLES:
        header = [
            line.lstrip("# ") for line in example.read_text().splitlines() if line.startswith("#")
        ]
        for line in "\n".join(header).replace("\\\n", " ").splitlines():
            found += [(_rel(example), c) for c in _commands_in(line)]
    return found


def _commands_in(line: str) -> list[str]:
    line = line.strip().removeprefix("$ ")
    at = line.find("steer-sweep ")
    if at < 0 or (at > 0 and not line[:at].rstrip().endswith(("--", "&&", ";"))):
        return []  # prose mentioning the command, or a path such as ~/.cache/steer-sweep
    return [line[at:]]


def _words(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=False)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)[1:]


COMMANDS = _command_lines()


def test_the_documents_show_commands() -> None:
    names = {
        _words(c)[0] for _, c in COMMANDS if _words(c)[:1] and not _words(c)[0].startswith("-")
    }
    assert {"run", "check", "status", "best", "report", "try", "export", "submit"} <= names


@pytest.mark.parametrize(("where", "line"), COMMANDS, ids=[f"{w}:{c}" for w, c in COMMANDS])
def test_every_documented_command_parses(where: str, line: str) -> None:
    from orchestrator.cli import parse
    from orchestrator.study.config import load_config

    # A single capital letter stands for a number in a synopsis (--layer L, --top N).
    argv = ["1" if re.fullmatch(r"[A-Z]", w) else w for w in _words(line)]
    if len(argv) == 1:  # a mention of a command, `steer-sweep best`: a real one
        from orchestrator.cli import build_parser

        sub = next(
            a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction"
        )
        assert argv[0] in typing.cast(Any, sub).choices, f"{where}: no command {argv[0]}"
        return
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            args = parse(argv)
    except SystemExit as exc:
        assert exc.code in (0, None), f"{where}: `{line}` does not parse: {out.getvalue()}"
        return  # --help, --version
    overrides = list(getattr(args, "overrides", None) or [])
    config = getattr(args, "config", None)
    if args.command in ("run", "check", "submit"):
        path = ROOT / config
        base = path if path.is_file() else ROOT / "examples" / "quickstart.yaml"
        load_config(base, overrides)  # raises ConfigError on an unknown key or bad value
    else:
        assert not overrides


def test_the_command_tables_name_every_command() -> None:
    from orchestrator.cli import build_parser

    parser = build_parser()
    [sub] = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    real = set(typing.cast(Any, sub).choices)
    for doc in (ROOT / "README.md", ROOT / "docs" / "cli.md"):
        rows = re.findall(r"^\| `steer-sweep (\w+)", doc.read_text(), re.M)
        assert set(rows) == real, f"{_rel(doc)}: table {sorted(rows)}, parser {sorted(real)}"
    cli = (ROOT / "docs" / "cli.md").read_text()
    for name, p in typing.cast(Any, sub).choices.items():
        for action in p._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help":
                    assert f"`{opt}" in cli or f" {opt}" in cli, f"cli.md never names {name} {opt}"


# ---------------------------------------------------------------- YAML


def _merge(base: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """A block's sections replace the quickstart's whole (a block shows a section as written)."""
    return {**base, **part}


def _yaml_blocks() -> list[tuple[str, str]]:
    return [
        (_rel(doc), body)
        for doc in DOCS
        for lang, body in _blocks(doc.read_text())
        if lang in ("yaml", "yml")
    ]


@pytest.mark.parametrize(("where", "body"), _yaml_blocks())
def test_every_yaml_block_is_a_valid_study(where: str, body: str) -> None:
    from orchestrator.study.config import StudyConfig, parse_config

    part = yaml.safe_load(body)
    assert isinstance(part, dict), where
    unknown = set(part) - set(StudyConfig.model_fields)
    assert not unknown, f"{where}: not study keys: {sorted(unknown)}"
    base = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    parse_config(_merge(base, part), where)


def _schema_keys() -> dict[str, Any]:
    """Every documented key of the study schema, with its default."""
    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    from orchestrator.study.config import FloatRange, IntRange, StudyConfig

    keys: dict[str, Any] = {}

    def default(field: Any) -> Any:
        if field.default_factory is not None:
            return field.default_factory()
        return "required" if field.default is PydanticUndefined else field.default

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = prefix + name
            sub = [
                a
                for a in (field.annotation, *typing.get_args(field.annotation))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ]
            inner = [
                b
                for a in typing.get_args(field.annotation)
                for b in typing.get_args(a) or (a,)
                if isinstance(b, type) and issubclass(b, BaseModel)
            ]
            if key == "surprisal_model":  # "the same keys as model"
                keys[key] = default(field)
            elif typing.get_origin(field.annotation) is list and inner:
                keys[key] = "list"
                walk(inner[0], key + "[].")
            elif sub and not set(sub) & {IntRange, FloatRange}:  # a section: its keys
                walk(sub[0], key + ".")
            else:
                keys[key] = default(field)

    walk(StudyConfig, "")
    return keys


def _config_table() -> dict[str, str]:
    text = (ROOT / "docs" / "config.md").read_text()
    section = text.split("## Every key", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([\w.\[\]]+)` \| ([^|]+) \|", section, re.M)
    keys = [k for k, _ in rows]
    assert len(keys) == len(set(keys)), "a key listed twice"
    return {k: d.strip() for k, d in rows}


def test_config_md_lists_every_key_with_its_default() -> None:
    schema = _schema_keys()
    table = _config_table()
    assert set(table) == set(schema), (
        f"missing: {sorted(set(schema) - set(table))}; unknown: {sorted(set(table) - set(schema))}"
    )
    for key, cell in table.items():
        want = schema[key]
        if cell == "required" or want == "required":
            assert cell == want, f"{key}: {cell} in config.md, {want} in the schema"
        elif cell == "—":
            assert want == "list", f"{key}: no default given, the schema has {want!r}"
        else:
            assert cell.startswith("`") and cell.endswith("`"), f"{key}: {cell}"
            quoted = yaml.safe_load(cell.strip("`"))
            if hasattr(want, "model_dump"):
                want = want.model_dump()
            assert quoted == want, f"{key}: {quoted!r} in config.md, {want!r} in the schema"


def test_a_quoted_schema_version_is_the_codes() -> None:
    from orchestrator.store.schemas import SCHEMA_VERSION

    quoted = [
        (_rel(d), int(v))
        for d in DOCS
        for v in re.findall(r"SCHEMA_VERSION = (\d+)", d.read_text())
    ]
    assert quoted, "store.md quotes the schema version"
    assert all(v == SCHEMA_VERSION for _, v in quoted), quoted


# ---------------------------------------------------------------- links


def _slug(heading: str) -> str:
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(path: Path) -> set[str]:
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", _prose(path.read_text()), re.M)}


def test_every_relative_link_and_anchor_exists() -> None:
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", _prose(doc.read_text())):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (doc.parent / file).resolve() if file else doc
            if not dest.exists():
                broken.append(f"{_rel(doc)}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{_rel(doc)}: {target} (no such heading)")
    assert not broken, broken


def test_every_named_benchmark_file_exists() -> None:
    named = [
        (_rel(d), name)
        for d in [*DOCS, *EXAMPLES]
        for name in re.findall(r"bench/results/[\w.*-]+\.json", d.read_text())
    ]
    assert named, "the benchmarks page names its JSON files"
    missing = [(d, n) for d, n in named if not list(ROOT.glob(n))]
    assert not missing, missing


# ---------------------------------------------------------------- history

HISTORY = {
    "an issue number": r"\bissues? ?#?\d+|(?<![\w&/])(?<!: )#\d{2,}\b(?![-;])",
    "a commit as history": r"\bcommit [0-9a-f]{7,40}\b|--base [0-9a-f]{7,40}\b",
    "a stretch of work": r"\b(this|that|each|every|next|last|earlier|later|previous|a|no) sessions?\b"
    r"|\bsessions? (of|\d)|\bprevious submission\b|\bbefore this change\b|\bwhat changed\b"
    r"|\bnot yet run\b|\buntil now\b",
    "a path outside the repository": r"\.\./shared|/work/|(?-i:\b(DESIGN|METHODS|STYLE)\.md\b)",
}
# Real uses of the words: a scenario's text, AWS's and boto3's sessions.
ALLOWED = {
    ("orchestrator/datasets/two_choice.py", "a stretch of work"),
    ("orchestrator/datasets/data/two_choice.jsonl", "a stretch of work"),
}


def _sources() -> list[Path]:
    files = [*DOCS, *EXAMPLES, ROOT / "mkdocs.yml", *(ROOT / "examples").rglob("*.py")]
    for package in ("orchestrator", "workers", "bench", "scripts", "infra", "tests"):
        for path in (ROOT / package).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".sh", ".md", ".yaml", ".yml", ".toml"):
                files.append(path)
    return sorted(set(files) - {Path(__file__).resolve()})  # this file plants them


def test_no_history_and_no_outside_paths_in_documents_or_sources() -> None:
    found = []
    for path in _sources():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for what, pattern in HISTORY.items():
                if (_rel(path), what) in ALLOWED:
                    continue
                if re.search(pattern, line, re.I):
                    found.append(f"{_rel(path)}:{n}: {what}: {line.strip()[:120]}")
    assert not found, "\n".join(found)


def test_the_history_check_catches_what_it_names() -> None:
    planted = [
        "Fixed in issue 27.",
        "see #15",
        "against commit c05bd47",
        "measured this session",
        "the previous submission",
        "read ../shared/DESIGN.md",
        "as DESIGN.md says",
    ]
    for line in planted:
        assert any(re.search(p, line, re.I) for p in HISTORY.values()), line
    for fine in [
        "AWS_SESSION_TOKEN",
        "boto3.session.Session()",
        "colour #1f77b4",
        "`#ask-ahead`",
        "docs/methods.md",
        "color: #222;",
    ]:
        assert not any(re.search(p, fine, re.I) for p in HISTORY.values()), fine


# ---------------------------------------------------------------- examples

TIME = re.compile(
    r"\b\d[\d,.]*\s?(s|min|minutes|seconds|hours|GPU-seconds|GPU-hours)\b|\babout \d+", re.I
)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_headers_back_their_time_claims(path: Path) -> None:
    header = path.read_text().split("\nname:")[0]
    paragraphs = re.split(r"\n#\s*\n", header)
    for para in paragraphs:
        if TIME.search(para):
            assert re.search(r"\bcheck\b|bench/|benchmarks\.md|scripts/quickstart\.sh", para), (
                f"{path.name}: a time claim with no source: {para}"
            )


def test_example_headers_quote_the_plan_size() -> None:
    from orchestrator.study.config import load_config

    for path in EXAMPLES:
        cfg = load_config(path)
        header = " ".join(path.read_text().split("\nname:")[0].replace("#", " ").split())
        for trials, vectors in re.findall(r"(\d+) trials?,? (?:x )?(\d+) vectors", header):
            assert int(trials) == cfg.n_trials, path.name
            total = int(vectors)
            assert total in (cfg.vectors_per_trial, cfg.n_trials * cfg.vectors_per_trial), path.name


# ---------------------------------------------------------------- site


@pytest.mark.timeout(300)
def test_the_docs_site_builds_strictly(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "config" / "index.html").exists()
