"""Load and soak benchmark of the driver and the store (not a test).

Load:  .venv/bin/python bench/load_study.py --trials 5000
Soak:  .venv/bin/python bench/load_study.py --trials 1500 --delay 0.4 --sample-s 30

The real driver (Optuna ask/tell, the scheduler, the Parquet store) runs a
study on a local Ray cluster whose actors are fake workers: each returns a
plausible outcome (a random vector, transfer rows) after ``--delay`` seconds
per vector, with no model. The store is S3 on a moto server run as a separate
process on 127.0.0.1 (so its work does not share this process's GIL; moto
keeps objects in Python memory, so it is slower than real S3).

Prints trials completed, wall time, the driver's resident memory (peak, and
sampled every ``--sample-s`` seconds: a soak's growth), the store's object
count before and after ``compact``, and ``compact``'s wall time; the same figures
as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests" / "orchestrator"), str(REPO / "tests")]

from store.factories import free_port  # noqa: E402
from store_bench import start_moto_process  # noqa: E402
from sweep_helpers import FakeWorker, tiny_config  # noqa: E402

from orchestrator.run.pools import Done, WorkerLost  # noqa: E402
from orchestrator.run.preflight import prepare  # noqa: E402
from orchestrator.run.runner import run_study  # noqa: E402
from orchestrator.store import compact, open_study  # noqa: E402
from workers.service.protocol import Assignment, BatchWorker, Drained, VectorOutcome  # noqa: E402  # noqa: E402


class FakeActor:
    """A Ray actor standing in for ``SteeringWorker``: no model, fast outcomes,
    the same ``put``/``drain`` contract (one batch at a time)."""

    def __init__(self, transfer_ids: list[str], delay: float) -> None:
        self.worker = FakeWorker(transfer_ids, delay=0.0)
        self.delay = delay
        self.stream = BatchWorker(self._run)

    def _run(self, assignments: list[Assignment]) -> list[VectorOutcome]:
        time.sleep(self.delay * len(assignments))
        return [self.worker.outcome(t) for t in assignments]

    def put(self, assignments: list[Assignment]) -> int:
        return self.stream.put(assignments)

    def drain(self, timeout: float) -> Drained:
        return self.stream.drain(timeout)


class FakeRayPool:
    """The generic pool contract over ``n`` FakeActors (no probes, no restarts)."""

    def __init__(self, transfer_ids: list[str], n: int, delay: float) -> None:
        import ray

        cls = ray.remote(num_cpus=0.5, max_concurrency=4)(FakeActor)
        self.keys = list(range(n))
        self.size = n
        self.actors = [cls.remote(transfer_ids, delay) for _ in self.keys]
        self.refs: dict[Any, tuple[int, str]] = {}
        self.vectors = 0  # vectors returned so far

    def submit(self, key: int, fn: Any, value: Any, tag: str = "") -> None:
        self.refs[fn(self.actors[key], value)] = (key, tag)

    def info(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        return [{"label": f"fake:{k}", "host": "", "pid": 0, "model": "fake", "device": "",
                 "load_s": 0.0} for k in self.keys]  # fmt: skip

    def poll(self, timeout: float) -> list[Done]:
        import ray

        if not self.refs:
            return []
        ready, _ = ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        out: list[Done] = []
        for ref in ready:
            key, tag = self.refs.pop(ref)
            try:
                value = ray.get(ref)
                self.vectors += len(getattr(value, "outcomes", []))
                out.append(Done(key, tag, value))
            except ray.exceptions.RayError as exc:
                out.append(Done(key, tag, WorkerLost(type(exc).__name__)))
        return out

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler(threading.Thread):
    """Samples this process's RSS every ``every`` seconds, with the vectors done
    (one per trial here)."""

    def __init__(self, every: float, done: Any) -> None:
        super().__init__(daemon=True)
        self.every, self.done = every, done
        self.samples: list[tuple[float, int, float]] = []  # (s since start, trials, MB)
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            t, n, mb = time.monotonic() - self.t0, self.done(), rss_mb()
            self.samples.append((t, n, mb))
            print(f"  t={t:6.0f} s  vectors={n:5d}  rss={mb:6.0f} MB", flush=True)


def count_objects(client: Any, bucket: str) -> int:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sum(p.get("KeyCount", 0) for p in pages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=5000)
    parser.add_argument("--actors", type=int, default=4)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per vector")
    parser.add_argument("--sampler", default="tpe", choices=["tpe", "random"])
    parser.add_argument("--num-cpus", type=int, default=2, help="the local Ray cluster's CPUs")
    parser.add_argument("--sample-s", type=float, default=10.0, help="RSS sampling period")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results" / "load_study.json",
        help="write the figures as JSON here",
    )
    args = parser.parse_args()

    import boto3
    import ray

    port = free_port()
    moto = start_moto_process(port)
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
        AWS_EC2_METADATA_DISABLED="true",
    )
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="load")
    root = "s3://load/store"
    try:
        cfg = tiny_config(
            root,
            name="load",
            n_trials=args.trials,
            vectors_per_trial=1,
            model={"name": "tiny-random-llama", "max_batch_jobs": 4, "num_actors": args.actors},
            search={
                "layer": {"low": 0, "high": 3},
                "norm": {"low": 1.0, "high": 30.0, "log": True},
                "lr": {"low": 0.01, "high": 1.0, "log": True},
                "max_iters": 2,
            },
            sampler={"name": args.sampler, "seed": 0, "n_startup_trials": 10},
        )
        plan = prepare(cfg)
        path = os.pathsep.join([str(REPO / "tests" / "orchestrator"), str(REPO)])
        ray.init(
            address="local",
            num_cpus=args.num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": path}},
        )
        pool = FakeRayPool([e.id for e in plan.transfer], args.actors, args.delay)
        sampler = RssSampler(args.sample_s, lambda: pool.vectors)
        rss_start = rss_mb()
        sampler.start()
        started = time.perf_counter()
        summary = run_study(cfg, pool=pool, show_progress=False)
        wall = time.perf_counter() - started
        sampler.stop.set()
        pool.shutdown()
        before = count_objects(client, "load")
        t0 = time.perf_counter()
        report = compact(root, "load")
        compact_s = time.perf_counter() - t0
        after = count_objects(client, "load")
        stored = len(open_study(root, "load").completed_trials())
    finally:
        moto.kill()
        ray.shutdown()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.trials} trials ({args.sampler}), {args.actors} fake Ray actors, "
        f"{args.delay} s/vector, store on moto S3"
    )
    print(f"trials completed: {summary.told} ({summary.states}); in the store: {stored}")
    print(f"wall {wall:.1f} s = {summary.told / wall:.1f} trials/s")
    print("driver seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in summary.seconds.items()))
    print(f"driver RSS: {rss_start:.0f} MB at start, peak {peak:.0f} MB (ru_maxrss)")
    if len(sampler.samples) >= 2:
        (t1, n1, mb1), (t2, n2, mb2) = (
            sampler.samples[len(sampler.samples) // 4],
            sampler.samples[-1],
        )
        print(
            f"RSS growth from t={t1:.0f} s to t={t2:.0f} s: {mb2 - mb1:+.0f} MB over "
            f"{n2 - n1} vectors ({(mb2 - mb1) / max(n2 - n1, 1) * 1000:+.1f} MB per 1000)"
        )
    print(f"store objects: {before} before compact, {after} after ({compact_s:.1f} s; {report})")
    result = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "told": summary.told,
        "states": summary.states,
        "stored": stored,
        "wall_s": wall,
        "trials_per_s": summary.told / wall,
        "seconds": summary.seconds,
        "rss_mb_start": rss_start,
        "rss_mb_peak": peak,
        "rss_samples": sampler.samples,
        "objects_before_compact": before,
        "objects_after_compact": after,
        "compact_s": compact_s,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
