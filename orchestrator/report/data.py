"""What a report reads from the store, as pandas frames: the trials, the
ranked vectors of committed trials with their transfer summary, and the
per-cell summary that becomes ``summary.parquet``.

Only the store is read, never a running study: a vector counts once its
trial's row exists (the trial row is the store's commit marker).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.ranking import (
    objectives_of,
    order_vectors,
    stored_trial_order,
    with_trial_values,
    with_vector_values,
)
from orchestrator.store.reader import fixed_list_to_numpy

if TYPE_CHECKING:
    import pandas as pd

    from orchestrator.store import Study

CAA_KIND = "caa"
"""``loss_kind`` of a stored CAA skyline vector (§2.1.3)."""

SUMMARY_KEYS = ["loss_kind", "norm_bound", "shots", "layer"]


@dataclass(frozen=True)
class Objective:
    """One objective of the study, as the report labels it."""

    label: str  # axis label, with its unit
    direction: str  # maximize or minimize


@dataclass(frozen=True)
class Lead:
    """What the lead figures (the heatmap, the per-vector bars) show:
    ``column`` of ``vectors`` (``transfer_success``, or ``vector_objective_0``
    when success is the same for every vector and tells the vectors apart
    no more), its axis ``label``, its colour ``limits`` (None: from the data)
    and ``note``, the sentence that says why the objective is shown."""

    column: str = "transfer_success"
    label: str = "transfer success (probability)"
    limits: tuple[float, float] | None = (0.0, 1.0)
    note: str = ""


def lead_of(vectors: pd.DataFrame, objectives: list[Objective]) -> Lead:
    """Transfer success, unless it is one value for every vector while the
    first objective's per-vector value varies."""
    if vectors.empty or "vector_objective_0" not in vectors:
        return Lead()
    success = vectors["transfer_success"].dropna().unique()
    own = vectors["vector_objective_0"].dropna()
    if len(success) != 1 or own.nunique() < 2:
        return Lead()
    # The objective's label without its reduce ("mean ...", "median ..."): one vector's own.
    label = objectives[0].label.split(" ", 1)[-1]
    note = (
        f"Transfer success is {float(success[0]):.2f} for every vector, so it tells them "
        f"apart no more: this figure shows each vector's own {label} instead (the first "
        "objective's per-vector value, which the ranking uses)."
    )
    return Lead("vector_objective_0", label, None, note)


@dataclass
class ReportData:
    """Everything the figures and tables need.

    ``vectors``: one row per vector of a COMPLETE or PRUNED trial that has
    transfer rows, best first by the one ranking (``orchestrator.ranking``:
    columns ``rank`` from 1, ``trial_rank``, ``front`` and
    ``vector_objective_i``; PRUNED trials' vectors last); ``transfer_success`` is
    the mean success (0..1) over all its held-out rows, ``logprob_gain`` (see
    ``logprob_gain``) the mean target log-probability gain, in units of the log
    base (NaN without ``target_logprob`` rows). ``trials``: one row per
    stored trial. Losses are in units of ``log_base`` (``unit``).
    """

    study: str
    root: str
    config: dict[str, Any] | None
    trials: pd.DataFrame
    vectors: pd.DataFrame
    objectives: list[Objective]
    log_base: float
    notes: list[str] = field(default_factory=list)
    lead: Lead = field(default_factory=Lead)

    @property
    def unit(self) -> str:
        return loss_unit(self.log_base)

    @property
    def one_shot(self) -> pd.DataFrame:
        """The optimized vectors (CAA skyline rows left out)."""
        return self.vectors[self.vectors["loss_kind"] != CAA_KIND]


def loss_unit(log_base: float) -> str:
    """Name of the unit of a log in ``log_base``: 10 hartleys, e nats, 2 bits."""
    if math.isclose(log_base, 10.0):
        return "hartleys"
    if math.isclose(log_base, math.e):
        return "nats"
    if math.isclose(log_base, 2.0):
        return "bits"
    return f"log{log_base:g} units"


def objective_label(obj: dict[str, Any], unit: str) -> str:
    """Axis label of a configured objective, e.g.
    ``mean delta target_logprob (hartleys)``."""
    metric, statistic = str(obj.get("metric", "?")), str(obj.get("statistic", "success"))
    text = f"{obj.get('reduce', 'mean')} {statistic} {metric}"
    if metric == "norm":
        return f"{obj.get('reduce', 'mean')} vector norm (L2)"
    if statistic == "success" or metric.startswith(("choice_flip", "judge")):
        return f"{text} (probability)"
    return f"{text} ({unit})"


