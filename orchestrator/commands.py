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


ROOT_ENV = "STEER_SWEEP_ROOT"
"""The store root of read commands given neither ``--root`` nor a study YAML."""


def is_study_file(text: str | None) -> bool:
    """A study argument that names a study YAML rather than a study."""
    return bool(text) and (str(text).endswith((".yaml", ".yml")) or Path(str(text)).is_file())


def study_location(args: argparse.Namespace) -> tuple[str, str, str | None]:
    """The study a read command names, and its store: ``(name, root, endpoint)``.

    The study is a name, or a study YAML (its ``name`` and ``store``). The
    root is ``--root``, else the YAML's (the study argument's, or
    ``--config``'s), else ``$STEER_SWEEP_ROOT``."""
    import os

    from orchestrator.study.config import load_config

    name, root, endpoint = args.study, args.root, args.endpoint_url
    for path in (args.study if is_study_file(args.study) else None, args.config):
        if path is None:
            continue
        if not Path(path).is_file():
            raise BadInput(f"{path}: no such study file")
        cfg = load_config(path)
        if path == args.study:
            name = cfg.name
        root = root or cfg.store.root
        endpoint = endpoint or cfg.store.endpoint_url
    root = root or os.environ.get(ROOT_ENV)
    if not root:
        raise BadInput(
            f"which store? give --root (a folder, file:///path or s3://bucket/prefix), set "
            f"${ROOT_ENV}, or name the study by its YAML file (its store.root is used)"
        )
    return name, root, endpoint


def _open(args: argparse.Namespace) -> Any:
    """The study the command names, which must be in the store: a readable
    error (``NoSuchStudy``, ``StoreConfigError``; exit 2) otherwise, before
    anything is written. Sets ``args.study`` to the study's name."""
    from orchestrator.store import check_store, open_study, resolve_root
    from orchestrator.store.schemas import check_study_name

    name, root, endpoint = study_location(args)
    try:
        check_study_name(name)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    store = resolve_root(root, endpoint_url=endpoint)
    if store.is_s3:
        check_store(store, probe_write=False)  # a missing bucket or bad key, in seconds
    args.study = name
    return open_study(store, name)


def cmd_check(args: argparse.Namespace) -> int:
    """``steer-sweep check``: the checks of ``run``, then the plan; writes nothing."""
    import math

    from orchestrator.run.estimate import DEFAULT_TFLOPS, describe, estimate
    from orchestrator.run.preflight import PreflightError, prepare
    from orchestrator.run.runner import check_placement
    from orchestrator.store import StoreConfigError, check_store
    from orchestrator.study.config import load_config
    from workers.models import load_codec

    tflops = DEFAULT_TFLOPS if args.tflops is None else args.tflops
    if not (math.isfinite(tflops) and tflops > 0):
        raise PreflightError(f"--tflops must be a positive number, got {args.tflops}")
    cfg = load_config(args.config, args.overrides)
    check_placement(cfg)
    plan = prepare(cfg, check_store_root=False)
    root = plan.store
    try:
        check_store(root, probe_write=False)  # reachable and writable; run probes an S3 write
    except StoreConfigError as exc:
        raise PreflightError(f"store.root: {exc}") from None
    for line in describe(plan, estimate(plan, load_codec(plan.model_spec), tflops)):
        print(line)
    print(_placement_line(cfg))
    return 0


