"""The report's numbers recomputed straight from a store's Parquet files with
pandas, for the tests to compare the report against."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def raw_table(root: Path, table: str, study: str) -> pd.DataFrame:
    """Every row of one table of a study, read file by file."""
    files = sorted((root / table / f"study={study}").glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def direct_vectors(root: Path, study: str) -> pd.DataFrame:
    """Committed vectors with success and log-prob gain, from the raw files."""
    trials = raw_table(root, "trials", study)[["trial", "state"]]
    vec = raw_table(root, "vectors", study).drop(columns=["vector"])
    tr = raw_table(root, "transfer", study)
    success = tr.groupby("vector_id")["success"].mean()
    lp = tr[tr["metric"].str.startswith("target_logprob:")]
    delta = lp["steered"] - lp["unsteered"]
    lp = lp.assign(gain=np.where(lp["metric"].str.contains(":suppress:"), -delta, delta))
    gain = lp.groupby("vector_id")["gain"].mean()
    v = vec.merge(trials[trials["state"].isin(["COMPLETE", "PRUNED"])], on="trial")
    shots = [len(ids) for ids in v["train_example_ids"]]
    return v.assign(success=v["vector_id"].map(success), gain=v["vector_id"].map(gain), shots=shots)


def direct_top(root: Path, study: str, n: int) -> list[str]:
    """Ids of the ``n`` best one-shot vectors of a one-objective study, by the
    ranking's rule written out again: COMPLETE trials by value in the
    objective's direction, ties to the lower number, then PRUNED trials by
    number; inside a trial, by the vector's own value of the objective (its
    statistic's mean over its rows of the metric), then the lower final
    loss, then id."""
    config = json.loads((root / "_studies" / study / "config.json").read_text())
    obj = {"metric": "target_logprob", "statistic": "success", "direction": "maximize"}
    obj |= (config.get("objectives") or [{}])[0]
    sign = 1.0 if obj["direction"] == "maximize" else -1.0
    trials = raw_table(root, "trials", study)
    tr = raw_table(root, "transfer", study)
    fam = obj["metric"]
    rows = tr[tr["metric"].str.startswith(fam + ":") | (tr["metric"] == fam)]
    stat = {
        "success": rows["success"].astype(float),
        "steered": rows["steered"],
        "delta": rows["steered"] - rows["unsteered"],
    }[obj["statistic"]]
    own = stat.groupby(rows["vector_id"]).mean()
    complete = trials[trials["state"] == "COMPLETE"]
    pairs = zip(complete["value"], complete["trial"], strict=True)
    ranked = sorted(pairs, key=lambda p: (-sign * p[0], p[1]))
    pruned = sorted(trials.loc[trials["state"] == "PRUNED", "trial"])
    place = {int(t): i for i, t in enumerate([t for _, t in ranked] + pruned)}
    v = direct_vectors(root, study)
    v = v[v["loss_kind"] != "caa"]
    keys = [
        (place[int(t)], -sign * own.get(vid, np.nan), loss, vid)
        for t, vid, loss in zip(v["trial"], v["vector_id"], v["final_loss"], strict=True)
    ]
    keys.sort(key=lambda k: (k[0], np.inf if np.isnan(k[1]) else k[1], k[2], k[3]))
    return [str(k[3]) for k in keys[:n]]


def direct_groups(root: Path, study: str) -> dict[str, str]:
    """Example id to its group ("ungrouped" without one)."""
    ex = raw_table(root, "examples", study)
    if "example_group" not in ex:
        return dict.fromkeys(ex["example_id"], "ungrouped")
    return {i: (g if isinstance(g, str) and g else "ungrouped") for i, g in
            zip(ex["example_id"], ex["example_group"], strict=True)}  # fmt: skip


def _rows_of(root: Path, study: str, vectors: pd.DataFrame, keep) -> pd.DataFrame:
    tr = raw_table(root, "transfer", study)
    return tr[tr["vector_id"].isin(set(vectors["vector_id"])) & tr["metric"].map(keep)]


def direct_flip_rates(root: Path, study: str) -> pd.DataFrame:
    """Per one-shot vector (index), one column per sign and group (``+benign``):
    the mean of ``success`` over its choice_flip rows of that sign and group."""
    v = direct_vectors(root, study)
    v = v[v["loss_kind"] != "caa"]
    tr = _rows_of(root, study, v, lambda m: m in ("choice_flip:+", "choice_flip:-"))
    groups = direct_groups(root, study)
    col = [m[-1] + groups[e] for m, e in zip(tr["metric"], tr["eval_example_id"], strict=True)]
    flips = tr.assign(col=col, ok=tr["success"].astype(float))
    return flips.groupby(["vector_id", "col"])["ok"].mean().unstack("col")


def direct_judge_rates(root: Path, study: str, vectors: pd.DataFrame) -> pd.DataFrame:
    """Per (vector, judge metric): the fraction of its judge rows with
    steered == 1.0 (``s``) and with unsteered == 1.0 (``u``)."""
    tr = _rows_of(root, study, vectors, lambda m: m.startswith("judge:"))
    tr = tr.assign(s=(tr["steered"] == 1.0) * 1.0, u=(tr["unsteered"] == 1.0) * 1.0)
    return tr.groupby(["vector_id", "metric"])[["s", "u"]].mean().reset_index()


def direct_judge_by_layer(root: Path, study: str) -> pd.DataFrame:
    """Per judge metric and layer over one-shot vectors: vector count, best
    and median steered rate, mean unsteered rate."""
    v = direct_vectors(root, study)
    v = v[v["loss_kind"] != "caa"]
    r = direct_judge_rates(root, study, v).merge(v[["vector_id", "layer"]], on="vector_id")
    rows = []
    for (metric, layer), d in r.groupby(["metric", "layer"]):
        rows.append((metric, layer, len(d), d["s"].max(), float(np.median(d["s"])), d["u"].mean()))
    cols = ["metric", "layer", "n_vectors", "best", "median", "unsteered"]
    return pd.DataFrame(rows, columns=cols)


def direct_retraction(root: Path, study: str) -> pd.DataFrame:
    """Per loss kind and layer over every committed vector (CAA included):
    vector count, mean per-vector judge rates, mean per-vector mean surprisal."""
    v = direct_vectors(root, study)
    j = direct_judge_rates(root, study, v)
    s = _rows_of(root, study, v, lambda m: m == "surprisal")
    per_v = s.groupby("vector_id")[["steered", "unsteered"]].agg(np.nanmean)
    per_v.columns = ["surprisal steered", "surprisal unsteered"]
    for metric, d in j.groupby("metric"):
        per_v = per_v.join(
            d.set_index("vector_id")[["s", "u"]].set_axis(
                [f"{metric} steered", f"{metric} unsteered"], axis=1
            ), how="outer",
        )  # fmt: skip
    per_v = per_v.join(v.set_index("vector_id")[["loss_kind", "layer"]], how="inner")
    g = per_v.groupby(["loss_kind", "layer"])
    out = g.mean().join(g.size().rename("n_vectors")).reset_index()
    return out
