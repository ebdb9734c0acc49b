"""The numbers of the report's paper-style panels, read from the store's
``transfer`` rows (only the metrics a panel needs, only the report's vectors):

- ``flip_table``: §3 choice-flip rates per example group and sign (Table 1);
- ``judge_by_layer``: §4 judge success per layer, best and median vector
  against the unsteered model (Fig. 2);
- ``retraction_table``: §5 judge rates and base-model surprisal per loss
  kind and layer.

A rate is a fraction (0..1) of held-out examples. A vector's rate counts only
the examples it has rows of that metric for, so a screened vector (fewer
held-out examples) is not counted as failing on the ones it never saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow.compute as pc

from orchestrator.report.data import ReportData, vector_id_in

if TYPE_CHECKING:
    from orchestrator.store import Study

FLIP_PREFIX = "choice_flip:"
SIGNS = ("+", "-")
SIDES = ("steered", "unsteered")
JUDGE_PREFIX = "judge:"
RETRACTION_JUDGE = "judge:lacks_all"
SURPRISAL = "surprisal"
NO_GROUP = "ungrouped"
"""The group of an example without one (of every example of a store written
before schema version 4, which had no ``examples.example_group``)."""
GROUP_COLUMN = "example_group"
YES = 0.5  # a verdict at or above this is a yes; judges store 1.0 (yes) and 0.0 (no)
MEDIAN_ROW = "median"
_KEYS = ["vector_id", "eval_example_id", "metric"]
_FLIP_META = ["rank", "vector_id", "layer", "norm_bound", "n_examples"]


def metric_rows(st: Study, ids: Sequence[str], where: pc.Expression) -> pd.DataFrame:
    """The transfer rows of the vectors ``ids`` whose metric matches ``where``
    (a dataset filter, applied while reading): columns ``vector_id``,
    ``eval_example_id``, ``metric``, ``steered``, ``unsteered``, ``success``;
    the last stored row kept where a (vector, example, metric) repeats."""
    t = st.transfer.to_table(
        columns=[*_KEYS, "steered", "unsteered", "success"], filter=vector_id_in(ids) & where
    ).to_pandas()
    return t.drop_duplicates(_KEYS, keep="last").reset_index(drop=True)


def example_groups(st: Study) -> pd.DataFrame:
    """Per stored example, in stored order: ``eval_example_id`` and its
    ``group`` (``NO_GROUP`` where it has none). The reader gives files written
    before the group column that column too, with nulls."""
    ex = st.examples.to_table(columns=["example_id", GROUP_COLUMN])
    ex_df = ex.to_pandas().drop_duplicates("example_id", keep="last")
    names = [NO_GROUP if pd.isna(g) or str(g) == "" else str(g) for g in ex_df[GROUP_COLUMN]]
    out = ex_df.assign(group=pd.Series(names, index=ex_df.index, dtype=str))
    return out.rename(columns={"example_id": "eval_example_id"})[["eval_example_id", "group"]]


def flip_columns(groups: Sequence[str]) -> list[str]:
    """``+<group>``, ``-<group>`` for each group in turn."""
    return [f"{s}{g}" for g in groups for s in SIGNS]


def vector_flip_rates(st: Study, ids: Sequence[str]) -> tuple[pd.DataFrame, pd.Series]:
    """Per vector with choice_flip rows (index ``vector_id``): ``n_examples``,
    the held-out examples it has choice_flip rows for, and per group and sign
    (``flip_columns``) the fraction of that group's examples, among those with
    a row of that sign, whose answer flipped. Groups come in the order of
    their first example with choice_flip rows in the ``examples`` table.
    Also: the held-out examples with choice_flip rows per group."""
    signs = [FLIP_PREFIX + s for s in SIGNS]
    rows = metric_rows(st, ids, pc.field("metric").isin(signs))
    groups = example_groups(st)
    rows = rows.merge(groups, on="eval_example_id", how="left")
    rows["group"] = rows["group"].fillna(NO_GROUP)  # an example missing from the table
    seen = groups.loc[groups["eval_example_id"].isin(set(rows["eval_example_id"])), "group"]
    present = list(dict.fromkeys([*seen, *rows["group"]]))  # then examples not in the table
    rows["column"] = rows["metric"].str.removeprefix(FLIP_PREFIX) + rows["group"]
    rows["flipped"] = rows["success"].astype("float64")
    wide = rows.pivot_table(index="vector_id", columns="column", values="flipped", aggfunc="mean")
    wide = wide.reindex(columns=flip_columns(present))
    wide.insert(0, "n_examples", rows.groupby("vector_id")["eval_example_id"].nunique())
    per_group = rows.groupby("group")["eval_example_id"].nunique().reindex(present)
    return wide, per_group


@dataclass
class FlipTable:
    """§3 Table 1. ``frame``: the report's top vectors (rank order) with
    ``rank``, ``vector_id``, ``layer``, ``norm_bound``, ``n_examples`` and the
    ``flip_columns`` rates of ``vector_flip_rates``, then a row ``vector_id =
    MEDIAN_ROW`` holding each rate column's median over the ``n_vectors``
    one-shot vectors with choice_flip rows; empty without such rows.
    ``per_group``: the held-out examples with choice_flip rows per group."""

    frame: pd.DataFrame
    per_group: pd.Series
    n_vectors: int


def flip_table(st: Study, data: ReportData, top: int) -> FlipTable:
    """``FlipTable`` of the ``top`` best one-shot vectors."""
    v = data.one_shot
    rates, per_group = vector_flip_rates(st, [str(x) for x in v["vector_id"]])
    if rates.empty:
        return FlipTable(pd.DataFrame(columns=_FLIP_META), per_group, 0)
    cols = [c for c in rates.columns if c != "n_examples"]
    best = v.head(top)[_FLIP_META[:4]].merge(
        rates, left_on="vector_id", right_index=True, how="left"
    )
    median = pd.DataFrame([{"vector_id": MEDIAN_ROW, **rates[cols].median().to_dict()}])
    return FlipTable(pd.concat([best, median], ignore_index=True), per_group, len(rates))


def vector_judge_rates(st: Study, ids: Sequence[str]) -> pd.DataFrame:
    """One row per (``vector_id``, ``metric``) of every ``judge:*`` metric:
    ``n_examples``, the held-out examples with a verdict, and ``steered`` /
    ``unsteered``, the fraction of them whose steered / unsteered greedy
    generation got a yes."""
    rows = metric_rows(st, ids, pc.starts_with(pc.field("metric"), pattern=JUDGE_PREFIX))
    rows = rows.assign(steered=_yes(rows["steered"]), unsteered=_yes(rows["unsteered"]))
    out = rows.groupby(["vector_id", "metric"], as_index=False).agg(
        n_examples=("steered", "count"), steered=("steered", "mean"),
        unsteered=("unsteered", "mean"),
    )  # fmt: skip
    return out


def _yes(values: pd.Series) -> pd.Series:
    """1.0 for a yes, 0.0 for a no, NaN for no verdict."""
    x = values.astype("float64")
    return (x >= YES).astype("float64").where(x.notna())


def judge_by_layer(st: Study, data: ReportData) -> pd.DataFrame:
    """§4 Fig. 2: one row per (``metric``, ``layer``) over the one-shot
    vectors with rows of that judge: ``n_vectors``, ``best`` and ``median``
    of their steered rates (``vector_judge_rates``), and ``unsteered``, the
    mean over the same vectors of their unsteered rates."""
    v = data.one_shot[["vector_id", "layer"]]
    r = vector_judge_rates(st, [str(x) for x in v["vector_id"]]).merge(v, on="vector_id")
    out = r.groupby(["metric", "layer"], as_index=False).agg(
        n_vectors=("vector_id", "size"), best=("steered", "max"), median=("steered", "median"),
        unsteered=("unsteered", "mean"),
    )  # fmt: skip
    return out.sort_values(["metric", "layer"]).reset_index(drop=True)


def vector_surprisal(st: Study, ids: Sequence[str]) -> pd.DataFrame:
    """Per vector with ``surprisal`` rows: ``steered`` and ``unsteered``, the
    mean base-model surprisal per token of its steered and unsteered
    generations (NaN scores skipped), in units of the study's log base."""
    rows = metric_rows(st, ids, pc.field("metric") == SURPRISAL)
    return rows.groupby("vector_id", as_index=False)[["steered", "unsteered"]].mean()