def _placement_line(cfg: Any) -> str:
    """``check``'s placement: the pools' request against the cluster named by
    ``ray.address`` or ``RAY_ADDRESS`` (connected to, never started), else
    against what a new local cluster on this machine would hold. With
    ``ray.address: local`` that is where the study runs, so a request that
    does not fit is refused as ``run`` refuses it (exit 2); otherwise it is a
    warning line (the study may be meant for a cluster)."""
    import os

    from orchestrator.run import placement

    address = cfg.ray.address if cfg.ray.address not in (None, "local") else None
    address = address or (os.environ.get("RAY_ADDRESS") if cfg.ray.address is None else None)
    if address:
        import ray

        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            return f"placement: not checked: no Ray cluster answers at {address} ({exc})"
        try:
            nodes = placement.cluster_nodes()
        finally:
            ray.shutdown()
        why = placement.check(cfg, nodes)
        if why:
            return f"placement: warning: {why}; run waits model.placement_timeout_s for room"
        return f"placement: the actors fit on the cluster at {address}"
    why = placement.check(cfg, placement.local_nodes(cfg))
    if why and cfg.ray.address == "local":  # the study's own local cluster: run would refuse
        raise placement.PlacementError(f"{why}. A new local cluster does not grow")
    if why:  # run may join a running cluster (address=auto), or be submitted to one
        return (
            f"placement: warning: on this machine {why}; submit it to a cluster with room "
            "(steer-sweep submit), or set RAY_ADDRESS for check to compare with that cluster"
        )
    return "placement: the actors fit on a new local cluster on this machine"


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.run.runner import run_study
    from orchestrator.study.config import load_config

    cfg = load_config(args.config, args.overrides)
    summary = run_study(
        cfg,
        show_progress=not args.quiet,
        extend=args.extend,
        force_config=args.force_config,
        force_lease=args.force_lease,
    )
    # Every count below is read back from the store after the run.
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(summary.states.items()))
    print(
        f"study {summary.study}: {summary.stored}/{summary.n_trials} trials in the store "
        f"({states or 'none'}); {summary.told} run now, {summary.resumed} from an earlier run"
    )
    if summary.rewritten:
        print(
            f"the store lost {len(summary.rewritten)} trial(s) during the run; they were "
            f"written again: {', '.join(map(str, summary.rewritten[:20]))}"
        )
    print_best_trials(summary.best)
    t = summary.seconds
    print(
        "time (s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in t.items())
        + f"; occupancy {summary.occupancy:.1%}, evaluation share {summary.eval_share:.1%}"
        + "  [optimize/evaluate: actor seconds; wait: driver waiting on actors; occupancy: "
        "rows holding a job over all rows, first assignment to last outcome]"
    )
    # The study file names the study and its store, unless an override moved them.
    moved = any(o.split("=", 1)[0] in ("name", "store.root", "store") for o in args.overrides)
    where = f"{cfg.name} --root {shlex.quote(cfg.store.root)}" if moved else args.config
    print(f"results: {summary.store}")
    for command in ("status", "best", "report"):
        print(f"  steer-sweep {command} {where}")
    if summary.lost:
        shown = ", ".join(map(str, summary.lost[:20])) + (" ..." if len(summary.lost) > 20 else "")
        print(
            f"error: {len(summary.lost)} trial(s) finished but are not in the store "
            f"{summary.store}, which lost them after they were written ({shown}); they are "
            "not counted above. Rerun the same command to run them again.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    failed = summary.states.get("FAIL", 0)
    return EXIT_OK if failed < max(summary.stored, 1) else EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    from orchestrator.store import read_holder

    study = _open(args)
    root = study.root.uri
    holder = read_holder(study.root, study.name)
    if holder is not None:
        now = time.time()
        stale_s = float(((study.config() or {}).get("store") or {}).get("lease_stale_s", 60))
        if now - holder.heartbeat_at <= stale_s:
            print(f"study {args.study}: running now, {holder.describe(now)}")
        else:
            print(f"study {args.study}: not running; a lease was left by {holder.describe(now)}")
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


def print_best_trials(best: list[dict[str, Any]], shown: int = 3) -> None:
    """``run``'s lines on the best trials: the Pareto front, best first by the
    one ranking (``orchestrator.ranking``); with one objective, the best trial."""
    if len(best) > 1:
        more = f"; the first {shown}" if len(best) > shown else ""
        print(f"Pareto front: {len(best)} trials, best first{more}:")
    for b in best[:shown]:
        lead = "  trial" if len(best) > 1 else "best trial"
        print(f"{lead} {b['store_trial']}: values {b['values']} params {b['params']}")


def cmd_best(args: argparse.Namespace) -> int:
    from orchestrator.ranking import describe, objectives_of, rank_vectors

    study = _open(args)
    ranked = rank_vectors(study)
    if ranked.empty:
        print(f"study {args.study} in {study.root.uri}: no vectors of a COMPLETE trial yet")
        return EXIT_OK
    objectives = objectives_of(study.config())
    top = ranked.head(args.top)
    several = len(objectives) > 1
    cols = ["rank", "trial", *(["front"] if several else [])]
    cols += ["vector_id", "example_id", "layer", "norm_bound", "loss_kind", "lr"]
    cols += ["final_loss", "final_norm"]
    cols += [f"objective_{i}" for i in range(len(objectives))]
    cols += [f"vector_objective_{i}" for i in range(len(objectives))]
    n_front = int(ranked.drop_duplicates("trial")["front"].sum())
    trials = ranked["trial"].nunique()
    head = f"study {study.name} in {study.root.uri}: {trials} COMPLETE trials ranked"
    head += f", {n_front} on the Pareto front" if several else ""
    print(head + " (the rule: steer-sweep best --help)")
    for line in describe(objectives):
        print(f"  {line}")
    with _pandas_wide():
        print(top[[c for c in cols if c in top]].to_string(index=False))
    return EXIT_OK


def _pandas_wide() -> Any:
    import pandas as pd

    return pd.option_context("display.width", 200, "display.max_columns", 20)


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator.report import build_report

    study = _open(args)
    out = Path(args.out or f"report-{args.study}")
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} is a file; give a folder for the report")
    res = build_report(study.root, args.study, out, top=args.top, embed=args.embed)
    if res.headline:
        print(res.headline)
    for name, why in res.missing.items():
        print(f"  {name}: {why}")
    print(f"wrote {res.html} ({len(res.figures)} figures) and {res.summary}")
    return EXIT_OK


