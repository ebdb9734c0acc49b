"""The report's figures, drawn with matplotlib's object API (no pyplot, so
no global state and no display needed).

Each function returns a ``Figure`` or, when the data for it is missing, a
sentence that says what is missing. Figures are saved at ``SIZES_PX`` exactly
(no tight bounding box), so their pixel size is known in advance.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from orchestrator.ranking import trial_order
from orchestrator.report.data import CAA_KIND, Lead, ReportData
from orchestrator.report.history import best_so_far

if TYPE_CHECKING:
    import pandas as pd

DPI = 100
SIZES_PX = {
    "transfer_heatmap": (1100, 820),
    "vector_success": (1100, 700),
    "optuna_history": (1100, 420),
    "param_importance": (1100, 360),
    "pareto_front": (900, 620),
    "loss_curves": (1100, 480),
    "cosine_similarity": (900, 760),
    "caa_skyline": (1100, 460),
    "transfer_vs_shots": (1000, 760),
    "attack_success": (1100, 640),
}
SUCCESS_LABEL = "transfer success (probability)"


def new_figure(name: str) -> Figure:
    w, h = SIZES_PX[name]
    return Figure(figsize=(w / DPI, h / DPI), dpi=DPI, layout="constrained")


def _norm_text(norm: float | str) -> str:
    if isinstance(norm, str):  # a bin of norm bounds (data.heatmap_cells)
        return f"r in {norm}"
    return (
        "r = none"
        if norm is None or (isinstance(norm, float) and math.isnan(norm))
        else f"r = {norm:g}"
    )


def transfer_heatmap(summary: pd.DataFrame, unit: str, lead: Lead | None = None) -> Figure | str:
    """Per layer (columns) for each loss kind and norm bound (rows): the mean
    of the lead metric (transfer success, or the objective's per-vector
    value, see :class:`Lead`) and, below it when stored, mean target
    log-probability gain; each cell shows the mean and its vector count."""
    lead = lead or Lead()
    if summary.empty:
        return "no vectors with transfer results stored"
    rows = summary[["loss_kind", "norm_bound", "shots"]].drop_duplicates().itertuples(index=False)
    row_keys = [(str(k), n, int(s)) for k, n, s in rows]
    several_k = len({s for _, _, s in row_keys}) > 1
    layers = sorted(int(x) for x in summary["layer"].unique())
    shape = (len(row_keys), len(layers))
    success, gain, count = np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape, int)
    row_of = {(k, _key(n), s): i for i, (k, n, s) in enumerate(row_keys)}
    col_of = {x: j for j, x in enumerate(layers)}
    for r in summary.itertuples(index=False):
        i = row_of[(str(r.loss_kind), _key(r.norm_bound), int(r.shots))]
        j = col_of[int(r.layer)]
        success[i, j], gain[i, j], count[i, j] = (
            r.transfer_success_mean
            if lead.column == "transfer_success"
            else r.vector_objective_mean,
            r.logprob_gain_mean,
            r.n_vectors,
        )
    fig = new_figure("transfer_heatmap")
    lo, hi = float(np.nanmin(success)), float(np.nanmax(success))
    limits = lead.limits or (lo, hi if hi > lo else lo + 1e-9)
    title = f"Mean {lead.label.split(' (')[0]}"
    panels = [(success, "viridis", limits, lead.label, title)]
    if np.isfinite(gain).any():
        lim = max(float(np.nanmax(np.abs(gain))), 1e-9)
        panels.append(
            (
                gain,
                "RdBu_r",
                (-lim, lim),
                f"target log-prob gain ({unit})",
                "Mean target log-prob gain (suppress targets negated)",
            )
        )
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (m, cmap, (lo, hi), label, title) in zip(axes, panels, strict=True):
        ax.set_facecolor("#e8e8e8")  # cells without vectors
        im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
        ax.set_xticks(range(len(layers)), [str(x) for x in layers])
        ax.set_yticks(
            range(len(row_keys)),
            [f"{k}, {_norm_text(n)}" + (f", K = {s}" if several_k else "") for k, n, s in row_keys],
        )
        ax.set_xlabel("layer (the vector is added at the input of this block)")
        ax.set_ylabel("loss kind, norm bound r" + (", shots K" if several_k else ""))
        ax.set_title(f"{title} by layer (cell: mean, n = vectors)")
        if m.size <= 300:
            _annotate(ax, m, count, lo, hi, 9 if m.size <= 100 else 7)
        fig.colorbar(im, ax=ax, label=label)
    return fig


def _annotate(ax: Any, m: np.ndarray, count: np.ndarray, lo: float, hi: float, size: int) -> None:
    for (i, j), x in np.ndenumerate(m):
        if count[i, j] and np.isfinite(x):
            pos = (x - lo) / (hi - lo)
            dark = pos < 0.25 or pos > 0.85 if lo < 0 else pos < 0.6
            ax.text(
                j,
                i,
                f"{x:.2f}\nn={count[i, j]}",
                ha="center",
                va="center",
                fontsize=size,
                color="white" if dark else "black",
            )


def _key(norm: object) -> object:
    """A norm bound as a dict key: every missing value (None, NaN) the same."""
    return None if norm is None or (isinstance(norm, float) and math.isnan(norm)) else norm


# The most bars the per-vector figure draws; past it, evenly spaced ranks.
MAX_BARS = 500


def drawn_ranks(n: int) -> np.ndarray:
    """Which of ``n`` vectors in rank order the per-vector figure draws: all of
    them up to ``MAX_BARS``, else ``MAX_BARS`` evenly spaced ranks, the best
    and the worst among them."""
    if n <= MAX_BARS:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, MAX_BARS).round().astype(int))


def vector_success(data: ReportData) -> Figure | str:
    """Fig. 2's shape: one bar per vector in rank order (the one ranking) of
    the lead metric (:class:`Lead`), coloured by training example; hatched
    by loss kind when there are several. A second panel shows the
    log-probability gain."""
    every = data.one_shot
    if every.empty:
        return "no vectors with transfer results stored"
    drawn = drawn_ranks(len(every))
    v = every.iloc[drawn]
    examples = sorted(v["example_id"].astype(str).unique())
    palette = _palette(len(examples))
    colour = {e: palette[i] for i, e in enumerate(examples)}
    colours = [colour[str(e)] for e in v["example_id"]]
    kinds = sorted(v["loss_kind"].astype(str).unique())
    hatches = dict(zip(kinds, ["", "//", "..", "xx", "\\\\"], strict=False))
    panels = [(data.lead.column, data.lead.label)]
    if v["logprob_gain"].notna().any():
        panels.append(("logprob_gain", f"target log-prob gain ({data.unit})"))
    fig = new_figure("vector_success")
    axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True)[:, 0]
    x = drawn
    step = len(every) / len(v)
    for ax, (col, label) in zip(axes, panels, strict=True):
        vals = v[col].to_numpy(float)
        width = 0.9 * step if len(v) < 80 else step
        bars = ax.bar(x, np.nan_to_num(vals), width=width, color=colours)
        if len(kinds) > 1:
            for bar, kind in zip(bars, v["loss_kind"].astype(str), strict=True):
                bar.set_hatch(hatches.get(kind, ""))
        med = float(np.nanmedian(every[col].to_numpy(float)))  # over every vector
        ax.axhline(med, color="black", lw=1, ls="--", label=f"median {med:.2f}")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    if data.lead.limits is not None:
        axes[0].set_ylim(data.lead.limits[0], data.lead.limits[1] * 1.05)
    axes[0].set_xlim(-0.6 * step, len(every) - 1 + 0.6 * step)
    shown = f"{len(every)} vectors" + (f", {len(v)} drawn" if len(v) < len(every) else "")
    axes[-1].set_xlabel(f"vectors in rank order ({shown})")
    axes[0].set_title("Transfer per vector, best first (dashed: median)")
    handles: list[Any] = [axes[0].get_lines()[0]]
    if len(examples) <= 20:
        handles += [Patch(color=colour[e], label=e) for e in examples]
    else:
        axes[0].text(
            0.99,
            0.03,
            f"colour: training example ({len(examples)} examples)",
            transform=axes[0].transAxes,
            ha="right",
            va="bottom",
        )
    if len(kinds) > 1:
        handles += [
            Patch(facecolor="white", edgecolor="black", hatch=hatches[k], label=k) for k in kinds
        ]
    axes[0].legend(
        handles=handles,
        title="training example / loss kind",
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    return fig


def _palette(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](x) for x in np.linspace(0.05, 0.95, n)]


def optuna_history(data: ReportData) -> Figure | str:
    """Objective per trial number with the best-so-far line."""
    t = data.trials
    done = t[(t["state"] == "COMPLETE") & t["value"].notna()] if not t.empty else t
    if done.empty:
        return "no COMPLETE trial with an objective value stored"
    obj = data.objectives[0]
    values = done["value"].to_numpy(float)
    fig = new_figure("optuna_history")
    ax = fig.add_subplot()
    ax.plot(done["trial"], values, "o", color="tab:blue", label="objective of a COMPLETE trial")
    ax.step(
        done["trial"],
        best_so_far(values, obj.direction),
        where="post",
        color="tab:red",
        label=f"best so far ({obj.direction})",
    )
    others = t[t["state"] != "COMPLETE"]
    for state, marker in (("PRUNED", "|"), ("FAIL", "x")):
        s = others[others["state"] == state]
        if not s.empty:
            ax.plot(
                s["trial"],
                np.full(len(s), np.nanmin(values)),
                marker,
                color="grey",
                ms=10,
                label=f"{state} trial (no value; drawn at the lowest value)",
            )
    ax.set_xlabel("trial number")
    ax.set_ylabel(obj.label)
    ax.set_title("Optuna history")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return fig


def param_importance(importances: dict[str, float], message: str) -> Figure | str:
    if not importances:
        return message
    names = list(importances)[::-1]
    fig = new_figure("param_importance")
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names], color="tab:purple")
    ax.set_xlabel("importance for the first objective (PED-ANOVA, normalized to sum to 1)")
    ax.set_ylabel("parameter")
    ax.set_title("Parameter importances")
    return fig


def pareto_front(data: ReportData) -> Figure | str:
    if len(data.objectives) < 2:
        return "single-objective study: no Pareto front"
    t = data.trials
    done = t[(t["state"] == "COMPLETE") & t["values"].notna()]
    directions = [o.direction for o in data.objectives]
    order = trial_order(list(done["trial"]), [list(v) for v in done["values"]], directions)
    if not order.numbers:
        return "no COMPLETE trial with every objective value stored"
    values = {int(n): list(v) for n, v in zip(done["trial"], done["values"], strict=True)}
    pts = np.array([values[n][:2] for n in order.numbers], float)
    front = np.array(order.front)
    o1, o2 = data.objectives[:2]
    fig = new_figure("pareto_front")
    ax = fig.add_subplot()
    ax.scatter(pts[~front, 0], pts[~front, 1], color="tab:blue", alpha=0.6, label="trial")
    f = pts[front][np.argsort(pts[front, 0])]
    ax.plot(f[:, 0], f[:, 1], "o-", color="tab:red", label=f"Pareto front ({len(f)} trials)")
    ax.set_xlabel(f"{o1.label} [{o1.direction}]")
    ax.set_ylabel(f"{o2.label} [{o2.direction}]")
    extra = (
        f" of all {len(data.objectives)} objectives, drawn on the first two"
        if len(data.objectives) > 2
        else ""
    )
    ax.set_title("Pareto front" + extra)
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def loss_curves(data: ReportData, histories: dict[str, list[float]], n: int) -> Figure | str:
    """Training loss per optimizer step of the ``n`` best and ``n`` worst vectors."""
    from matplotlib import colormaps

    v = data.one_shot
    if v.empty or not any(histories.values()):
        return "no vectors with stored loss histories"
    best, worst = v.head(n), v.iloc[max(n, len(v) - n) :]
    fig = new_figure("loss_curves")
    ax = fig.add_subplot()
    for rows, style, cmap in ((best, "-", "Blues"), (worst, "--", "Reds")):
        for i, r in enumerate(rows.itertuples(index=False)):
            h = histories.get(str(r.vector_id))
            if h:
                c = colormaps[cmap](0.9 - 0.45 * i / max(len(rows) - 1, 1))
                ax.plot(range(len(h)), h, style, color=c, lw=2, label=_vec_label(r))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"training loss ({data.unit})")
    ax.set_title(f"Loss curves: {len(best)} best (solid) and {len(worst)} worst (dashed) vectors")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    return fig


def _vec_label(r: Any) -> str:
    return (
        f"#{r.rank} {r.example_id}, layer {r.layer}, {_norm_text(r.norm_bound)}: "
        f"success {r.transfer_success:.2f}"
    )


def cosine_similarity(
    labels: list[str], matrix: np.ndarray, layers: list[int]
) -> tuple[Figure | str, dict[int, tuple[float, int]], float]:
    """Pairwise cosine similarity of ``matrix`` rows ``(n, d_model)`` (at
    ``layers``, one per row); per layer with two or more of them, the median
    over its pairs and their number; and the median over all same-layer
    pairs (NaN without one). Vectors at different layers act on different
    residual streams, so only same-layer pairs enter a median."""
    if len(matrix) < 2:
        return "cosine similarity needs at least two vectors", {}, float("nan")
    unit = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    sim = unit @ unit.T  # (n, n)
    within = _within_layer_medians(sim, layers)
    fig = new_figure("cosine_similarity")
    ax = fig.add_subplot()
    im = ax.imshow(sim, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for (i, j), s in np.ndenumerate(sim):
        ax.text(
            j,
            i,
            f"{s:.2f}",
            ha="center",
            va="center",
            fontsize=8,
            color="white" if abs(s) > 0.6 else "black",
        )
    pooled = _pooled_median(sim, layers)
    tail = f"median within a layer {pooled:.3f}" if within else "no two of them at one layer"
    ax.set_title(f"Cosine similarity of the top {len(labels)} vectors ({tail})")
    fig.colorbar(im, ax=ax, label="cosine similarity (dimensionless)")
    return fig, within, pooled


def _same_layer_pairs(layers: list[int]) -> np.ndarray:
    """``(n, n)`` bool: distinct rows at the same layer, each pair once."""
    lay = np.asarray(layers)
    return (lay[:, None] == lay[None, :]) & np.triu(np.ones((len(lay), len(lay)), bool), 1)


def _within_layer_medians(sim: np.ndarray, layers: list[int]) -> dict[int, tuple[float, int]]:
    """Per layer with two or more rows: the median cosine over its pairs, and how many."""
    pairs = _same_layer_pairs(layers)
    out = {}
    for layer in sorted(set(layers)):
        mine = pairs & (np.asarray(layers) == layer)[:, None]
        if mine.any():
            out[int(layer)] = (float(np.median(sim[mine])), int(mine.sum()))
    return out


def _pooled_median(sim: np.ndarray, layers: list[int]) -> float:
    """The median cosine over every same-layer pair (NaN when there is none)."""
    pairs = _same_layer_pairs(layers)
    return float(np.median(sim[pairs])) if pairs.any() else float("nan")


def caa_skyline(data: ReportData) -> Figure | str:
    """One-shot transfer success per layer against the CAA skyline's."""
    caa = data.vectors[data.vectors["loss_kind"] == CAA_KIND]
    if caa.empty:
        return "no CAA skyline stored"
    one = data.one_shot
    layers = sorted({int(x) for x in caa["layer"]} | {int(x) for x in one["layer"]})
    fig = new_figure("caa_skyline")
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)  # jitter only
    seen: set[str] = set()

    def once(label: str) -> str:
        """The label the first time, then matplotlib's "no legend entry" label."""
        if label in seen:
            return "_nolegend_"
        seen.add(label)
        return label

    for i, layer in enumerate(layers):
        s = one[one["layer"] == layer]["transfer_success"].to_numpy(float)
        if len(s):
            ax.scatter(
                i + rng.uniform(-0.15, 0.15, len(s)),
                s,
                color="grey",
                alpha=0.6,
                s=18,
                label=once("one-shot vector"),
            )
            ax.hlines(np.median(s), i - 0.3, i + 0.3, color="black", label=once("one-shot median"))
        c = caa[caa["layer"] == layer]["transfer_success"].to_numpy(float)
        if len(c):
            ax.scatter(
                np.full(len(c), i),
                c,
                marker="*",
                s=220,
                color="tab:red",
                zorder=3,
                label=once("CAA skyline"),
            )
    ax.set_xticks(range(len(layers)), [str(x) for x in layers])
    ax.set_xlabel("layer")
    ax.set_ylabel(SUCCESS_LABEL)
    ax.set_ylim(-0.03, 1.05)
    ax.set_title("One-shot vectors against the CAA skyline")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def transfer_vs_shots(scaling: pd.DataFrame, unit: str = "hartleys") -> Figure | str:
    """Median transfer success (and the interquartile range as a band) against
    K, the training examples per vector, one line per layer; below it the same
    for the target log-probability gain, where stored."""
    if scaling.empty:
        return "no vectors with transfer results stored"
    ks = sorted(int(k) for k in scaling["shots"].unique())
    if len(ks) < 2:
        return f"every vector was trained on {ks[0]} example(s): no scaling with K to show"
    fig = new_figure("transfer_vs_shots")
    panels = [("", SUCCESS_LABEL, "Transfer success")]
    if scaling["gain_median"].notna().any():
        panels.append(("gain_", f"target log-prob gain ({unit})", "Target log-prob gain"))
    axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True)[:, 0]
    layers = sorted(int(x) for x in scaling["layer"].unique())
    for ax, (pre, label, title) in zip(axes, panels, strict=True):
        for color, layer in zip(_palette(len(layers)), layers, strict=True):
            d = scaling[scaling["layer"] == layer].sort_values("shots")
            ax.fill_between(d["shots"], d[pre + "q25"], d[pre + "q75"], color=color, alpha=0.2,
                            linewidth=0)  # fmt: skip
            ax.plot(d["shots"], d[pre + "median"], marker="o", color=color, label=f"layer {layer}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_ylabel(label)
        ax.set_title(f"{title} against K (line: median; band: 25th-75th percentile)")
        ax.legend(loc="best")
    axes[0].set_ylim(-0.02, 1.02)
    axes[-1].set_xlabel("K: training examples per vector")
    return fig


def attack_success(by_layer: pd.DataFrame) -> Figure | str:
    """§4 Fig. 2's comparison, one panel per judge metric: per layer, the best
    and the median vector's fraction of steered verdicts yes (bars, ``n``:
    vectors) and the unsteered fraction (line); ``by_layer`` is
    ``panels.judge_by_layer``."""
    if by_layer.empty:
        return "not measured in this study: no judge:* rows (no generation was judged)"
    metrics = sorted(str(m) for m in by_layer["metric"].unique())
    layers = sorted(int(x) for x in by_layer["layer"].unique())
    x = np.arange(len(layers))
    fig = new_figure("attack_success")
    axes = fig.subplots(len(metrics), 1, squeeze=False, sharex=True)[:, 0]
    for ax, metric in zip(axes, metrics, strict=True):
        d = by_layer[by_layer["metric"] == metric].set_index("layer").reindex(layers)
        ax.bar(x - 0.2, d["best"], 0.4, color="tab:blue", label="best vector")
        ax.bar(x + 0.2, d["median"], 0.4, color="tab:orange", label="median vector")
        ax.plot(x, d["unsteered"], "k--o", label="unsteered")
        for i, (n, top) in enumerate(zip(d["n_vectors"], d["best"], strict=True)):
            if np.isfinite(n):
                ax.text(i - 0.2, top + 0.02, f"n={int(n)}", ha="center", fontsize=8)
        ax.set_ylim(0, 1.1)
        ax.set_ylabel(f"{metric} yes (probability)", fontsize=9)
        ax.set_title(f"{metric}: steered verdicts yes per layer (bars) against unsteered (line)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(x, [str(layer) for layer in layers])
    axes[-1].set_xlabel("layer")
    return fig
