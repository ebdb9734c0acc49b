"""``build_report``: read a study from the store, write ``report.html``, its
PNG figures under ``figures/`` and ``summary.parquet``.

Nothing here talks to a running study or to Ray; a study with no trials,
only failed trials, or missing pieces gives a report that says what is
missing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.report import figures as F
from orchestrator.report.data import (
    ReportData,
    heatmap_cells,
    load_report_data,
    read_loss_histories,
    read_vectors,
    scaling_frame,
    summary_frame,
)
from orchestrator.report.history import param_importances
from orchestrator.report.html import Section, esc, frame_table, render
from orchestrator.report.panel_sections import panel_sections
from orchestrator.report.tables import tables

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd
    from matplotlib.figure import Figure

    from orchestrator.store import Study

N_CURVES = 3  # best and worst vectors drawn in the loss-curve figure


@dataclass
class ReportResult:
    """Where the report went. ``figures``: name to PNG path; ``missing``:
    name to the sentence the report shows instead."""

    html: Path
    summary: Path
    figures: dict[str, Path] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    headline: str = ""


def build_report(
    root: str | os.PathLike[str],
    study: str,
    out_dir: str | os.PathLike[str],
    *,
    endpoint_url: str | None = None,
    top: int = 10,
    embed: bool = False,
) -> ReportResult:
    from orchestrator.store import open_study

    st = open_study(root, study, endpoint_url=endpoint_url)
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    data = load_report_data(st, st.root.uri)
    summary = summary_frame(data.vectors)
    result = ReportResult(out / "report.html", out / "summary.parquet")
    summary.assign(study=study).to_parquet(result.summary, index=False)

    figure = _FigureWriter(out, result).section
    norm = ((data.config or {}).get("search") or {}).get("norm")
    cells, binned = heatmap_cells(
        data.vectors, summary, log=isinstance(norm, dict) and bool(norm.get("log"))
    )
    gain = (
        f" Below: the mean change of held-out target log-probabilities ({data.unit}), suppress "
        "targets negated, so positive is the intended way."
        if data.vectors["logprob_gain"].notna().any()
        else ""
    )
    sections = [
        figure(
            "transfer_heatmap",
            "Transfer success by layer",
            F.transfer_heatmap(cells, data.unit, data.lead),
            (
                "Mean over the vectors in each cell of their transfer success: the fraction of "
                "their held-out rows (every example and metric) that succeeded. "
                if not data.lead.note
                else f"{data.lead.note} Mean over the vectors in each cell. "
            )
            + f"{gain} Grey: no vectors. {binned}".rstrip(),
            _summary_details(summary),
        ),
        figure(
            "vector_success",
            "Transfer success per vector",
            F.vector_success(data),
            "One bar per vector in rank order (the ranking of steer-sweep best: the trial's "
            "objective, then the vector's own value of it); colour: the training example it "
            "was optimized on (the shape of the paper's Fig. 2). "
            + data.lead.note
            + _sampled(len(data.one_shot)),
        ),
        figure("optuna_history", "Optuna history", F.optuna_history(data)),
    ]
    imp, why = (
        param_importances(data.trials, data.objectives[0].direction)
        if not data.trials.empty
        else ({}, "no trials stored")
    )
    sections.append(
        figure(
            "param_importance",
            "Parameter importances",
            F.param_importance(imp, why),
            "PED-ANOVA (Optuna) on an in-memory study rebuilt from the stored COMPLETE "
            "trials: how differently the top 10% of trials are spread over each "
            "parameter than all trials.",
        )
    )
    sections.append(figure("pareto_front", "Pareto front", F.pareto_front(data)))
    top_ids = [str(x) for x in data.one_shot["vector_id"].head(top)]
    curve_ids = top_ids[:N_CURVES] + [str(x) for x in data.one_shot["vector_id"].tail(N_CURVES)]
    sections.append(
        figure(
            "loss_curves",
            "Loss curves of the best and worst vectors",
            F.loss_curves(data, read_loss_histories(st, curve_ids), N_CURVES),
            f"Training loss on each vector's own example ({data.unit}; log base "
            f"{data.log_base:g}). The store keeps the loss history per step and "
            "only the final norm.",
        )
    )
    sections.append(_cosine_section(st, data, top_ids, figure))
    sections.append(figure("caa_skyline", "One-shot vs the CAA skyline", F.caa_skyline(data)))
    scaling = scaling_frame(data.one_shot)
    sections.append(
        figure(
            "transfer_vs_shots",
            "Transfer against the number of training examples (K)",
            F.transfer_vs_shots(scaling, data.unit),
            "Vectors optimized on K training examples jointly (search.shots); per layer, the "
            "median transfer success (and target log-probability gain) over the vectors with "
            "that K and its interquartile range; the table below holds the figures.",
            frame_table(scaling, list(scaling.columns)) if scaling["shots"].nunique() > 1 else "",
        )
    )
    sections += panel_sections(st, data, top, figure)
    sections.append(_predictors_section(st, data))
    sections += tables(st, data, top)

    counts = data.trials["state"].value_counts().to_dict() if not data.trials.empty else {}
    result.headline = _headline(data, counts)
    meta = [
        f"store {data.root}; generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from the "
        "Parquet store only",
        "trials: "
        + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none")
        + f"; vectors with transfer results: {len(data.vectors)}",
    ]
    if not data.vectors.empty:
        meta.append(f"model {data.vectors['model_id'].iloc[0]}; losses in {data.unit}")
    page = render(
        title=f"steer-sweep report: {study}",
        meta=meta,
        notes=[result.headline, *data.notes] if result.headline else data.notes,
        sections=sections,
        out_dir=out,
        embed=embed,
    )
    result.html.write_text(page, encoding="utf-8")
    return result


@dataclass
class _FigureWriter:
    out: Path
    result: ReportResult

    def section(
        self, name: str, title: str, made: Figure | str, caption: str = "", extra: str = ""
    ) -> Section:
        """Save ``made`` as ``figures/<name>.png``, or record why it is missing."""
        path = self.out / "figures" / f"{name}.png"
        if isinstance(made, str):
            self.result.missing[name] = made
            path.unlink(missing_ok=True)  # from an earlier report into the same folder
            return Section(title, missing=made, extra=extra)
        made.savefig(path, dpi=F.DPI)
        self.result.figures[name] = path
        return Section(title, figure=f"figures/{name}.png", caption=caption, extra=extra)


def _headline(data: ReportData, counts: dict[str, int]) -> str:
    """A sentence on top of the page when the study is empty or partial."""
    if data.trials.empty:
        return (
            f"No finished trials are stored for study {data.study!r} under {data.root}: "
            "nothing to report yet (is the study name right, or has its first trial not "
            "finished?)."
        )
    n = len(data.trials)
    if counts.get("FAIL", 0) == n:
        return f"All {n} stored trials failed: no vectors to report. Their errors are listed below."
    if data.vectors.empty:
        return "No vectors with transfer results are stored yet."
    return ""


def _sampled(n: int) -> str:
    drawn = len(F.drawn_ranks(n))
    if drawn == n:
        return ""
    return (
        f" {drawn} of the {n} vectors are drawn, evenly spaced in rank order (the best and "
        "the worst among them); the dashed median is over every vector."
    )


def _summary_details(summary: pd.DataFrame) -> str:
    if summary.empty:
        return ""
    cols = list(summary.columns)
    return (
        "<details><summary>the numbers (summary.parquet)</summary>"
        + frame_table(summary, cols)
        + "</details>"
    )


def _cosine_section(
    st: Study, data: ReportData, ids: list[str], make: Callable[..., Section]
) -> Section:
    got, matrix = read_vectors(st, ids)
    by_id = data.one_shot.set_index("vector_id")
    labels = [
        f"#{by_id.at[v, 'rank']} {by_id.at[v, 'example_id']} (L{by_id.at[v, 'layer']})" for v in got
    ]
    layers = [int(by_id.at[v, "layer"]) for v in got]
    fig, within, pooled = F.cosine_similarity(labels, matrix, layers)
    extra = ""
    if len(got) > 1 and within:
        per = "; ".join(f"layer {k}: {m:.3f} over {n} pair(s)" for k, (m, n) in within.items())
        extra = f"<p><b>median cosine similarity within a layer: {pooled:.3f}</b> ({esc(per)})</p>"
    elif len(got) > 1:
        extra = "<p>No two of these vectors are at the same layer: no median to compare.</p>"
    return make(
        "cosine_similarity",
        "Cosine similarity of the top vectors",
        fig,
        "Vectors at different layers live in different residual streams, so the medians "
        "count pairs at the same layer (L) only; the matrix shows every pair. The paper's "
        "§3.3 found a median of 0.031 for norm-15 vectors.",
        extra,
    )


def _predictors_section(st: Study, data: ReportData) -> Section:
    """Spearman's correlation of each cheap signal with transfer success, and a
    cross-validated predictor's ROC-AUC (see ``orchestrator.report.predictors``)."""
    from orchestrator.report import predictors as P

    title = "What predicts transfer"
    if data.one_shot.empty:
        return Section(title, missing="no vectors with transfer results stored")
    sig = P.signals(st, data)
    corr = P.correlations(sig)
    pred = P.cross_validated_auc(sig)
    if pred.auc is None:
        verdict = f"No cross-validated predictor: {pred.why}."
    else:
        verdict = (
            f"A logistic regression on {', '.join(pred.features)} tells the vectors above the "
            f"median {pred.outcome} from the rest with a 5-fold cross-validated ROC-AUC of "
            f"{pred.auc:.3f} ({pred.n} vectors; 0.5 is chance)."
        )
    left_out = [c for c in P.OUTCOMES if c not in corr.columns]
    gone = (
        f"Left out, as their outcome is the same for every vector (or not stored): "
        f"{', '.join(left_out)}. "
        if left_out
        else ""
    )
    caption = (
        "Per signal, Spearman's rank correlation with transfer success (spearman), with "
        "the target log-probability gain (spearman_gain) and with the vector's own value of "
        "the first objective (spearman_objective), over the vectors it is defined for "
        f"(NaN: constant there). {gone}final_loss and loss_ratio: the training loss; "
        "early_drop: the share of the loss drop reached by half the steps; cos_caa and "
        "cos_others: cosine similarity to the CAA vector and to the study's other vectors at "
        "the same layer. " + verdict
    )
    return Section(title, caption=caption, extra=frame_table(corr, list(corr.columns)))