def cmd_compact(args: argparse.Namespace) -> int:
    from orchestrator.store import compact, read_holder

    study = _open(args)
    holder = read_holder(study.root, study.name)
    if holder is not None:
        # compact does not take the lease (it never changes a query's result);
        # see docs/store.md, "Guarantees", for what a concurrent writer means here.
        log.warning(
            "study %s is being run by %s; compacting anyway: trials it writes meanwhile "
            "stay as their own files until the next compact",
            study.name,
            holder.describe(time.time()),
        )
    report = compact(study.root, args.study)
    print(report)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from orchestrator.store import check_exportable, export_vectors

    study = _open(args)
    ids = list(dict.fromkeys(args.vector_ids))
    if not ids and not args.best:
        raise BadInput("name vector ids, or --best N")
    out = Path(args.out)
    if args.format == "safetensors" and out.suffix != ".safetensors":
        if out.exists() and not out.is_dir():
            raise BadInput(f"--out {out} is a file; give a folder or a .safetensors file name")
        out = out / f"{study.name}.safetensors"
    elif args.format == "gguf" and out.suffix != ".gguf" and out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} is a file; give a folder or a .gguf file name")
    problems = check_exportable(study, ids, args.format)
    if problems:
        listed = "; ".join(f"{i}: {why}" for i, why in problems.items())
        raise BadInput(f"cannot export from study {study.name!r}: {listed}")
    if args.best:
        from orchestrator.ranking import rank_vectors

        ranked = [i for i in rank_vectors(study)["vector_id"] if i not in ids]
        skipped = check_exportable(study, ranked, args.format)
        best: list[str] = []
        for vid in ranked:
            if len(best) == args.best:
                break
            if vid in skipped:
                print(f"skipped {vid}: {skipped[vid]}", file=sys.stderr)
            else:
                best.append(vid)
        if not best and not ids:
            raise BadInput(
                f"study {study.name!r} has no complete vector that can be exported as {args.format}"
            )
        ids += best
    if args.format == "gguf" and out.suffix == ".gguf" and len(ids) != 1:
        raise BadInput(f"--out {out} takes one vector; give a folder for {len(ids)} vectors")
    paths = export_vectors(study.root, study.name, ids, out, format=args.format)
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
    entry += ["--force-lease"] * args.force_lease
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
    if not args.dry_run:
        check_dashboard(args.address)  # before anything is printed or uploaded
    print("$ " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr)
    if args.dry_run:
        return EXIT_OK
    return subprocess.call(cmd)


