"""The report's text about single vectors: what the best vectors make the
model say (stored steered and unsteered generations, with the judge's
verdicts), and one section per vector of the top-vectors table, which links
to it.

Every prompt and generated text goes through ``esc``: they are model output
and dataset text, and may hold anything, markup included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.report.data import generation_rows, has_generations, transfer_rows
from orchestrator.report.html import Markup, Section, esc, frame_table, link, table

if TYPE_CHECKING:
    import pandas as pd

    from orchestrator.report.data import ReportData
    from orchestrator.store import Study

N_GEN_VECTORS = 3  # top vectors whose generations get their own section
N_GEN_EXAMPLES = 3  # held-out examples shown per vector (the first by id)
JUDGE_PREFIX = "judge:"
TOP_ANCHOR = "top-vectors"

NO_TEXT = (
    "This study kept no generated text: its store has no generations rows (it was written "
    "before the store had a generations table, or ran with evaluation.keep_generations: 0 "
    "and no judge or surprisal metric). Set evaluation.keep_generations above 0, or measure "
    "a judge or surprisal metric, to make a study keep its steered and unsteered text."
)


@dataclass
class TopVectors:
    """The rows of the top-vectors table (best first) with their transfer
    rows and stored generations, read once for the sections below.
    ``kept_text``: whether the study stored any generations at all;
    ``verdicts``: the judges' verdicts per (vector, example), as text."""

    frame: pd.DataFrame
    transfer: pd.DataFrame
    generations: pd.DataFrame
    kept_text: bool
    verdicts: dict[tuple[str, str], str]


def load_top(st: Study, data: ReportData, top: int) -> TopVectors:
    """Read what the per-vector sections need for the first ``top`` vectors."""
    frame = data.one_shot.head(top)
    ids = [str(x) for x in frame["vector_id"]]
    transfer = transfer_rows(st, ids)
    return TopVectors(
        frame, transfer, generation_rows(st, ids), has_generations(st), judge_verdicts(transfer)
    )


def vector_anchor(vid: str) -> str:
    """The id of a vector's section on the page."""
    return f"vector-{vid}"


def vector_link(vid: str) -> Markup:
    """The vector id, linked to its section."""
    return link(vector_anchor(vid), vid)


# ---------------------------------------------------------------- sections


def generations_section(top: TopVectors) -> Section:
    """The steered and unsteered text of the best ``N_GEN_VECTORS`` vectors on
    a few held-out examples each, or why there is none."""
    n = min(N_GEN_VECTORS, len(top.frame)) or N_GEN_VECTORS
    title = f"What the top {n} vectors make the model say"
    if top.frame.empty:
        return Section(title, missing="no vectors with transfer results stored")
    if not top.kept_text:
        return Section(title, missing=NO_TEXT)
    parts = []
    for row in top.frame.head(n).itertuples():
        vid = str(row.vector_id)
        head = f"#{esc(row.rank)} vector {vector_link(vid).html} (layer {esc(row.layer)})"
        parts.append(f"<h3>{head}</h3>{_vector_generations(top, vid)}")
    return Section(title, caption=_GEN_CAPTION, extra="".join(parts))


_GEN_CAPTION = (
    f"Greedy continuations of held-out prompts with and without the vector, the first "
    f"{N_GEN_EXAMPLES} stored examples of each vector by id. Under each text: generated "
    "tokens and why it stopped (eos: the model ended it; length: it hit the token limit). "
    "Judge: the verdict of each judge:* metric on the unsteered and the steered text."
)


def vector_sections(top: TopVectors, unit: str) -> Section:
    """One part per vector of the top-vectors table (anchor ``vector-<id>``):
    its settings, the summary of its transfer rows and its generations."""
    title = "The top vectors one by one"
    if top.frame.empty:
        return Section(title, missing="no vectors with transfer results stored")
    parts = [_vector_part(top, row, unit) for row in top.frame.itertuples()]
    caption = (
        f"Per metric, over the vector's held-out rows: target_logprob values in {unit}, "
        "judge:* values the share of yes verdicts, success the share of rows that succeeded."
    )
    return Section(title, caption=caption, extra="".join(parts))


_FACTS = {
    "layer": "layer",
    "loss_kind": "loss kind",
    "norm_bound": "norm bound",
    "lr": "lr",
    "final_loss": "final loss",
    "final_norm": "final norm",
    "trial": "trial",
    "example_id": "training example",
}