def load_report_data(study: Study, root: str) -> ReportData:
    import pandas as pd

    config = study.config()
    trials = study.trials.to_table().to_pandas().drop_duplicates("trial", keep="last")
    trials = trials.sort_values("trial").reset_index(drop=True)
    frame = study.joined_frame()
    notes: list[str] = []
    if not frame.empty:
        uncommitted = int(frame["trial_state"].isna().sum())
        if uncommitted:
            notes.append(f"{uncommitted} vectors of trials without a stored trial row are left out")
        frame = frame[frame["trial_state"].isin(["COMPLETE", "PRUNED"])]
        untested = int(frame["transfer_success"].isna().sum())
        if untested:
            notes.append(f"{untested} vectors without transfer rows are left out")
        frame = frame[frame["transfer_success"].notna()]
        if "screened" in frame:
            screened = int(frame["screened"].fillna(False).astype(bool).sum())
            if screened:
                size = ((config or {}).get("pruner") or {}).get("slice_size", "the first")
                notes.append(
                    f"{screened} of {len(frame)} vectors were screened (pruner transfer_screen): "
                    f"their transfer figures come from their first {size} held-out examples only"
                )

    log_base = float(frame["log_base"].iloc[0]) if not frame.empty else 10.0
    if config and "evaluation" in config:
        log_base = float(config["evaluation"].get("log_base", log_base))
    unit = loss_unit(log_base)
    objs = (config or {}).get("objectives") or [{"metric": "objective", "statistic": "value"}]
    objectives = [
        Objective(objective_label(o, unit), str(o.get("direction", "maximize"))) for o in objs
    ]
    frame = frame.merge(logprob_gain(study), on="vector_id", how="left")
    frame["shots"] = shots_of(frame)
    ranked_by = objectives_of(config)
    frame = with_trial_values(frame, study.completed_trials(), len(ranked_by))
    frame = with_vector_values(study, frame, ranked_by)
    if frame.empty:
        vectors = pd.DataFrame(columns=[*frame.columns, "rank", "trial_rank", "front"])
    else:
        vectors = order_vectors(frame, stored_trial_order(study, ranked_by), ranked_by)
    lead = lead_of(vectors[vectors["loss_kind"] != CAA_KIND], objectives)
    return ReportData(study.name, root, config, trials, vectors, objectives, log_base, notes, lead)


def shots_of(frame: pd.DataFrame) -> list[int]:
    """Training examples per vector (K): the length of ``train_example_ids``;
    1 where a store written before K-shot vectors has no list."""
    if "train_example_ids" not in frame:
        return [1] * len(frame)
    return [1 if ids is None or not len(ids) else len(ids) for ids in frame["train_example_ids"]]


def scaling_frame(vectors: pd.DataFrame) -> pd.DataFrame:
    """Transfer against the number of training examples: one row per (layer,
    shots) with the vector count and the median, 25th and 75th percentile of
    transfer success and of the target log-probability gain (the table behind
    the transfer-vs-K figure; the gain keeps ranking vectors whose success
    saturates at 1)."""
    import pandas as pd

    cols = ["layer", "shots", "n_vectors", "median", "q25", "q75", "gain_median", "gain_q25",
            "gain_q75"]  # fmt: skip
    if vectors.empty:
        return pd.DataFrame(columns=cols)
    g = vectors.groupby(["layer", "shots"])
    s, gain = g["transfer_success"], g["logprob_gain"]
    out = pd.DataFrame(
        {
            "n_vectors": s.size(),
            "median": s.median(),
            "q25": s.quantile(0.25),
            "q75": s.quantile(0.75),
            "gain_median": gain.median(),
            "gain_q25": gain.quantile(0.25),
            "gain_q75": gain.quantile(0.75),
        }
    ).reset_index()
    return out[cols].sort_values(["layer", "shots"]).reset_index(drop=True)


