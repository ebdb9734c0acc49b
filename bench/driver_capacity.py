"""Driver capacity: can one driver keep many actors busy?

Usage: python bench/driver_capacity.py [--trials 2000] [--actors 16] [--seconds 0.5]
       [--ask-ahead N] [--stale-ms T] [--group-trials N] [--group-ms T]
       [--store local|moto] [--out bench/results/X.json]

The 64-worker run of docs/benchmarks.md ("Driver at scale"): ``--trials 10000
--actors 64 --seconds 0.2`` (64 workers that could absorb 320 trials/s).

Fake workers (threads, no model) take ``--seconds`` per vector (one vector per
trial); the real driver runs TPE (constant liar) ask/tell, the scheduler and
the local Parquet store, exactly as ``steer-sweep run`` does.

Idle share: every actor records when each of its batches started and ended.
From the first batch of the study to the last batch handed out (after that
there is nothing left to give), the share of actor time without a batch is
time an actor waited on the driver. Also printed: the share over the whole
run (setup and the tail included), and the driver's ask and tell latency
(mean, and mean over the last 100).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "orchestrator"))

from sweep_helpers import FakeWorker, tiny_config  # noqa: E402

from orchestrator.run.pools import local_batch_pool  # noqa: E402
from orchestrator.run.preflight import prepare  # noqa: E402
from orchestrator.run.runner import run_study  # noqa: E402


class TimedWorker(FakeWorker):
    def __init__(self, transfer_ids: list[str], seconds: float) -> None:
        super().__init__(transfer_ids, delay=0.0)
        self.seconds = seconds
        self.spans: dict[int, list[tuple[float, float]]] = {}

    def __call__(self, key, assignments):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        time.sleep(self.seconds * len(assignments))
        out = [self.outcome(t) for t in assignments]
        with self.lock:
            self.spans.setdefault(key, []).append((start, time.perf_counter()))
        return out


def idle_share(spans: dict[int, list[tuple[float, float]]], n_actors: int) -> float:
    """Share of actor time without a batch, from the first batch start to the last."""
    starts = [s for v in spans.values() for s, _ in v]
    lo, hi = min(starts), max(starts)
    busy = 0.0
    for v in spans.values():
        busy += sum(max(0.0, min(e, hi) - max(s, lo)) for s, e in v)
    return 1 - busy / (n_actors * (hi - lo))


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _moto_root(tmp: str) -> tuple[str, str, object]:
    """A moto S3 server on 127.0.0.1 with a fresh bucket: ``(root, endpoint, server)``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "store"))
    from factories import FAKE_KEY_ID, FAKE_SECRET, free_port, make_bucket, start_moto

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = start_moto(port)
    os.environ.update(
        AWS_ACCESS_KEY_ID=FAKE_KEY_ID, AWS_SECRET_ACCESS_KEY=FAKE_SECRET,
        AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint,
        AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=f"{tmp}/none",
        AWS_SHARED_CREDENTIALS_FILE=f"{tmp}/none",
    )  # fmt: skip
    _, bucket = make_bucket(endpoint)
    return f"s3://{bucket}/capacity", endpoint, server


def resume_figures(cfg, plan, args) -> dict:  # type: ignore[no-untyped-def]
    """Resume the finished study with ``--resume-extra`` more trials: seconds
    from ``run_study`` to the first new assignment handed to a worker (the
    store read once, Optuna rebuilt from it), and to the end."""
    from orchestrator.study.config import parse_config

    more = parse_config({**cfg.model_dump(), "n_trials": cfg.n_trials + args.resume_extra})
    worker = TimedWorker([e.id for e in plan.transfer], args.seconds)
    pool = local_batch_pool(worker, args.actors)
    started = time.perf_counter()
    summary = run_study(more, pool=pool, show_progress=False, extend=True)
    wall = time.perf_counter() - started
    pool.shutdown()
    first = min(s for v in worker.spans.values() for s, _ in v) - started
    print(f"resume of {summary.resumed} stored trials: first new dispatch after {first:.2f} s, "
          f"{args.resume_extra} more trials done in {wall:.1f} s")  # fmt: skip
    return {"resumed": summary.resumed, "first_dispatch_s": first, "wall_s": wall,
            "told": summary.told}  # fmt: skip