def _vector_part(top: TopVectors, row: Any, unit: str) -> str:
    """The part of ``vector_sections`` for one vector (a row of ``top.frame``):
    heading with its anchor, its settings, transfer summary and generations."""
    vid = str(row.vector_id)
    head = (
        f'<h3 id="{esc(vector_anchor(vid))}">#{esc(row.rank)} vector <code>{esc(vid)}</code> '
        f'<a href="#{TOP_ANCHOR}">(back to the table)</a></h3>'
    )
    heads = [f"{h} ({unit})" if c == "final_loss" else h for c, h in _FACTS.items()]
    facts = frame_table(top.frame[top.frame["vector_id"] == vid], list(_FACTS), heads)
    rows = top.transfer[top.transfer["vector_id"] == vid]
    gens = _vector_generations(top, vid) if top.kept_text else ""
    return head + facts + transfer_summary(rows) + gens


# ---------------------------------------------------------------- pieces


def transfer_summary(rows: pd.DataFrame) -> str:
    """A table of one vector's transfer rows per metric: how many, the share
    that succeeded, the mean unsteered and steered values."""
    if rows.empty:
        return "<p>no transfer rows stored for this vector</p>"
    g = rows.assign(success=rows["success"].astype("float64")).groupby("metric", sort=True)
    s = g.agg(
        n=("eval_example_id", "size"),
        success=("success", "mean"),
        unsteered=("unsteered", "mean"),
        steered=("steered", "mean"),
    )
    return table(
        ["metric", "held-out rows", "success (share)", "mean unsteered", "mean steered"],
        [[m, int(r.n), r.success, r.unsteered, r.steered] for m, r in s.iterrows()],
    )


def judge_verdicts(transfer: pd.DataFrame) -> dict[tuple[str, str], str]:
    """Per (vector, held-out example) with judge:* rows, their verdicts as text,
    e.g. ``refusal: unsteered no, steered yes``."""
    judged = transfer[transfer["metric"].str.startswith(JUDGE_PREFIX)]
    out: dict[tuple[str, str], list[str]] = {}
    for r in judged.sort_values("metric").itertuples():
        name = str(r.metric).removeprefix(JUDGE_PREFIX)
        text = f"{name}: unsteered {_yes_no(r.unsteered)}, steered {_yes_no(r.steered)}"
        out.setdefault((str(r.vector_id), str(r.eval_example_id)), []).append(text)
    return {k: "; ".join(v) for k, v in out.items()}


def _yes_no(x: Any) -> str:
    """A judge value: 1.0 yes, 0.0 no, missing ``?``."""
    if x is None or x != x:  # None or NaN
        return "?"
    return "yes" if float(x) >= 0.5 else "no"


def _vector_generations(top: TopVectors, vid: str) -> str:
    """The generations table of one vector, or a line saying it has none."""
    gens = top.generations[top.generations["vector_id"] == vid]
    if gens.empty:
        return "<p>no generated text stored for this vector</p>"
    gens = gens.sort_values("eval_example_id").head(N_GEN_EXAMPLES)
    return table(
        ["held-out example", "prompt", "unsteered", "steered", "judge"],
        [
            [
                r.eval_example_id,
                _text(r.prompt_text),
                _generated(r.unsteered_text, r.unsteered_tokens, r.unsteered_stop, r.max_tokens),
                _generated(r.steered_text, r.steered_tokens, r.steered_stop, r.max_tokens),
                top.verdicts.get((vid, str(r.eval_example_id)), ""),
            ]
            for r in gens.itertuples()
        ],
    )


def _text(text: Any) -> Markup:
    """Prompt or model text, escaped, its line breaks kept."""
    if not isinstance(text, str):
        return Markup('<div class="gen"><i>(prompt not stored)</i></div>')
    shown = esc(text) if text else "<i>(empty)</i>"
    return Markup(f'<div class="gen">{shown}</div>')


def _generated(text: str, tokens: int, stop: str, max_tokens: int) -> Markup:
    """A generated text with its token count and stop reason underneath."""
    why = "eos" if stop == "eos" else f"length (limit {int(max_tokens)})"
    note = f'<div class="gen-stop">{int(tokens)} tokens, {esc(why)}</div>'
    return Markup(_text(text).html + note)
