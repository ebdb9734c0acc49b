"""One ranking: ``run``'s summary, ``best``, ``try --best``, ``export --best``
and the report's top table name the same trials and vectors, and equal an
independent reference built on Optuna's ``best_trial`` / ``best_trials``."""

from __future__ import annotations

import contextlib
import html
import io
import json
import math
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
from ranking_studies import (
    STUDIES,
    StdoutCapture,
    report_top_ids,
    run_line_trials,
    run_study_cli,
    table_column,
)

from orchestrator import cli
from orchestrator.ranking import RULE, trial_order
from orchestrator.report import build_report
from orchestrator.store import open_study
from orchestrator.study.objectives import (
    Objective,
    TransferColumns,
    per_vector,
    per_vector_columns,
)
from workers.evaluation.transfer import TransferRow

# ---------------------------------------------------------------- the rule itself


def optuna_best(values: list[list[float]], directions: list[str]) -> set[int]:
    """Indices of Optuna's best trial (one objective) or best trials."""
    study = optuna.create_study(directions=directions)
    for v in values:
        study.add_trial(optuna.trial.create_trial(values=v, params={}, distributions={}))
    if len(directions) == 1:
        return {study.best_trial.number}
    return {t.number for t in study.best_trials}


def brute_dominated_by(values: list[list[float]], directions: list[str]) -> list[int]:
    signs = [1.0 if d == "maximize" else -1.0 for d in directions]
    better = [[s * x for s, x in zip(signs, v, strict=True)] for v in values]
    return [
        sum(
            all(o >= m for o, m in zip(other, mine, strict=True)) and other != mine
            for other in better
        )
        for mine in better
    ]


@pytest.mark.parametrize(
    "directions",
    [["maximize"], ["minimize"], ["maximize", "minimize"], ["minimize", "minimize", "maximize"]],
)
def test_trial_order_agrees_with_optuna_and_brute_force(directions: list[str]) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = random.Random(len(directions) * 7 + (directions[0] == "minimize"))
    for _ in range(30):
        n = rng.randint(1, 40)
        # few distinct values, so ties and equal points are common
        values = [[float(rng.randint(0, 5)) for _ in directions] for _ in range(n)]
        numbers = rng.sample(range(1000), n)  # store numbers need not be 0..n-1
        order = trial_order(numbers, values, directions)
        assert sorted(order.numbers) == sorted(numbers)
        index = {num: i for i, num in enumerate(numbers)}
        front = {index[num] for num, f in zip(order.numbers, order.front, strict=True) if f}
        # Optuna breaks one-objective ties by the trial added first: add in number order.
        by_number = sorted(range(n), key=lambda i: numbers[i])
        want = {by_number[i] for i in optuna_best([values[i] for i in by_number], directions)}
        assert front == want
        counts = brute_dominated_by(values, directions)
        got = {index[num]: c for num, c in zip(order.numbers, order.dominated_by, strict=True)}
        if len(directions) > 1:
            assert got == dict(enumerate(counts))
        signs = [1.0 if d == "maximize" else -1.0 for d in directions]
        key = [
            (got[i], *[-s * x for s, x in zip(signs, values[i], strict=True)], numbers[i])
            for i in range(n)
        ]
        assert [index[num] for num in order.numbers] == sorted(range(n), key=lambda i: key[i])


def test_trials_without_finite_values_are_not_ranked() -> None:
    order = trial_order([0, 1, 2, 3], [[1.0], [math.nan], [], [2.0]], ["maximize"])
    assert order.numbers == [3, 0] and order.front == [True, False]


