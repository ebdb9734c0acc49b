"""Benchmark of the result store: write, then read back, N vectors of width D.

Run:  .venv/bin/python bench/store_bench.py            (10,000 x 2304, file:// and moto)
      .venv/bin/python bench/store_bench.py --backends file --n-vectors 2000

For each backend it prints, in seconds:
- write: ``StoreWriter.write_trial`` for every trial (vectors + transfer + trial row);
- read all: open the study and load every vector into one (N, D) float32 matrix;
- one layer: ``Study.layer_matrix(L)`` for one layer;
then the same two reads after ``compact``. The figures are also written as
JSON to ``--out``.

The S3 figures come from a moto server on 127.0.0.1 run as a separate process
(so it does not share this process's GIL). moto keeps objects in Python
memory, so they measure the store's client side plus a slow local server,
not real S3 throughput. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.store import (
    StoreWriter,
    StudyContext,
    TransferRecord,
    TrialRecord,
    VectorRecord,
    compact,
    open_study,
    vector_id,
)
from orchestrator.store.reader import fixed_list_to_numpy
from workers.jobs import VectorResult

N_LAYERS = 26  # Gemma-2-2B: 26 layers, d_model 2304


@dataclass
class Figures:
    backend: str
    write_s: float
    bytes_written: int
    read_all_s: float
    layer_s: float
    layer_rows: int
    compact_s: float
    read_all_compacted_s: float
    layer_compacted_s: float


def make_trials(
    study: str, n_vectors: int, d_model: int, per_trial: int, n_eval: int
) -> list[tuple[TrialRecord, list[VectorRecord], list[TransferRecord]]]:
    """Trials of ``per_trial`` vectors each; trial n steers layer ``1 + n % 25``."""
    rng = np.random.default_rng(0)
    out = []
    for n in range(n_vectors // per_trial):
        layer = 1 + n % (N_LAYERS - 1)
        vecs, rows = [], []
        mats = rng.standard_normal((per_trial, d_model), dtype=np.float32)
        for j in range(per_trial):
            res = VectorResult(
                job_id=f"t{n}-j{j}",
                vector=mats[j],
                layers=(layer,),
                loss_history=[2.0, 1.0, 0.5],
                target_losses=[0.5],
                iterations=2,
                stop_reason="converged",
                final_norm=float(np.linalg.norm(mats[j])),
                seed=j,
                log_base=10.0,
            )
            ex = f"train-{j}"
            vecs.append(VectorRecord(res, example_id=ex, loss_kind="promotion", lr=0.05))
            vid = vector_id(study, n, ex)
            for e in range(n_eval):
                rows.append(TransferRecord(vid, f"eval-{e}", "target_logprob", -1.0, -2.0, True))
        trial = TrialRecord(n, "COMPLETE", {"layer": layer, "lr": 0.05}, values=[0.5])
        out.append((trial, vecs, rows))
    return out


def run_backend(backend: str, root: str, args: argparse.Namespace) -> Figures:
    ctx = StudyContext("bench", "benchhash", "random/gemma-2-2b-shape", args.d_model)
    trials = make_trials(ctx.study, args.n_vectors, args.d_model, args.per_trial, args.n_eval)
    writer = StoreWriter(root, ctx)
    t0 = time.perf_counter()
    written = sum(writer.write_trial(*t).bytes_written for t in trials)
    write_s = time.perf_counter() - t0

    def read_all() -> float:
        t = time.perf_counter()
        st = open_study(root, ctx.study)
        mat = fixed_list_to_numpy(st.vectors.to_table(columns=["vector"])["vector"])
        assert mat.shape == (args.n_vectors, args.d_model)
        return time.perf_counter() - t

    def one_layer() -> tuple[float, int]:
        t = time.perf_counter()
        _ids, mat = open_study(root, ctx.study).layer_matrix(args.layer)
        return time.perf_counter() - t, mat.shape[0]

    read_s = read_all()
    layer_s, rows = one_layer()
    t0 = time.perf_counter()
    compact(root, ctx.study)
    compact_s = time.perf_counter() - t0
    read_c = read_all()
    layer_c, _ = one_layer()
    return Figures(backend, write_s, written, read_s, layer_s, rows, compact_s, read_c, layer_c)


def start_moto_process(port: int) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n-vectors", type=int, default=10_000)
    p.add_argument("--d-model", type=int, default=2304)
    p.add_argument("--per-trial", type=int, default=100, help="vectors per trial (one file each)")
    p.add_argument("--n-eval", type=int, default=10, help="transfer rows per vector")
    p.add_argument("--layer", type=int, default=5, help="layer loaded by layer_matrix")
    p.add_argument("--backends", default="file,s3")
    p.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "store_cpu.json",
        help="write the figures as JSON here",
    )
    args = p.parse_args()

    results = []
    tmp = Path(tempfile.mkdtemp(prefix="store-bench-"))
    try:
        if "file" in args.backends:
            results.append(run_backend("file://", f"file://{tmp}/store", args))
        if "s3" in args.backends:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            os.environ.update(
                AWS_ACCESS_KEY_ID="bench",
                AWS_SECRET_ACCESS_KEY="bench",
                AWS_DEFAULT_REGION="us-east-1",
                AWS_EC2_METADATA_DISABLED="true",
                AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
            )
            proc = start_moto_process(port)
            try:
                import boto3

                boto3.client("s3").create_bucket(Bucket="bench")
                results.append(run_backend("s3 (moto)", "s3://bench/store", args))
            finally:
                proc.terminate()
                proc.wait(10)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n, d = args.n_vectors, args.d_model
    print(f"\n{n} vectors x d_model {d} (float32: {n * d * 4 / 1e6:.1f} MB of vectors), ", end="")
    print(f"{n // args.per_trial} trials of {args.per_trial}, {args.n_eval} transfer rows/vector")
    head = (
        f"{'backend':<11}{'write s':>9}{'MB/s':>7}{'read all s':>12}{'layer s':>9}{'rows':>6}"
        f"{'compact s':>11}{'read all s*':>13}{'layer s*':>10}"
    )
    print(head)
    for f in results:
        print(
            f"{f.backend:<11}{f.write_s:>9.2f}{f.bytes_written / 1e6 / f.write_s:>7.0f}"
            f"{f.read_all_s:>12.2f}{f.layer_s:>9.3f}{f.layer_rows:>6}{f.compact_s:>11.2f}"
            f"{f.read_all_compacted_s:>13.2f}{f.layer_compacted_s:>10.3f}"
        )
    print("* after compact. 'layer' = Study.layer_matrix(layer) into an (n, d) numpy matrix.")
    result = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "vector_mb": n * d * 4 / 1e6,
        "backends": [dataclasses.asdict(f) for f in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
