"""The implementations of the ``steer-sweep`` subcommands (parsing is in cli.py)."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("steer_sweep")

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(ValueError):
    """An error in what the user typed or configured."""


def _root(args: argparse.Namespace) -> tuple[str, str | None]:
    """The store root and endpoint: from --root, else from the study YAML."""
    if getattr(args, "root", None):
        return args.root, getattr(args, "endpoint_url", None)
    if getattr(args, "config", None):
        from orchestrator.study.config import load_config

        cfg = load_config(args.config)
        return cfg.store.root, cfg.store.endpoint_url
    raise BadInput("give --root (a store path or s3://bucket/prefix) or --config STUDY.yaml")


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.run.runner import run_study
    from orchestrator.study.config import load_config

    cfg = load_config(args.config, args.overrides)
    summary = run_study(
        cfg, show_progress=not args.quiet, extend=args.extend, force_config=args.force_config
    )
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(summary.states.items()))
    print(
        f"study {summary.study}: {summary.resumed + summary.told}/{summary.n_trials} trials "
        f"({states}); {summary.told} run now, {summary.resumed} from an earlier run"
    )
    for best in summary.best[:3]:
        print(f"best trial {best['store_trial']}: values {best['values']} params {best['params']}")
    t = summary.seconds
    print(
        "time (s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in t.items())
        + "  [optimize/evaluate: actor seconds; wait: driver waiting on actors]"
    )
    print(
        f"results: {summary.store}\n  steer-sweep status {cfg.name} --root {cfg.store.root}"
        f"\n  steer-sweep best {cfg.name} --root {cfg.store.root}"
        f"\n  steer-sweep report {cfg.name} --root {cfg.store.root}"
    )
    failed = summary.states.get("FAIL", 0)
    return EXIT_OK if failed < summary.n_trials else EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    from orchestrator.store import open_study

    root, endpoint = _root(args)
    study = open_study(root, args.study, endpoint_url=endpoint)
    trials = study.completed_trials()
    if not trials:
        print(f"study {args.study} in {root}: no finished trials yet")
        return EXIT_OK
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    cfg = study.config() or {}
    target = cfg.get("n_trials", "?")
    n_vectors = study.vectors.count_rows()
    print(
        f"study {args.study} in {root}: {len(trials)}/{target} trials "
        f"({', '.join(f'{n} {s.lower()}' for s, n in sorted(counts.items()))}), {n_vectors} vectors"
    )
    for t in trials[-args.last :]:
        value = "" if not t.values else " ".join(f"{v:.4g}" for v in t.values)
        print(
            f"  trial {t.number:4d} {t.state:9s} {value:>10s}  {json.dumps(t.params, sort_keys=True)}"
            + (f"  error: {t.error}" if t.error else "")
        )
    return EXIT_OK


def cmd_best(args: argparse.Namespace) -> int:
    from orchestrator.store import open_study

    root, endpoint = _root(args)
    study = open_study(root, args.study, endpoint_url=endpoint)
    frame = study.joined_frame()
    if frame.empty:
        print(f"study {args.study} in {root}: no vectors yet")
        return EXIT_OK
    frame = frame[frame["trial_state"] == "COMPLETE"]
    top = frame.sort_values(["trial_value", "transfer_success"], ascending=False).head(args.top)
    cols = [
        c
        for c in [
            "trial",
            "vector_id",
            "example_id",
            "layer",
            "norm_bound",
            "loss_kind",
            "lr",
            "final_loss",
            "final_norm",
            "trial_value",
            "transfer_success",
        ]
        if c in top
    ]
    with _pandas_wide():
        print(top[cols].to_string(index=False))
    return EXIT_OK


def _pandas_wide() -> Any:
    import pandas as pd

    return pd.option_context("display.width", 200, "display.max_columns", 20)


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator.report import build_report
    from orchestrator.store.schemas import check_study_name

    root, endpoint = _root(args)
    try:
        check_study_name(args.study)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    if args.top < 1:
        raise BadInput(f"--top must be at least 1, got {args.top}")
    out = args.out or f"report-{args.study}"
    res = build_report(root, args.study, out, endpoint_url=endpoint, top=args.top, embed=args.embed)
    if res.headline:
        print(res.headline)
    for name, why in res.missing.items():
        print(f"  {name}: {why}")
    print(f"wrote {res.html} ({len(res.figures)} figures) and {res.summary}")
    return EXIT_OK


def cmd_compact(args: argparse.Namespace) -> int:
    from orchestrator.store import compact

    root, endpoint = _root(args)
    report = compact(root, args.study, endpoint_url=endpoint)
    print(report)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from orchestrator.store import export_vectors, open_study

    root, endpoint = _root(args)
    ids = list(args.vector_ids)
    if args.best:
        frame = open_study(root, args.study, endpoint_url=endpoint).joined_frame()
        frame = frame[frame["trial_state"] == "COMPLETE"].sort_values(
            "transfer_success", ascending=False
        )
        ids += list(frame["vector_id"].head(args.best))
    if not ids:
        raise BadInput("name vector ids, or --best N")
    paths = export_vectors(
        root, args.study, ids, args.out, format=args.format, endpoint_url=endpoint
    )
    for p in paths:
        print(p)
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    """Wrap ``ray job submit``: working dir, runtime env, entrypoint."""
    from orchestrator.study.config import load_config

    cfg = load_config(args.config, args.overrides)  # fail here, not on the cluster
    env = {"pip": args.pip} if args.pip else {}
    entry = ["steer-sweep", "run", args.config, *args.overrides]
    entry += ["--extend"] * args.extend + ["--force-config"] * args.force_config
    cmd = [
        "ray",
        "job",
        "submit",
        "--address",
        args.address,
        "--working-dir",
        args.working_dir,
        "--submission-id",
        args.submission_id or f"{cfg.name}-{int(time.time())}",
    ]
    if env:
        cmd += ["--runtime-env-json", json.dumps(env)]
    if args.no_wait:
        cmd.append("--no-wait")
    cmd += ["--", *entry]
    print("$ " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr)
    if args.dry_run:
        return EXIT_OK
    return subprocess.call(cmd)


def cmd_optimize(args: argparse.Namespace) -> int:
    from workers import (
        Intervention,
        LossSettings,
        ModelSpec,
        StopRules,
        VectorJob,
        chat,
        load_model,
        optimize,
    )

    if not args.promote and not args.suppress:
        raise BadInput("give at least one --promote or --suppress target")
    started = time.perf_counter()
    lm = load_model(ModelSpec(args.model, dtype=args.dtype, device=args.device))
    log.info(
        "loaded %s (%d layers, d_model %d) in %.1f s on %s",
        lm.model_id,
        lm.n_layers,
        lm.d_model,
        time.perf_counter() - started,
        lm.device,
    )
    job = VectorJob.simple(
        "cli",
        args.prompt if args.raw else chat(args.prompt),
        promote=args.promote,
        suppress=args.suppress,
        layer=args.layer,
        lr=args.lr,
        norm_bound=args.norm,
        init_norm=args.init_norm,
        seed=args.seed,
        intervention=Intervention(args.intervention, clamp_coef=args.clamp_coef),
        loss=LossSettings(coldness=args.coldness, log_base=args.log_base),
        stop=StopRules(max_iters=args.max_iters),
    )
    started = time.perf_counter()
    [res] = optimize(lm, [job])
    elapsed = time.perf_counter() - started
    unit = "hartleys" if args.log_base == 10 else f"log{args.log_base:g} units"
    print(
        f"loss {res.initial_loss:.3f} -> {res.final_loss:.3f} {unit} in {res.iterations} steps "
        f"({res.stop_reason}, {elapsed / max(res.iterations, 1):.2f} s/step); |v| = {res.final_norm:.2f}"
    )
    if args.out is not None:
        from safetensors.numpy import save_file

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "model": lm.model_id,
            "revision": lm.revision,
            "layers": json.dumps(list(res.layers)),
            "seed": str(res.seed),
            "loss_history": json.dumps(res.loss_history),
            "log_base": str(res.log_base),
            "stop_reason": res.stop_reason,
        }
        save_file({"vector": res.vector}, str(out), metadata=meta)
        print(f"wrote {out}")
    return EXIT_OK
