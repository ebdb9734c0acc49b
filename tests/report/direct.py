"""The report's numbers recomputed straight from a store's Parquet files with
pandas, for the tests to compare the report against."""

from __future__ import annotations

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
    """Ids of the ``n`` best one-shot vectors: by success, then log-prob gain."""
    v = direct_vectors(root, study)
    v = v[v["loss_kind"] != "caa"].sort_values(["success", "gain"], ascending=False)
    return [str(x) for x in v["vector_id"].head(n)]