def test_the_rule_is_one_paragraph_in_best_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["best", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert " ".join(RULE.split()) in out


def test_per_vector_columns_equal_per_vector_on_rows() -> None:
    rng = random.Random(5)
    metrics = ["target_logprob:promote:0", "target_logprob:suppress:1", "side_effect_kl", "judge:x"]
    rows = [
        TransferRow(
            f"v{rng.randint(0, 30)}",
            f"e{i}",
            rng.choice(metrics),
            rng.choice([rng.uniform(-5, 1), math.nan]) if i % 17 == 0 else rng.uniform(-5, 1),
            rng.uniform(-5, 1),
            rng.choice([True, False, None]),  # type: ignore[arg-type]
        )
        for i in range(600)
    ]
    ids = sorted({r.vector_id for r in rows} | {"never"})
    code = {v: i for i, v in enumerate(ids)}
    names = sorted(set(metrics))
    cols = TransferColumns(
        ids,
        np.array([code[r.vector_id] for r in rows]),
        names,
        np.array([names.index(r.metric) for r in rows]),
        np.array([r.steered for r in rows], float),
        np.array([r.unsteered for r in rows], float),
        np.array([bool(r.success) for r in rows]),
    )
    for family in ("target_logprob", "target_logprob:suppress", "side_effect_kl", "judge"):
        for statistic in ("success", "steered", "delta"):
            obj = Objective(metric=family, statistic=statistic)  # type: ignore[arg-type]
            want = per_vector(rows, obj, {})
            got = per_vector_columns(cols, obj)
            for vid, value in zip(ids, got, strict=True):
                if vid not in want:
                    assert math.isnan(value), (vid, family, statistic)
                else:
                    assert value == want[vid] or (math.isnan(value) and math.isnan(want[vid]))


# ---------------------------------------------------------------- three studies, every command


def expected(root: Path, name: str) -> dict[str, Any]:
    """The ranking recomputed from the raw files and Optuna: the trials best
    first, Optuna's best (one objective) or best trials, and the vectors."""
    study = open_study(root, name)
    objs = STUDIES[name]
    directions = [o["direction"] for o in objs]
    done = [t for t in study.completed_trials() if t.state == "COMPLETE"]
    assert len(done) >= 10
    values = [list(t.values or []) for t in done]
    best = {done[i].number for i in optuna_best(values, directions)}
    counts = brute_dominated_by(values, directions) if len(objs) > 1 else [0] * len(done)
    signs = [1.0 if d == "maximize" else -1.0 for d in directions]

    def trial_key(i: int) -> tuple:
        return (counts[i], *[-s * x for s, x in zip(signs, values[i], strict=True)], done[i].number)

    trials = [done[i].number for i in sorted(range(len(done)), key=trial_key)]
    files = sorted((root / "transfer" / f"study={name}").glob("*.parquet"))
    tr = pd.concat([pd.read_parquet(f) for f in files])
    own_delta = (tr["steered"] - tr["unsteered"]).groupby(tr["vector_id"]).mean()
    files = sorted((root / "vectors" / f"study={name}").glob("*.parquet"))
    vec = pd.concat([pd.read_parquet(f, columns=["vector_id", "trial", "final_loss",
                                                 "final_norm"]) for f in files])  # fmt: skip
    place = {t: i for i, t in enumerate(trials)}
    keys = []
    for r in vec.itertuples():
        own = [own_delta[r.vector_id], r.final_norm][: len(objs)]
        signed = [-s * x for s, x in zip(signs, own, strict=True)]
        keys.append((place[r.trial], *signed, r.final_loss, r.vector_id))
    vectors = [k[-1] for k in sorted(keys)]
    success = tr.groupby("vector_id")["success"].mean()
    return {"trials": trials, "best": best, "vectors": vectors, "success": success}


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("ranking")
    mp = pytest.MonkeyPatch()
    out: dict[str, Any] = {}

    try:
        for name in STUDIES:
            buf = io.StringIO()  # capsys is per test; the studies are built once
            with contextlib.redirect_stdout(buf):
                run_out = run_study_cli(folder, name, mp, StdoutCapture(buf))  # type: ignore[arg-type]
            out[name] = {"run": run_out, **expected(folder / "store", name)}
    finally:
        mp.undo()
    out["root"] = folder / "store"
    return out


def cli_out(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert cli.main(["-q", *argv]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", list(STUDIES))
def test_every_command_names_the_same_best(
    studies: dict[str, Any], name: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    want = studies[name]
    root = str(studies["root"])
    several = len(STUDIES[name]) > 1
    # run's summary line
    named = run_line_trials(want["run"])
    if several:
        front_in_order = [t for t in want["trials"] if t in want["best"]]
        assert named == front_in_order[:3]
        assert f"Pareto front: {len(want['best'])} trials" in want["run"]
    else:
        assert named == sorted(want["best"])
    # best
    out = cli_out(capsys, "best", name, "--root", root, "--top", "1000")
    listed = [int(t) for t in table_column(out, "trial")]
    assert list(dict.fromkeys(listed)) == want["trials"]
    assert listed[0] in want["best"]
    assert table_column(out, "vector_id") == want["vectors"]
    if several:
        fronts = dict(zip(listed, table_column(out, "front"), strict=True))
        assert {t for t, f in fronts.items() if f == "True"} == want["best"]
    # try --best 1
    out = cli_out(capsys, "try", name, "--root", root, "--best", "1", "--json", "--tokens", "1",
                  "--examples", "1")  # fmt: skip
    assert json.loads(out.splitlines()[0])["vector_id"] == want["vectors"][0]
    # export --best 4: more than one trial's vectors (K = 3)
    target = tmp_path / "out.safetensors"
    cli_out(capsys, "export", name, "--root", root, "--best", "4", "--out", str(target))
    from safetensors import safe_open

    with safe_open(str(target), "np") as f:
        meta = json.loads(f.metadata()["steer_sweep.vectors"])
    assert [m["vector_id"] for m in meta] == want["vectors"][:4]
    # the report's top table
    res = build_report(root, name, tmp_path / "report", top=10)
    page = res.html.read_text(encoding="utf-8")
    assert report_top_ids(page, 10) == want["vectors"][:10]


def test_the_report_says_what_its_lead_figures_show(
    studies: dict[str, Any], tmp_path: Path
) -> None:
    """Every success is 1.0 here: the lead figures show the objective's
    per-vector value and say so, the Spearman column against success is left
    out with its reason, and the header names the store by its URI."""
    root = studies["root"]
    res = build_report(root, "tmax", tmp_path / "report", top=10)
    page = html.unescape(res.html.read_text(encoding="utf-8"))
    note = "Transfer success is 1.00 for every vector, so it tells them apart no more"
    assert page.count(note) == 2  # the heatmap's caption and the per-vector bars'
    assert "each vector's own delta target_logprob (hartleys) instead" in page
    assert f"store {Path(root).as_uri()};" in page and "StoreRoot(" not in page
    corr = page.split("What predicts transfer")[1]
    assert "Left out, as their outcome is the same for every vector" in corr
    heads = re.findall(r"<th>([^<]*)</th>", corr.split("</table>")[0])
    assert "spearman" not in heads and {"spearman_gain", "spearman_objective"} <= set(heads)


def test_with_every_success_at_one_export_takes_the_best_trials_vectors(
    studies: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    want = studies["tmax"]
    assert (want["success"] == 1.0).all()  # transfer success says nothing here
    (best,) = want["best"]
    cli_out(capsys, "export", "tmax", "--root", str(studies["root"]), "--best", "2", "--out",
            str(tmp_path))  # fmt: skip
    from safetensors import safe_open

    with safe_open(str(tmp_path / "tmax.safetensors"), "np") as f:
        meta = json.loads(f.metadata()["steer_sweep.vectors"])
    assert [m["trial"] for m in meta] == [best, best]
    assert [m["vector_id"] for m in meta] == want["vectors"][:2]
