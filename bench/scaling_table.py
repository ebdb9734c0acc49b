"""The data-scaling figures of docs/benchmarks.md: transfer success against K per
study, and what predicts transfer, read from stores the studies wrote.

Usage (repo root), after running the studies:
    steer-sweep run examples/scaling.yaml name=scaling-refusal store.root=results/scal
    steer-sweep run examples/scaling.yaml name=scaling-sentiment task.builtin=sentiment \
        store.root=results/scal
    python bench/scaling_table.py results/scal scaling-refusal scaling-sentiment \
        [--predict ROOT:STUDY ...]

Prints a markdown table (median and interquartile range of transfer success,
and the mean target log-probability gain, per K) and, per study given to
--predict, the Spearman correlations and the cross-validated ROC-AUC of
``orchestrator.report.predictors``; writes bench/results/scaling_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from orchestrator.report import load_report_data  # noqa: E402
from orchestrator.report import predictors as P  # noqa: E402
from orchestrator.report.data import scaling_frame  # noqa: E402
from orchestrator.store import open_study  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("studies", nargs="+")
    ap.add_argument("--predict", nargs="*", default=[], help="ROOT:STUDY for the predictor")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "scaling_cpu.json")
    args = ap.parse_args()
    out: dict = {"scaling": {}, "predictors": {}}
    print("| study | layer | K | vectors | transfer success median (IQR) | log-prob gain, mean |")
    print("|---|---|---|---|---|---|")
    for name in args.studies:
        data = load_report_data(open_study(args.root, name), args.root)
        v = data.one_shot
        table = scaling_frame(v)
        gain = v.groupby("shots")["logprob_gain"].mean()
        out["scaling"][name] = table.assign(logprob_gain_mean=table["shots"].map(gain)).to_dict(
            "records"
        )
        for r in table.itertuples():
            print(f"| {name} | {r.layer} | {r.shots} | {r.n_vectors} | {r.median:.3f} ({r.q25:.3f}-{r.q75:.3f})"
                  f" | {gain[r.shots]:+.2f} |")  # fmt: skip
    for spec in [*(f"{args.root}:{s}" for s in args.studies), *args.predict]:
        root, name = spec.rsplit(":", 1)
        st = open_study(root, name)
        sig = P.signals(st, load_report_data(st, root))
        corr = P.correlations(sig)
        pred = P.cross_validated_auc(sig)
        out["predictors"][name] = {
            "n": pred.n, "auc": pred.auc, "why": pred.why, "outcome": pred.outcome,
            "features": list(pred.features),
            "spearman": dict(zip(corr["signal"], corr["spearman"], strict=True)),
            "spearman_gain": dict(zip(corr["signal"], corr["spearman_gain"], strict=True)),
        }  # fmt: skip
        for col in ("spearman", "spearman_gain"):
            rho = ", ".join(f"{s} {r:+.2f}" for s, r in zip(corr["signal"], corr[col],
                                                            strict=True) if r == r)  # fmt: skip
            print(f"{name} {col}: {rho or 'none (constant)'}")
        auc = f"{pred.auc:.3f}" if pred.auc is not None else f"none ({pred.why})"
        print(f"{name}: {pred.n} vectors, ROC-AUC {auc} (outcome {pred.outcome})")
    args.out.write_text(json.dumps(out, indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
