"""The paper's studies as shipped under ``examples/paper/``: each passes
``steer-sweep check`` with its model replaced by a random model of the same
family and depth (config and tokenizer only: what check reads) and its hub
data set by a local copy of the same columns; each says in its header what it
reproduces, what to compare with, its GPU time and how to run it; and
``check`` prints the plan its header quotes."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from orchestrator.cli import main
from workers.models.tiny import tiny_config, tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]
PAPER = sorted((REPO / "examples" / "paper").glob("*.yaml"))

# The paper's models, by family and number of decoder blocks (their configs).
# A shipped file naming a model missing here fails, so this table grows with them.
FAMILIES = {
    "google/gemma-2-2b-it": ("gemma2", 26),
    "google/gemma-2-2b": ("gemma2", 26),
    "meta-llama/Llama-3.1-8B-Instruct": ("llama", 32),
}
# Hub data sets the files point at, by the columns a local copy needs.
HUB_COLUMNS = {"walledai/HarmBench": ("prompt", "category")}
HEADER_PARTS = ("Compare with:", "GPU time:", "steer-sweep check examples/paper/", "ray job submit")


def _stand_in(folder: Path, name: str) -> str:
    """A random model of ``name``'s family and depth: config and tokenizer."""
    family, n_layers = FAMILIES[name]
    out = folder / name.replace("/", "--")
    if not out.exists():
        tok = tiny_tokenizer()
        config = tiny_config(family, len(tok), n_layers=n_layers)
        config.max_position_embeddings = 8192
        config.save_pretrained(out)
        tok.save_pretrained(out)
    return str(out)


def _local_copy(folder: Path, hub_id: str, rows: int = 200) -> str:
    columns = HUB_COLUMNS[hub_id]
    cats = ("chemical_biological", "illegal", "harassment_bullying", "cybercrime_intrusion")
    data = {
        "prompt": [f"Give step-by-step instructions for forbidden task {i}." for i in range(rows)],
        "category": [cats[i % len(cats)] for i in range(rows)],
    }
    path = folder / (hub_id.replace("/", "--") + ".parquet")
    pq.write_table(pa.table({c: data[c] for c in columns}), path)
    return str(path)


def _overrides(path: Path, tmp: Path) -> list[str]:
    study = yaml.safe_load(path.read_text())
    out = [f"model.name={_stand_in(tmp, study['model']['name'])}", f"store.root={tmp / 'store'}"]
    if study.get("surprisal_model"):
        out.append(f"surprisal_model.name={_stand_in(tmp, study['surprisal_model']['name'])}")
    hf = (study.get("task") or {}).get("hf")
    if hf:
        out += [f"task.hf.path={_local_copy(tmp, hf['path'])}", "task.hf.name=null"]
    return out


