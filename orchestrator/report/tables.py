"""The report's tables: top vectors, the best vector on held-out examples,
failed trials."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.report.data import ReportData, transfer_rows
from orchestrator.report.html import Section, esc, frame_table, message, table

if TYPE_CHECKING:
    from orchestrator.store import Study

N_EXAMPLES = 5  # transfer examples shown for the best vector


def tables(st: Study, data: ReportData, top: int) -> list[Section]:
    """The top vectors with their parameters, the best vector on a few held-out
    examples, and the failed trials' errors."""
    out = []
    v = data.one_shot
    shown = {"param_layer", "param_norm", "param_loss", "param_lr"}  # the vector's own columns
    all_params = sorted(c for c in v.columns if c.startswith("param_") and c not in shown)
    params = [c for c in all_params if v[c].nunique(dropna=False) > 1]
    fixed = [f"{c.removeprefix('param_')} = {v[c].iloc[0]}" for c in all_params if c not in params]
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
        "trial_value",
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
        "trial objective",
        "held-out rows",
        "transfer success (probability)",
        f"target log-prob gain ({data.unit})",
        *[p.removeprefix("param_") for p in params],
    ]
    if v.empty:
        out.append(Section(f"Top {top} vectors", missing="no vectors with transfer results stored"))
    else:
        note = (
            f"<p>parameters the same for every vector: {esc(', '.join(fixed))}</p>" if fixed else ""
        )
        out.append(
            Section(f"Top {top} vectors", extra=frame_table(v.head(top), cols, heads) + note)
        )
    out.append(_best_examples(st, data))
    fails = data.trials[data.trials["state"] == "FAIL"] if not data.trials.empty else data.trials
    if not fails.empty:
        out.append(Section("Failed trials", extra=frame_table(fails, ["trial", "error"])))
    return out


def _best_examples(st: Study, data: ReportData) -> Section:
    title = f"Best vector on {N_EXAMPLES} transfer examples: steered vs unsteered"
    v = data.one_shot
    if v.empty:
        return Section(title, missing="no vectors with transfer results stored")
    best = str(v["vector_id"].iloc[0])
    rows = transfer_rows(st, best)
    shown = sorted(rows["eval_example_id"].unique())[:N_EXAMPLES]
    rows = rows[rows["eval_example_id"].isin(shown)].sort_values(["eval_example_id", "metric"])
    gen = message(
        "No generations stored: the store keeps each transfer metric's steered and unsteered "
        "values (judge:* rows hold the judge's verdict, 1 = yes), not the generated text."
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
    return Section(title, extra=f"<p>vector <code>{esc(best)}</code></p>{gen}{body}")
