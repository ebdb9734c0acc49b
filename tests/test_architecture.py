"""The import rules of the architecture (docs/architecture.md, "Import rules"), checked on the code.

Each rule says that the modules of one part of the project never import a
module, directly or through other project modules. Imports are read from the
source (every ``import`` statement, also those inside functions, but not
those under ``if TYPE_CHECKING:``), and importing ``a.b.c`` counts as
importing ``a`` and ``a.b`` too, since Python runs their ``__init__`` first.
A second check imports the store and the report in a fresh interpreter and
looks at ``sys.modules``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "workers")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the two packages: dotted name -> file."""
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            out[_module_name(path, root)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[tuple[str, list[str]]]:
    """``(module, names)`` of every import run at some point (not type-only ones)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module, [a.name for a in node.names]
        stack.extend(ast.iter_child_nodes(node))


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> every module it imports (project modules by full name, others
    by their top-level name), parents included."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for target, names in _imports(ast.parse(path.read_text(), str(path))):
            top = target.split(".")[0]
            if top not in PACKAGES:
                edges.add(top)
                continue
            edges.update(_with_parents(target))
            # `from a.b import c` imports the module a.b.c when there is one.
            edges.update(f"{target}.{n}" for n in names if f"{target}.{n}" in modules)
        # A module runs the __init__ of every package above it.
        edges.update(p for p in _with_parents(name)[:-1] if p in modules)
        graph[name] = edges - {name}
    return graph


def reachable(
    graph: dict[str, set[str]], start: str, skip: frozenset[str] = frozenset()
) -> dict[str, str]:
    """Everything ``start`` imports, directly or not, not passing through ``skip``:
    module -> the module that imports it."""
    seen = {start: ""}
    todo = [start]
    while todo:
        here = todo.pop()
        for nxt in graph.get(here, ()):
            if nxt not in seen and nxt not in skip:
                seen[nxt] = here
                todo.append(nxt)
    del seen[start]
    return seen


def _path(via: dict[str, str], start: str, end: str) -> str:
    chain = [end]
    while via.get(chain[-1]) and chain[-1] != start:
        chain.append(via[chain[-1]])
    return " -> ".join(reversed(chain))


# (modules under this prefix, never import this, why)
RULES = [
    ("workers", "orchestrator", "workers run beside a GPU and know nothing of the driver"),
    ("orchestrator.store", "torch", "the store is read on machines without torch"),
    ("orchestrator.store", "workers", "the store takes worker results by their attributes only"),
    ("orchestrator.report", "ray", "a report is built from the store, never from a live cluster"),
    ("orchestrator.report", "torch", "a report is built from the store alone"),
    ("orchestrator.store", "ray", "the store is read without a cluster"),
    ("orchestrator.datasets", "ray", "data sets are plain files"),
    ("orchestrator.datasets", "orchestrator.run", "data sets do not know how a study runs"),
    ("orchestrator.study", "ray", "a study is plain data and Optuna"),
    ("orchestrator.study", "orchestrator.run", "the study does not know how it is run"),
    ("orchestrator.study", "orchestrator.store", "the study does not know where it is stored"),
    ("workers.models", "workers.steering", "models are below steering"),
    ("workers.steering", "workers.engine", "steering primitives are below the optimizer"),
    ("workers.steering", "workers.evaluation", "steering primitives are below evaluation"),
    ("workers.evaluation", "workers.engine", "evaluating a vector needs no optimizer"),
    ("workers.engine", "workers.evaluation", "the optimizer does not evaluate transfer"),
    ("workers.engine", "workers.service", "the engine does not know the actor"),
    ("workers.evaluation", "workers.service", "evaluation does not know the actor"),
]


def violations(root: Path, prefix: str, banned: str) -> list[str]:
    """Import chains from a module under ``prefix`` to ``banned`` (or a module under it).

    A layer rule inside one package (``workers.steering`` never imports
    ``workers.engine``) does not pass through the packages above ``prefix``:
    ``workers/__init__`` imports every layer to offer the public API, which
    says nothing about what ``workers.steering`` itself needs. A rule across
    packages (the store never imports torch) does, since Python runs them."""
    modules = project_modules(root)
    graph = import_graph(modules)
    same_package = banned.split(".")[0] == prefix.split(".")[0]
    skip = frozenset(_with_parents(prefix)[:-1]) if same_package else frozenset()
    out = []
    for name in sorted(modules):
        if name != prefix and not name.startswith(prefix + "."):
            continue
        via = reachable(graph, name, skip)
        hits = sorted(m for m in via if m == banned or m.startswith(banned + "."))
        if hits:
            out.append(_path(via, name, hits[0]))
    return out


@cache
def _tree_modules() -> tuple[str, ...]:
    return tuple(project_modules())


@pytest.mark.parametrize(("prefix", "banned", "why"), RULES, ids=[f"{p}-!{b}" for p, b, _ in RULES])
def test_import_rule(prefix: str, banned: str, why: str) -> None:
    assert any(m.startswith(prefix) for m in _tree_modules()), f"no module under {prefix}"
    found = violations(ROOT, prefix, banned)
    assert not found, f"{prefix} must not import {banned} ({why}):\n  " + "\n  ".join(found)


def _plant(tmp_path: Path, module: str, line: str) -> Path:
    """A copy of the two packages with ``line`` added to ``module``'s file."""
    for package in PACKAGES:
        for src in (ROOT / package).rglob("*.py"):
            dst = tmp_path / src.relative_to(ROOT)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(src.read_text())
    target = project_modules(tmp_path)[module]
    target.write_text(target.read_text() + f"\n\ndef _planted() -> None:\n    {line}\n")
    return tmp_path


@pytest.mark.parametrize(
    ("module", "line", "prefix", "banned"),
    [
        # direct, lazy, inside a function
        ("workers.evaluation.judges", "import orchestrator.store", "workers", "orchestrator"),
        # indirect: the store reaches torch through workers.models' __init__
        (
            "orchestrator.store.records",
            "from workers.models import ModelSpec",
            "orchestrator.store",
            "torch",
        ),
        (
            "orchestrator.report.tables",
            "from orchestrator.run import runner",
            "orchestrator.report",
            "ray",
        ),
        (
            "workers.steering.losses",
            "from workers.engine import optimize",
            "workers.steering",
            "workers.engine",
        ),
    ],
)
def test_a_planted_import_breaks_its_rule(
    tmp_path: Path, module: str, line: str, prefix: str, banned: str
) -> None:
    assert not violations(ROOT, prefix, banned)
    root = _plant(tmp_path, module, line)
    found = violations(root, prefix, banned)
    assert found and found[0].startswith(prefix), found


def test_an_import_under_type_checking_does_not_count(tmp_path: Path) -> None:
    root = _plant(tmp_path, "orchestrator.store.errors", "pass")
    path = project_modules(root)["orchestrator.store.errors"]
    path.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n" + path.read_text()
    )
    assert not violations(root, "orchestrator.store", "torch")


def test_the_store_and_the_report_import_without_torch_or_ray() -> None:
    code = (
        "import sys; import orchestrator.store, orchestrator.report, orchestrator.study.config; "
        "print(sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.strip()
    assert out == "[]"


def test_the_workers_protocol_imports_without_torch() -> None:
    """A process that only passes assignments and outcomes on (a fake worker on
    a real Ray actor, the driver's bookkeeping) needs no torch: the protocol's
    modules are plain data, and the packages above them import on first use."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "from workers.service.protocol import Assignment, BatchWorker, Drained, VectorOutcome\n"
        "from workers.evaluation.rows import TransferRow\n"
        "from workers.jobs import VectorJob, chat\n"
        "job = VectorJob.simple('j', chat('hi'), promote=['x'], layer=1)\n"
        "w = BatchWorker(lambda b: [VectorOutcome(a.vector_id, a.trial, a.example_id) for a in b])\n"
        "w.put([Assignment('v', 0, 'e', job)])\n"
        "assert [o.vector_id for o in w.drain(5.0).outcomes] == ['v']\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