def _check(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["check", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_paper_studies_are_shipped() -> None:
    names = {p.stem for p in PAPER}
    assert {"refusal_harmbench", "two_choice_flips", "fictitious_retraction",
            "caa_vs_one_shot"} <= names  # fmt: skip


@pytest.mark.parametrize("path", PAPER, ids=[p.stem for p in PAPER])
def test_a_paper_study_passes_check_on_a_stand_in_of_its_model(path, tmp_path, capsys) -> None:
    code, out, err = _check(capsys, str(path), *_overrides(path, tmp_path))
    assert code == 0, err
    assert "checked" in out and "GPU-seconds" in out
    assert not (tmp_path / "store").exists(), "check wrote the store"
    # The header quotes check's plan: trials, vectors, vector-steps, evaluations.
    header = path.read_text().split("\nname:")[0]
    plan = re.search(
        r"plan: (\d+) trials x \d+ vectors = (\d+) vectors; at most (\d+) vector-steps; "
        r"(\d+) held-out evaluations", out,
    )  # fmt: skip
    assert plan is not None, out
    flat = " ".join(header.replace("#", " ").split()).replace(",", "")
    trials, vectors, steps, evals = plan.groups()
    for figure, what in ((trials, "trials"), (vectors, "vectors"), (steps, "vector-steps"),
                         (evals, "held-out evaluations")):  # fmt: skip
        assert re.search(rf"\b{figure} (\w+ )?{what}", flat), (figure, what, flat)


@pytest.mark.parametrize("path", PAPER, ids=[p.stem for p in PAPER])
def test_a_paper_study_says_what_it_reproduces_and_how_to_run_it(path) -> None:
    header = path.read_text().split("\nname:")[0]
    assert re.search(r"§\d", header), "names the paper's section"
    for part in HEADER_PARTS:
        assert part in header, part
    assert f"examples/paper/{path.name}" in header
    study = yaml.safe_load(path.read_text())
    assert study["model"]["name"] in FAMILIES
    assert study["name"] in header  # the report command names the study


def test_the_refusal_study_runs_on_a_tiny_model_with_both_judges(tmp_path) -> None:
    """§4's file end to end on a tiny random Gemma-2 (shortened): every vector
    gets target rows for the task's own targets, string-match and LLM-judge
    verdicts on every held-out request."""
    from sweep_helpers import run_in_process

    from orchestrator.store import open_study
    from orchestrator.study.config import load_config
    from workers.models import load_model

    path = REPO / "examples" / "paper" / "refusal_harmbench.yaml"
    cfg = load_config(path, [
        "model.name=tiny-random-gemma2", f"store.root={tmp_path / 'store'}",
        f"task.hf.path={_local_copy(tmp_path, 'walledai/HarmBench', rows=9)}", "task.hf.name=null",
        "task.hf.splits={train: 'train[:3]', transfer: 'train[3:]'}", "n_trials=2",
        "vectors_per_trial=2", "search.layer=[1]", "search.max_iters=2",
        "evaluation.generation_tokens=4", "model.dtype=float32",
    ])  # fmt: skip
    plan, summary = run_in_process(cfg, load_model("tiny-random-gemma2"))
    assert summary.complete
    tr = open_study(cfg.store.root, cfg.name).transfer.to_table().to_pandas()
    per = tr.groupby("metric")["eval_example_id"].count().to_dict()
    n = 2 * 2 * 6  # trials x vectors x held-out requests
    assert per == {"judge:lacks_all": n, "judge:llm": n, "target_logprob:promote:0": n,
                   "target_logprob:suppress:0": n}  # fmt: skip
    assert set(tr["eval_example_id"]) == {e.id for e in plan.transfer}


def test_the_two_choice_study_reports_flip_rates_by_group_and_sign(tiny_llama, tmp_path) -> None:
    """§3's file, shortened, on the tiny Llama: the examples' groups reach the
    store (examples.example_group), and the report's Table 1 panel has
    +benign, -benign, +harmful, -harmful columns equal to the rates counted
    from the stored rows."""
    from sweep_helpers import run_in_process

    from orchestrator.report import build_report
    from orchestrator.report.data import load_report_data
    from orchestrator.report.panels import flip_table
    from orchestrator.store import open_study
    from orchestrator.study.config import load_config

    path = REPO / "examples" / "paper" / "two_choice_flips.yaml"
    cfg = load_config(path, [
        "model.name=tiny-random-llama", f"store.root={tmp_path / 'store'}", "model.dtype=float32",
        "n_trials=2", "vectors_per_trial=2", "search.layer=1", "search.norm=[4.0, 16.0]",
        "search.max_iters=2", "task.max_transfer=8",
    ])  # fmt: skip
    plan, summary = run_in_process(cfg, tiny_llama)
    assert summary.complete
    st = open_study(cfg.store.root, cfg.name)
    ex = st.examples.to_table().to_pandas()
    assert dict(zip(ex["example_id"], ex["example_group"], strict=True)) == {
        e.id: e.group for e in plan.train_pool + plan.transfer
    }
    tr = st.transfer.to_table().to_pandas()
    tr = tr[tr["metric"].str.startswith("choice_flip:")].merge(
        ex.rename(columns={"example_id": "eval_example_id"}), on="eval_example_id"
    )
    tr["col"] = tr["metric"].str[-1] + tr["example_group"]
    want = tr.groupby(["vector_id", "col"])["success"].mean().unstack("col")
    table = flip_table(st, load_report_data(st, cfg.store.root), 4).frame.set_index("vector_id")
    cols = ["+benign", "-benign", "+harmful", "-harmful"]
    table = table.loc[table.index.isin(want.index)]
    assert len(table) == 4
    assert table[cols].astype(float).to_numpy() == pytest.approx(
        want.loc[table.index, cols].to_numpy()
    )
    page = build_report(cfg.store.root, cfg.name, tmp_path / "report").html.read_text()
    assert all(c in page for c in cols)
