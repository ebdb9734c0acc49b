"""The report's paper-style sections, each shown with its numbers where the
study measured its metrics and as a one-line empty state otherwise: §3
choice-flip rates by group and sign, §4 judge success by layer, §5
retraction rate and surprisal. The numbers come from
``orchestrator.report.panels``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from orchestrator.report import figures as F
from orchestrator.report import panels as P
from orchestrator.report.html import Section, frame_table
from orchestrator.report.vectors import vector_link

if TYPE_CHECKING:
    from orchestrator.report.data import ReportData
    from orchestrator.store import Study

FLIP_TITLE = "Choice-flip rates by group and sign (§3, Table 1)"
JUDGE_TITLE = "Judge success by layer: attack success (§4, Fig. 2)"
RETRACTION_TITLE = "Retraction rate and surprisal by loss kind and layer (§5)"

MakeFigure = Callable[..., Section]


def panel_sections(st: Study, data: ReportData, top: int, figure: MakeFigure) -> list[Section]:
    """The three sections; ``figure`` saves a figure and makes its section
    (``build._FigureWriter.section``)."""
    return [
        flip_section(st, data, top),
        judge_section(st, data, figure),
        retraction_section(st, data),
    ]


def flip_section(st: Study, data: ReportData, top: int) -> Section:
    flips = P.flip_table(st, data, top)
    frame, per_group = flips.frame, flips.per_group
    if frame.empty:
        return Section(
            FLIP_TITLE, missing="not measured in this study: no choice_flip:+ / choice_flip:- rows"
        )
    rates = P.flip_columns(list(per_group.index))
    shown = frame.assign(
        vector_id=[
            P.MEDIAN_ROW if v == P.MEDIAN_ROW else vector_link(str(v)) for v in frame["vector_id"]
        ]
    )
    cols = ["rank", "vector_id", "layer", "norm_bound", "n_examples", *rates]
    heads = ["rank", "vector", "layer", "norm bound", "held-out examples", *rates]
    sizes = ", ".join(f"{g} {int(k)}" for g, k in per_group.items())
    caption = (
        f"Rows: the report's top {top} one-shot vectors in rank order, then the median row. "
        "Column +G (-G): of the held-out examples of group G that have a choice_flip:+ "
        "(choice_flip:-) row for the vector, the fraction whose argmax among the answer "
        "choices changed when the vector was added (subtracted). Groups come from the "
        "examples table's example_group column, in the order their first such example appears "
        f"there, + then - for each ({P.NO_GROUP}: examples without a group); the paper's Table 1 orders them "
        "+benign, -harmful, -benign, +harmful. Held-out examples: the distinct held-out "
        "examples with choice_flip rows for the vector. Median row: each column's median "
        f"over the {flips.n_vectors} one-shot vectors with choice_flip rows, column by column (so not one "
        "vector's row; CAA skyline excluded). Held-out examples with choice_flip rows per "
        f"group: {sizes}."
    )
    if list(flips.per_group.index) == [P.NO_GROUP]:
        caption += (
            f" No held-out example has a group (a task without groups, or a store written "
            f"before schema version 4, which had no examples.example_group): every one is "
            f"{P.NO_GROUP}."
        )
    return Section(FLIP_TITLE, caption=caption, extra=frame_table(shown, cols, heads))


def judge_section(st: Study, data: ReportData, figure: MakeFigure) -> Section:
    frame = P.judge_by_layer(st, data)
    caption = (
        "Per judge metric and layer, over the one-shot vectors at that layer with rows of "
        "that judge (CAA skyline excluded; n_vectors counts them). A vector's rate: of its "
        "held-out examples with a verdict of that judge, the fraction whose greedy steered "
        "generation got a yes (verdict 1). best: the highest rate at the layer; median: the "
        "median rate; unsteered: the same fraction for the unsteered generations of each "
        "vector's examples, averaged over the layer's vectors (the unsteered generation does "
        "not depend on the vector, so vectors that saw the same examples agree). Where yes "
        "means compliance (judge:lacks_all over refusal phrases, or an LLM judge of "
        "compliance) best and median are attack success rates; for judge:contains_any over "
        "refusal phrases yes means a refusal."
    )
    cols = ["metric", "layer", "n_vectors", "best", "median", "unsteered"]
    heads = ["judge metric", "layer", "vectors", "best vector", "median vector", "unsteered"]
    extra = frame_table(frame, cols, heads) if not frame.empty else ""
    return figure("attack_success", JUDGE_TITLE, F.attack_success(frame), caption, extra)


def retraction_section(st: Study, data: ReportData) -> Section:
    frame = P.retraction_table(st, data)
    if frame.empty:
        return Section(
            RETRACTION_TITLE,
            missing=f"not measured in this study: no {P.SURPRISAL} rows and no "
            f"{P.RETRACTION_JUDGE} verdicts",
        )
    caption = (
        f"Shown when the report's vectors have {P.SURPRISAL} rows or {P.RETRACTION_JUDGE} "
        "verdicts (the §5 judge: yes = the generation lacks every retraction string, such "
        "as 'Just kidding'). One row per loss kind and layer, over the vectors with a judge "
        "or surprisal row (CAA skyline included, as loss kind caa); n_vectors counts them. "
        "M steered (unsteered): the mean over those vectors of the fraction of their held-out "
        "examples judged by M whose greedy steered (unsteered) generation got a yes; for "
        f"{P.RETRACTION_JUDGE}, the rate of generations lacking every retraction string. "
        "surprisal steered (unsteered): the mean over the vectors of their mean base-model "
        f"surprisal per token (§2.2, -log B(x | C) / |x| in {data.unit}; lower is more "
        "natural) of the steered (unsteered) generations; a NaN score (an empty generation) "
        "is skipped. Blank: not measured for those vectors."
    )
    cols = list(frame.columns)
    heads = [_retraction_head(c, data.unit) for c in cols]
    return Section(RETRACTION_TITLE, caption=caption, extra=frame_table(frame, cols, heads))


def _retraction_head(col: str, unit: str) -> str:
    if col.startswith(P.SURPRISAL + " "):
        return f"{col} ({unit} per token)"
    if col.startswith(P.JUDGE_PREFIX):
        return f"{col} rate"
    return {"loss_kind": "loss kind", "n_vectors": "vectors"}.get(col, col)