def shows_retraction(metrics: Sequence[str]) -> bool:
    """Whether the §5 panel is shown: among ``metrics`` is surprisal or the
    ``judge:lacks_all`` (retraction strings) judge."""
    return SURPRISAL in metrics or RETRACTION_JUDGE in metrics


def vector_retraction(st: Study, ids: Sequence[str]) -> pd.DataFrame:
    """Per vector with judge or surprisal rows (index ``vector_id``): for each
    judge metric M (sorted), ``M steered`` and ``M unsteered`` (the rates of
    ``vector_judge_rates``), then ``surprisal steered`` and ``surprisal
    unsteered`` (``vector_surprisal``) where surprisal was measured."""
    judges = vector_judge_rates(st, ids)
    parts = [
        d.set_index("vector_id")[list(SIDES)].add_prefix(f"{metric} ")
        for metric, d in judges.groupby("metric")
    ]
    surprisal = vector_surprisal(st, ids)
    if not surprisal.empty:
        parts.append(surprisal.set_index("vector_id").add_prefix(f"{SURPRISAL} "))
    return pd.concat(parts, axis=1) if parts else pd.DataFrame()


def retraction_table(st: Study, data: ReportData) -> pd.DataFrame:
    """§5: one row per (``loss_kind``, ``layer``) over the vectors (CAA
    included, as its own loss kind) with judge or surprisal rows:
    ``n_vectors``, then the means over those vectors of the columns of
    ``vector_retraction``. Empty unless ``shows_retraction``."""
    v = data.vectors[["vector_id", "loss_kind", "layer"]]
    per = vector_retraction(st, [str(x) for x in v["vector_id"]])
    if not shows_retraction([c.rsplit(" ", 1)[0] for c in per.columns]):
        return pd.DataFrame(columns=["loss_kind", "layer", "n_vectors"])
    values = list(per.columns)
    per = v.merge(per, left_on="vector_id", right_index=True)
    out = per.groupby(["loss_kind", "layer"], as_index=False).agg(
        n_vectors=("vector_id", "size"), **{c: (c, "mean") for c in values}
    )
    return out.sort_values(["loss_kind", "layer"]).reset_index(drop=True)