def logprob_gain(study: Study) -> pd.DataFrame:
    """Per vector, the mean over its ``target_logprob:<kind>:<i>`` rows of
    ``steered - unsteered``, sign-flipped for suppress targets: how far the
    vector moved held-out targets the intended way (units of the log base;
    positive is good). Columns ``vector_id``, ``logprob_gain``."""
    import pyarrow as pa

    t = study.transfer.to_table(
        columns=["vector_id", "metric", "steered", "unsteered"],
        filter=pc.starts_with(pc.field("metric"), "target_logprob:"),
    )
    # In Arrow, then grouped: a study's transfer rows as Python strings in
    # pandas would cost gigabytes at 100,000 vectors.
    suppress = pc.starts_with(t["metric"], "target_logprob:suppress")
    moved = pc.subtract(pc.cast(t["steered"], pa.float64()), pc.cast(t["unsteered"], pa.float64()))
    gain = pc.if_else(suppress, pc.negate(moved), moved)
    gain = pc.if_else(pc.is_nan(gain), pa.scalar(None, pa.float64()), gain)  # skipped, as pandas
    per = (
        pa.table({"vector_id": t["vector_id"], "logprob_gain": gain})
        .group_by("vector_id")
        .aggregate([("logprob_gain", "mean")])
    )
    return pa.table(
        {"vector_id": per["vector_id"], "logprob_gain": per["logprob_gain_mean"]}
    ).to_pandas()


def summary_frame(vectors: pd.DataFrame) -> pd.DataFrame:
    """One row per (loss kind, norm bound, shots, layer): vector and trial
    counts, mean / median / 25th and 75th percentile / max transfer success
    (0..1), mean target log-probability gain and mean final training loss
    (both in units of the study's log base), and the mean of the vectors' own
    values of the first objective (``vector_objective_mean``). ``shots`` is K, the training
    examples per vector (1: one-shot). A missing norm bound (unbounded) is NaN."""
    import pandas as pd

    cols = [
        *SUMMARY_KEYS,
        "n_vectors",
        "n_trials",
        "transfer_success_mean",
        "transfer_success_median",
        "transfer_success_q25",
        "transfer_success_q75",
        "transfer_success_max",
        "logprob_gain_mean",
        "final_loss_mean",
        "vector_objective_mean",
    ]
    if vectors.empty:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in cols}).astype(
            {
                "loss_kind": "string",
                "layer": "int32",
                "shots": "int64",
                "n_vectors": "int64",
                "n_trials": "int64",
            }  # fmt: skip
        )
    g = vectors.groupby(SUMMARY_KEYS, dropna=False)
    out = g.agg(
        n_vectors=("vector_id", "size"),
        n_trials=("trial", "nunique"),
        transfer_success_mean=("transfer_success", "mean"),
        transfer_success_median=("transfer_success", "median"),
        transfer_success_max=("transfer_success", "max"),
        logprob_gain_mean=("logprob_gain", "mean"),
        final_loss_mean=("final_loss", "mean"),
        vector_objective_mean=("vector_objective_0", "mean"),
    )
    # Quantiles per group in one pass each (a Python function per group is
    # seconds at 10,000 groups: one per trial when a norm is searched as a range).
    out["transfer_success_q25"] = g["transfer_success"].quantile(0.25)
    out["transfer_success_q75"] = g["transfer_success"].quantile(0.75)
    return out.reset_index()[cols].sort_values(SUMMARY_KEYS).reset_index(drop=True)


# The heatmap draws at most this many norm bounds per loss kind; more (a norm
# searched as a continuous range gives one per trial) are drawn in bins.
MAX_NORM_ROWS = 12
NORM_BINS = 8


def heatmap_cells(
    vectors: pd.DataFrame, summary: pd.DataFrame, log: bool
) -> tuple[pd.DataFrame, str]:
    """The summary the heatmap draws: ``summary`` (``summary_frame(vectors)``)
    when the vectors hold at most ``MAX_NORM_ROWS`` norm bounds; otherwise the same
    summary with the finite norm bounds in ``NORM_BINS`` bins (log-spaced when
    the search's norm range is ``log``), so each cell is computed over exactly
    the vectors in it. ``norm_bound`` then holds the bin's label, bins in
    order; the second value says what was binned, with the edges, for the
    caption (empty when nothing was)."""
    norms = vectors["norm_bound"].dropna().unique() if not vectors.empty else []
    if len(norms) <= MAX_NORM_ROWS:
        return summary, ""
    lo, hi = float(min(norms)), float(max(norms))
    log = log and lo > 0
    edges = np.geomspace(lo, hi, NORM_BINS + 1) if log else np.linspace(lo, hi, NORM_BINS + 1)
    labels = [
        f"[{edges[i]:.3g}, {edges[i + 1]:.3g}{']' if i == NORM_BINS - 1 else ')'}"
        for i in range(NORM_BINS)
    ]
    idx = np.clip(np.searchsorted(edges, vectors["norm_bound"], side="right") - 1, 0, NORM_BINS - 1)
    finite = vectors["norm_bound"].notna().to_numpy()
    binned = vectors.assign(norm_bound=np.where(finite, np.array(labels, dtype=object)[idx], None))
    cells = summary_frame(binned)
    order = cells["norm_bound"].map({label: i for i, label in enumerate(labels)})
    cells = (
        cells.assign(_bin=order.fillna(NORM_BINS))
        .sort_values(["loss_kind", "_bin", "shots", "layer"])
        .drop(columns="_bin")
        .reset_index(drop=True)
    )
    spacing = "log-spaced" if log else "evenly spaced"
    note = (
        f"The study searched {len(norms)} distinct norm bounds; they are drawn in {NORM_BINS} "
        f"{spacing} bins with edges {', '.join(f'{e:.3g}' for e in edges)} (each cell over "
        "every vector in it); summary.parquet and the table below keep every value."
    )
    return cells, note