def check_dashboard(address: str, timeout: float = 5.0) -> None:
    """``address`` answers as a Ray dashboard (its job server), in seconds.

    Raises:
        BadInput: not an http(s) URL, nothing answers, or what answers is not Ray.
    """
    import urllib.error
    import urllib.parse
    import urllib.request

    url = urllib.parse.urlparse(address)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise BadInput(f"--address {address!r} is not a Ray dashboard URL; give http://HEAD:8265")
    probe = address.rstrip("/") + "/api/version"
    try:
        with urllib.request.urlopen(probe, timeout=timeout) as reply:  # noqa: S310 - http(s) only
            body = json.loads(reply.read().decode("utf-8", "replace") or "null")
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return  # a dashboard with token authentication: `ray job submit` signs in
        raise BadInput(
            f"{address} answers, but not as a Ray dashboard (GET /api/version: HTTP "
            f"{exc.code}); give the dashboard's URL, http://HEAD:8265. Nothing was submitted"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BadInput(
            f"no Ray cluster answers at {address} ({reason}); check --address (the "
            "dashboard's URL, http://HEAD:8265, or a port-forward to it) and that the "
            "cluster is up. Nothing was submitted"
        ) from None
    except ValueError:
        body = None
    if not isinstance(body, dict) or "ray_version" not in body:
        raise BadInput(
            f"{address} answers, but not as a Ray dashboard (GET /api/version gave no "
            "ray_version); give the dashboard's URL, http://HEAD:8265. Nothing was submitted"
        )


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
    spec = ModelSpec(args.model, dtype=args.dtype, device=args.device, progress=not args.quiet)
    lm = load_model(spec)
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


def cmd_try(args: argparse.Namespace) -> int:
    """``steer-sweep try``: see :mod:`orchestrator.apply`. Every check that
    needs no model runs before the model loads."""
    from dataclasses import asdict

    from orchestrator import apply as A
    from workers.jobs import chat

    try:
        A.check_sampling(args.scale, args.temperature)  # before the model loads
    except A.TryError as exc:
        raise BadInput(str(exc)) from None
    _check_device(args.dtype, args.device)
    prompts: list[tuple[str, Any]] = []
    texts = list(args.prompt)
    if args.file is not None:
        if not args.file.is_file():
            raise BadInput(f"--file {args.file}: no such file")
        texts += [line for line in args.file.read_text().splitlines() if line.strip()]
        if not texts:
            raise BadInput(f"--file {args.file} holds no prompts (one per line)")
    if any(not t.strip() for t in texts):
        raise BadInput("a --prompt is empty")
    prompts = [(str(i), t if args.raw else chat(t)) for i, t in enumerate(texts)]
    study = None
    if args.vector is not None:
        if args.study and args.vector_id:
            raise BadInput("--vector takes the vector from a file: name no study")
        if args.best:
            raise BadInput("--best picks from a study; it does not go with --vector")
        if not prompts:
            raise BadInput("--vector needs prompts: give --prompt TEXT or --file PROMPTS.txt")
        name = args.study  # `try --vector F NAME` picks one tensor of a file of several
        try:
            vectors = A.file_vectors(args.vector, layer=args.layer, model=args.model, name=name)
        except A.TryError as exc:
            raise BadInput(str(exc)) from None
    else:
        if not args.study:
            raise BadInput("name a study and a vector id (or --best N), or give --vector FILE")
        if args.layer is not None:
            raise BadInput("--layer goes with --vector; a stored vector keeps its own layers")
        if not args.vector_id and not args.best:
            raise BadInput(f"name a vector of study {args.study!r} to try, or --best N")
        if args.vector_id and args.best:
            raise BadInput("name one vector id or --best N, not both")
        study = _open(args)
        try:
            ids = [args.vector_id] if args.vector_id else A.best_vector_ids(study, args.best)
            vectors = A.stored_vectors(study, ids)
            if not prompts:
                prompts = A.held_out_prompts(study, args.examples)
        except A.TryError as exc:
            raise BadInput(str(exc)) from None
        if args.model:
            vectors = [A.TryVector(v.vector, args.model, v.label) for v in vectors]
    tokens = args.tokens
    if tokens is None:
        ev = ((study.config() or {}).get("evaluation") or {}) if study is not None else {}
        tokens = int(ev.get("generation_tokens", 24))
    loaded: dict[str, Any] = {}
    for tv in vectors:
        if tv.model not in loaded:
            spec = A.model_spec_for(
                study, tv.model, args.dtype, args.device, progress=not args.quiet
            )
            loaded[tv.model] = A.load(spec)
        lm = loaded[tv.model]
        try:
            got = A.continuations(
                lm, tv, [p for _, p in prompts], scale=args.scale, tokens=tokens,
                temperature=args.temperature, seed=args.seed,
            )  # fmt: skip
        except A.TryError as exc:
            raise BadInput(str(exc)) from None
        named = [(name, c) for (name, _), c in zip(prompts, got, strict=True)]
        if args.json:
            print(json.dumps({
                "vector_id": tv.vector.vector_id, "label": tv.label, "scale": args.scale,
                "tokens": tokens, "temperature": args.temperature, "seed": args.seed,
                "continuations": [{"example": n, **asdict(c)} for n, c in named],
            }))  # fmt: skip
        else:
            print(A.render_text(tv.label, args.scale, named))
    return EXIT_OK


def _check_device(dtype: str | None, device: str | None) -> None:
    """--dtype and --device name something this machine has (before a model loads)."""
    import re
    import typing

    from orchestrator.study.config import DEVICE_PATTERN, Dtype

    names = typing.get_args(Dtype)
    if dtype is not None and dtype not in names:
        raise BadInput(f"--dtype {dtype!r} is not one of {', '.join(names)}")
    if device is None:
        return
    if not re.match(DEVICE_PATTERN, device):
        raise BadInput(f"--device {device!r} must be auto, cpu, cuda, cuda:N or mps")
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"--device {device}: this machine has no CUDA GPU that torch can use")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise BadInput(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise BadInput("--device mps: this machine has no Apple GPU that torch can use")
