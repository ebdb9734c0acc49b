"""The report's tables: top vectors (each linked to its own section), the
best vector on held-out examples, the top vectors' generated text, one
section per top vector, failed trials."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.report.data import ReportData
from orchestrator.report.html import Section, esc, frame_table, table
from orchestrator.report.vectors import (
    TOP_ANCHOR,
    TopVectors,
    generations_section,
    load_top,
    vector_anchor,
    vector_link,
    vector_sections,
)

if TYPE_CHECKING:
    from orchestrator.store import Study

N_EXAMPLES = 5  # transfer examples shown for the best vector


def tables(st: Study, data: ReportData, top: int) -> list[Section]:
    """The top vectors with their parameters, the best vector on a few held-out
    examples, the top vectors' generations and sections, and the failed
    trials' errors."""
    out = []
    v = data.one_shot
    shown = {"param_layer", "param_norm", "param_loss", "param_lr"}  # the vector's own columns
    all_params = sorted(c for c in v.columns if c.startswith("param_") and c not in shown)
    params = [c for c in all_params if v[c].nunique(dropna=False) > 1]
    fixed = [f"{c.removeprefix('param_')} = {v[c].iloc[0]}" for c in all_params if c not in params]
    several = len(data.objectives) > 1
    objective_cols = ["front"] if several else []
    objective_heads = ["on the Pareto front"] if several else []
    for i, o in enumerate(data.objectives):
        objective_cols += [f"objective_{i}", f"vector_objective_{i}"]
        objective_heads += [f"trial objective: {o.label}", "the vector's own value of it"]
    cols = [
        "rank",
        "vector_id",
        "trial",
        "example_id",
        "layer",
        "norm_bound",
        "loss_kind",
        "lr",
        "final_loss",
        "final_norm",
        *objective_cols,
        "transfer_n",
        "transfer_success",
        "logprob_gain",
        *params,
    ]
    heads = [
        "rank",
        "vector",
        "trial",
        "training example",
        "layer",
        "norm bound",
        "loss kind",
        "lr",
        f"final loss ({data.unit})",
        "final norm",
        *objective_heads,
        "held-out rows",
        "transfer success (probability)",
        f"target log-prob gain ({data.unit})",
        *[p.removeprefix("param_") for p in params],
    ]
    if v.empty:
        out.append(
            Section(
                f"Top {top} vectors",
                missing="no vectors with transfer results stored",
                anchor=TOP_ANCHOR,
            )
        )
    else:
        note = (
            f"<p>parameters the same for every vector: {esc(', '.join(fixed))}</p>" if fixed else ""
        )
        shown_rows = v.head(top)
        shown_rows = shown_rows.assign(
            vector_id=[vector_link(str(x)) for x in shown_rows["vector_id"]]
        )
        out.append(
            Section(
                f"Top {top} vectors",
                extra=frame_table(shown_rows, cols, heads) + note,
                caption="Each vector id links to the vector's own section further down.",
                anchor=TOP_ANCHOR,
            )
        )
    best = load_top(st, data, top)  # the best vector is its first row
    out.append(_best_examples(best, data))
    out.append(generations_section(best))
    out.append(vector_sections(best, data.unit))
    fails = data.trials[data.trials["state"] == "FAIL"] if not data.trials.empty else data.trials
    if not fails.empty:
        out.append(Section("Failed trials", extra=frame_table(fails, ["trial", "error"])))
    return out


def _best_examples(top: TopVectors, data: ReportData) -> Section:
    title = f"Best vector on {N_EXAMPLES} transfer examples: steered vs unsteered"
    if top.frame.empty:
        return Section(title, missing="no vectors with transfer results stored")
    best = str(top.frame["vector_id"].iloc[0])
    rows = top.transfer[top.transfer["vector_id"] == best]
    shown = sorted(rows["eval_example_id"].unique())[:N_EXAMPLES]
    rows = rows[rows["eval_example_id"].isin(shown)].sort_values(["eval_example_id", "metric"])
    note = (
        "<p>Each transfer metric's unsteered and steered value; judge:* rows hold the "
        "judge's verdict (1 = yes, 0 = no). Generated text, where the study kept some, "
        "is in the sections below.</p>"
    )
    body = table(
        ["ex", "prompt", "target", "metric", "unsteered", "steered", "success"],
        [
            [
                r.eval_example_id,
                r.prompt_text,
                r.target_text,
                r.metric,
                r.unsteered,
                r.steered,
                bool(r.success) if r.success is not None else None,
            ]
            for r in rows.itertuples()
        ],
        [
            "held-out example",
            "prompt",
            "targets",
            "metric",
            f"unsteered ({data.unit} for target_logprob)",
            f"steered ({data.unit} for target_logprob)",
            "success",
        ],
    )
    head = (
        f"<p>vector <code>{esc(best)}</code> "
        f'(<a href="#{esc(vector_anchor(best))}">its section</a>)</p>'
    )
    return Section(title, extra=head + note + body)