def read_vectors(study: Study, ids: list[str]) -> tuple[list[str], np.ndarray]:
    """The stored vectors of ``ids``, in that order: ids and ``(n, d_model)`` float32."""
    if not ids:
        return [], np.zeros((0, 0), np.float32)
    t = study.vectors.to_table(
        columns=["vector_id", "vector"], filter=pc.field("vector_id").isin(ids)
    )
    got = {v: i for i, v in enumerate(t["vector_id"].to_pylist())}
    matrix = fixed_list_to_numpy(t["vector"])
    order = [v for v in ids if v in got]
    return order, matrix[[got[v] for v in order]] if order else matrix[:0]


def read_loss_histories(study: Study, ids: list[str]) -> dict[str, list[float]]:
    """``loss_history`` (units of the log base, one value per optimizer step) of ``ids``."""
    if not ids:
        return {}
    t = study.vectors.to_table(
        columns=["vector_id", "loss_history"], filter=pc.field("vector_id").isin(ids)
    )
    return {
        r["vector_id"]: [float("nan") if x is None else float(x) for x in r["loss_history"] or []]
        for r in t.to_pylist()
    }


def transfer_rows(study: Study, ids: Sequence[str]) -> pd.DataFrame:
    """Every transfer row of the vectors ``ids``, joined to its held-out
    example's prompt and targets (``prompt_text``, ``target_text``)."""
    t = study.transfer.to_table(filter=vector_id_in(ids)).to_pandas()
    return t.merge(example_texts(study), on="eval_example_id", how="left")


def generation_rows(study: Study, ids: Sequence[str]) -> pd.DataFrame:
    """The stored generations of the vectors ``ids`` (one row per vector and
    held-out example, the last written kept), joined to the example's prompt
    (``prompt_text``); empty for a study that kept no text."""
    t = study.generations.to_table(filter=vector_id_in(ids)).to_pandas()
    t = t.drop_duplicates(["vector_id", "eval_example_id"], keep="last")
    return t.merge(example_texts(study), on="eval_example_id", how="left")


def vector_id_in(ids: Sequence[str]) -> pc.Expression:
    """A dataset filter: ``vector_id`` is one of ``ids`` (typed, so an empty
    list works too)."""
    return pc.field("vector_id").isin(pa.array(list(ids), pa.string()))


def has_generations(study: Study) -> bool:
    """Whether the study stored any generated text (a study written before the
    ``generations`` table existed has none)."""
    return bool(study.generations.count_rows())


def example_texts(study: Study) -> pd.DataFrame:
    """Per example (column ``eval_example_id``), its prompt as shown
    (``prompt_text``: the last user message of a chat) and its targets
    (``target_text``)."""
    ex = study.examples.to_table(columns=["example_id", "prompt", "chat", "targets"]).to_pandas()
    ex = ex.drop_duplicates("example_id", keep="last")
    ex["prompt_text"] = [_prompt_text(p, c) for p, c in zip(ex["prompt"], ex["chat"], strict=True)]
    ex["target_text"] = [
        "; ".join(f"{t['kind']}: {t['text']}" for t in ts) if ts is not None else ""
        for ts in ex["targets"]
    ]
    ex = ex.rename(columns={"example_id": "eval_example_id"})
    return ex[["eval_example_id", "prompt_text", "target_text"]]


def _prompt_text(prompt: str, chat: Any) -> str:
    """The last user message of a chat prompt, else the raw prompt."""
    if chat is not None and len(chat):
        users = [m["content"] for m in chat if m["role"] == "user"]
        return str(users[-1] if users else chat[-1]["content"])
    try:
        msgs = json.loads(prompt)
    except ValueError:
        return prompt
    if isinstance(msgs, list) and msgs and isinstance(msgs[-1], list | tuple):
        return str(msgs[-1][-1])
    return prompt