def count_objects(root: str, study: str) -> dict[str, int]:
    from orchestrator.store import open_study

    st = open_study(root, study)
    return {t: len(st.files(t)) for t in ("trials", "vectors", "transfer", "generations")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--actors", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--ask-ahead", type=int, default=1, help="sampler.ask_ahead (1: exact)")
    parser.add_argument("--stale-ms", type=float, default=1000.0, help="sampler.max_stale_ms")
    parser.add_argument("--max-bad", type=int, default=256, help="sampler.max_bad_trials")
    parser.add_argument("--group-trials", type=int, default=1, help="store.group_trials")
    parser.add_argument("--group-ms", type=float, default=200.0, help="store.group_ms")
    parser.add_argument("--store", choices=["local", "moto"], default="local")
    parser.add_argument("--window", type=int, default=1000, help="trials in the tail figure")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument(
        "--resume-extra", type=int, default=0,
        help="then resume the stored study with this many more trials: seconds to the first "
        "new dispatch",
    )  # fmt: skip
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root, endpoint, server = tmp, None, None
        if args.store == "moto":
            root, endpoint, server = _moto_root(tmp)
        cfg = tiny_config(
            root,
            name="capacity",
            n_trials=args.trials,
            vectors_per_trial=1,
            model={"name": "tiny-random-llama", "max_batch_jobs": 1},
            search={
                "layer": {"low": 0, "high": 3},
                "norm": {"low": 1.0, "high": 30.0, "log": True},
                "lr": {"low": 0.01, "high": 1.0, "log": True},
                "max_iters": 2,
            },
            sampler={"name": "tpe", "seed": 0, "n_startup_trials": 10,
                     "ask_ahead": args.ask_ahead, "max_stale_ms": args.stale_ms,
                     "max_bad_trials": args.max_bad},
            store={"root": root, "endpoint_url": endpoint, "group_trials": args.group_trials,
                   "group_ms": args.group_ms},
            ray={"address": "local", "num_cpus": 2},
        )  # fmt: skip
        plan = prepare(cfg)
        worker = TimedWorker([e.id for e in plan.transfer], args.seconds)
        pool = local_batch_pool(worker, args.actors)
        started, cpu0 = time.perf_counter(), time.process_time()
        t_mono = time.monotonic()
        summary = run_study(cfg, pool=pool, show_progress=False)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
        pool.shutdown()
        objects = count_objects(root, cfg.name)
        resume = resume_figures(cfg, plan, args) if args.resume_extra else None
        if server is not None:
            server.stop()  # type: ignore[attr-defined]
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    busy = sum(e - s for v in worker.spans.values() for s, e in v)
    ideal = args.trials * args.seconds / args.actors
    t, lat = summary.seconds, summary.latency_ms
    told = summary.tell_times
    first_dispatch = min(s for v in worker.spans.values() for s, _ in v)
    rate = len(told) / (told[-1] - t_mono) if told else 0.0
    w = min(args.window, len(told) - 1)
    tail = w / (told[-1] - told[-1 - w]) if w > 0 else 0.0
    idle = idle_share(worker.spans, args.actors)
    # trials/s in each successive window of 1,000 tells
    marks = [t_mono, *told[999::1000]]
    windows = [1000 / (b - a) for a, b in zip(marks, marks[1:], strict=False)]
    print(f"{args.trials} TPE trials (ask_ahead {args.ask_ahead}, group_trials "
          f"{args.group_trials}), {args.actors} fake actors at "
          f"{args.seconds} s/trial, {args.store} store; load average {load_before[0]:.2f}")  # fmt: skip
    print(
        f"wall {wall:.1f} s (ideal {ideal:.1f} s), driver process CPU {cpu:.1f} s; actors idle "
        f"{idle:.1%} while work remained "
        f"({1 - busy / (args.actors * wall):.1%} of the whole run, setup and tail included)"
    )
    # What the fake workers took per trial, measured: above --seconds when
    # their threads wait for the interpreter lock after sleeping.
    worker_s = busy / args.trials
    print(f"workers took {worker_s * 1000:.1f} ms per trial (--seconds {args.seconds}), so "
          f"they could absorb {args.actors / worker_s:.0f} trials/s")  # fmt: skip
    print(f"trials/s: {rate:.1f} over the run, {tail:.1f} over the last {w}; "
          f"ask to dispatch p50 {lat.get('ask_to_dispatch_p50', float('nan')):.1f} ms, "
          f"p99 {lat.get('ask_to_dispatch_p99', float('nan')):.1f} ms")  # fmt: skip
    print("trials/s per 1,000 tells: " + " ".join(f"{x:.0f}" for x in windows))
    print(
        f"ask {lat['ask_mean']:.1f} ms mean, {lat['ask_last100']:.1f} ms over the last 100; "
        f"tell {lat['tell_mean']:.2f} ms mean, {lat['tell_last100']:.2f} ms over the last 100"
    )
    print(
        f"driver totals: ask {t['ask']:.1f} s, tell {t['tell']:.1f} s; store writes "
        f"{t['write']:.1f} s on background threads = {t['write'] / args.trials * 1000:.1f} ms/trial;"
        f" objects {objects}; peak RSS {rss_gib:.2f} GiB"
    )
    if args.out:
        result = {
            "machine": platform.platform(), "cpus": os.cpu_count(),
            "load_before": load_before, "load_after": os.getloadavg(),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "wall_s": wall, "ideal_s": ideal, "driver_cpu_s": cpu,
            "trials_per_s": rate, "trials_per_s_last": tail, "last_window": w,
            "trials_per_s_per_1000": windows,
            "idle_share": idle, "idle_share_whole_run": 1 - busy / (args.actors * wall),
            "worker_s_per_trial": worker_s, "worker_capacity_trials_per_s": args.actors / worker_s,
            "first_dispatch_after_s": first_dispatch - started,
            "latency_ms": lat, "seconds": t, "objects": objects, "peak_rss_gib": rss_gib,
            "stored": summary.stored, "lost": summary.lost, "resume": resume,
        }  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=float))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
