"""Property: every study config either passes ``run``'s checks and runs, or is
refused before anything starts.

Hypothesis draws overrides (``key=value``, values written as YAML: numbers,
``.inf`` and ``.nan``, names that exist and names that do not, lists, ranges)
on a small valid study of the tiny random Llama and runs ``steer-sweep run``
in-process. Either

- it exits 0 and the store holds every trial, none of them FAIL (a value that
  passed the checks must not fail at run time), or
- it exits 2 with one paragraph and the store root does not exist.

Ray is replaced by in-process workers that run the real assignments on the
real tiny model (``use_local_pool``): everything else is the command as a
user runs it. The examples are derandomized, so CI runs the same ones.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cli_checks import assert_one_paragraph
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sweep_helpers import use_local_pool

from orchestrator.cli import main
from orchestrator.run.pools import LocalPool
from orchestrator.store import open_study
from workers.models import load_model
from workers.service.stream import StreamingEngine

BASE: dict[str, Any] = {
    "name": "prop",
    "n_trials": 1,
    "vectors_per_trial": 1,
    "model": {"name": "tiny-random-llama", "max_batch_jobs": 2},
    "task": {"builtin": "refusal", "max_transfer": 2},
    "search": {"layer": 1, "max_iters": 1},
    "evaluation": {"generation_tokens": 3},
    "ray": {"num_cpus": 1},
}

# Per key: values a user could mean (YAML text). Any key may also get a value
# from BAD, and a few keys do not exist.
GOOD: dict[str, list[str]] = {
    "n_trials": ["1", "2", "3"],
    "vectors_per_trial": ["1", "2"],
    "seed": ["0", "7", "-3"],
    "trials_in_flight": ["1", "2"],
    "search.layer": ["0", "3", "-1", "[1, 2]", "{low: 0, high: 3}"],
    "search.norm": ["4.0", "null", "[2.0, 8.0]", "{low: 1.0, high: 8.0, log: true}"],
    "search.lr": ["0.1", "0.5", "[0.05, 0.2]", "{low: 0.01, high: 1.0, log: true}"],
    "search.max_iters": ["1", "2", "[1, 2]"],
    "search.init_norm": ["0.5", "2"],
    "search.coldness": ["0.7", "1.0", "[0.5, 1.0]"],
    "search.tokens": ["all", "prompt", "last_k:2", "positions:0", "positions:-1", "[all, prompt]"],
    "search.intervention": ["add", "clamp", "[add, clamp]"],
    "search.clamp_coef": ["0", "1.0", "-2.5", "{low: 0.5, high: 2.0}"],
    "search.loss": ["promote", "mixed", "reentrant", "[promote, mixed]"],
    "search.reentrant_layer": ["0", "1"],
    "search.reentrant_tokens": ["1", "3"],
    "evaluation.log_base": ["10", "2", "2.718281828"],
    "evaluation.max_kl": ["0.1", "5"],
    "evaluation.coldness": ["0.7", "1.0"],
    "evaluation.metrics": [
        "[target_logprob]",
        "[target_logprob, judge]",
        "[target_logprob, side_effect_kl]",
    ],  # fmt: skip
    "evaluation.generation_tokens": ["1", "4"],
    "evaluation.batch_size": ["1", "7"],
    "evaluation.max_targets": ["1", "null"],
    "model.dtype": ["auto", "float32", "bfloat16"],
    "model.device": ["auto", "cpu"],
    "model.max_batch_jobs": ["1", "3"],
    "model.name": ["tiny-random-gpt2", "tiny-random-qwen2"],
    "sampler.name": ["tpe", "random"],
    "sampler.n_startup_trials": ["0", "2"],
    "pruner.name": ["none", "median", "successive_halving"],
    "task.max_transfer": ["1", "3"],
    "objectives": [
        "[{metric: target_logprob, statistic: delta}]",
        "[{metric: target_logprob, reduce: median}]",
    ],
}
# Per kind of key: values that look plausible and are not.
NUMBER_BAD = [".inf", "-.inf", ".nan", "0", "-1", "-0.5", "'3'", "[]", "bogus"]
TEXT_BAD = ["bogus", "''", "last_k:0", "positions:x", "positions:-100", "positions:0,9999",
            "affine", "suppress", "float8", "cuda", "gpu", "grid", "nsga2", "7", "[]"]  # fmt: skip
LIST_BAD = ["[]", "[0.5, .nan]", "[all, last_k:0]", "[choice_flip]", "[side_effect_kl]",
            "{low: 3, high: 1}", "{low: 0, high: 1, log: true}", "{low: 0, high: 3, step: 0}",
            "[{metric: judge}]", "[{metric: typo}]", "[{metric: target_logprob:promote:7}]",
            "[{metric: norm, direction: up}]", "{low: 0, high: .inf}", "true"]  # fmt: skip
UNKNOWN = ["search.layr", "trainer", "model.gpu"]


def bad_values(key: str) -> list[str]:
    first = GOOD[key][0]
    if first[:1] in "[{" or key == "objectives":
        return LIST_BAD
    try:
        float(first)
    except ValueError:
        return TEXT_BAD
    return NUMBER_BAD


def good() -> Any:
    return st.sampled_from(list(GOOD)).flatmap(
        lambda k: st.tuples(st.just(k), st.sampled_from(GOOD[k]))
    )


def bad() -> Any:
    known = st.sampled_from(list(GOOD)).flatmap(
        lambda k: st.tuples(st.just(k), st.sampled_from(bad_values(k)))
    )
    unknown = st.tuples(st.sampled_from(UNKNOWN), st.sampled_from(NUMBER_BAD + TEXT_BAD))
    return st.one_of(known, unknown)


# Up to three plausible settings and at most one bad one, in any order: a bad
# value is always tried in an otherwise valid study, so no other error hides it.
OVERRIDES = st.tuples(st.lists(good(), max_size=3), st.lists(bad(), max_size=1)).flatmap(
    lambda parts: st.permutations(parts[0] + parts[1])
)

_MODELS: dict[str, Any] = {}


def in_process_pool(plan: Any) -> LocalPool:
    """A streaming worker in this process running the real assignments on the
    real model."""
    key = f"{plan.model_spec.name}:{plan.model_spec.dtype}"
    if key not in _MODELS:
        _MODELS[key] = load_model(plan.model_spec)
    return LocalPool([StreamingEngine(_MODELS[key], plan.evaluation, max_rows=2)])


def outcome(overrides: list[tuple[str, str]], capsys: Any) -> str | None:
    """Run ``steer-sweep run`` with ``overrides``; None if the property holds,
    else what went wrong."""
    work = Path(tempfile.mkdtemp(prefix="prop-"))
    try:
        store = work / "store"
        path = work / "study.yaml"
        path.write_text(json.dumps({**BASE, "store": {"root": str(store)}}))
        args = [f"{k}={v}" for k, v in overrides]
        capsys.readouterr()
        code = main(["-q", "run", str(path), *args])
        out, err = capsys.readouterr()
        if code == 2:
            try:
                assert_one_paragraph(err)
            except AssertionError as exc:
                return f"{args}: exit 2 but {exc}"
            if store.exists():
                return f"{args}: exit 2 but the store was written: {list(store.rglob('*'))}"
            return None
        if code != 0:
            return f"{args}: exit {code}: {err.strip()[-500:]}"
        trials = open_study(str(store), "prop").completed_trials()
        cfg = json.loads((store / "_studies" / "prop" / "config.json").read_text())
        if len(trials) != cfg["n_trials"]:
            return f"{args}: {len(trials)} of {cfg['n_trials']} trials stored"
        failed = [f"{t.number}: {t.error}" for t in trials if t.state == "FAIL"]
        return f"{args}: passed the checks, then FAIL trials {failed}" if failed else None
    finally:
        shutil.rmtree(work, ignore_errors=True)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(overrides=OVERRIDES)
def test_a_config_runs_or_is_refused_before_anything_starts(
    overrides: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    use_local_pool(monkeypatch, in_process_pool)
    problem = outcome(overrides, capsys)
    assert problem is None, problem


def test_every_bad_value_of_every_key_alone(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """The same property, exhaustively, for one bad value at a time on the
    valid study: each of them is refused up front, or runs cleanly."""
    use_local_pool(monkeypatch, in_process_pool)
    cases = [(k, v) for k in GOOD for v in bad_values(k)] + [
        (k, v) for k in UNKNOWN for v in ("1", "bogus")
    ]
    assert len(cases) > 250
    problems = [p for case in cases if (p := outcome([case], capsys)) is not None]
    assert not problems, "\n".join(problems)
