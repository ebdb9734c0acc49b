"""``steer-sweep run``: preflight, Ray, actors, the store, the driver, a summary."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from typing import Any

from orchestrator.run import placement
from orchestrator.run.committer import store_unavailable
from orchestrator.run.driver import Driver, RunSummary
from orchestrator.run.pools import Pool, RayPool
from orchestrator.run.preflight import Plan, PreflightError, prepare
from orchestrator.run.surprisal import ScoreSettings, Scoring
from orchestrator.store import (
    ExampleRecord,
    StoreRoot,
    StoreWriteError,
    StoreWriter,
    StudyConfigMismatch,
    StudyContext,
    StudyLease,
    config_hash,
    load_study_config,
    redact,
    save_study_config,
    study_at,
)
from orchestrator.store.roots import put_bytes
from orchestrator.store.study_config import canonical_json
from orchestrator.study.config import ModelConfig, RayConfig, StudyConfig
from workers.evaluation.evaluate import EvalSpec

log = logging.getLogger(__name__)


def connect_ray(cfg: RayConfig) -> str:
    """Join the cluster at ``cfg.address``; with none, join a running one if
    there is one ("auto"), else start a local one. Returns how it connected."""
    import ray

    if ray.is_initialized():
        return "already connected"
    kwargs: dict[str, Any] = {"namespace": cfg.namespace, "log_to_driver": True}
    if cfg.address == "local":  # a new cluster of its own, whatever else runs here
        ray.init(address="local", num_cpus=cfg.num_cpus or os.cpu_count(), num_gpus=cfg.num_gpus, **kwargs)  # fmt: skip
        return "new local cluster (ray.address: local)"
    if cfg.address:
        ray.init(address=cfg.address, **kwargs)
        return f"cluster at {cfg.address}"
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**kwargs)  # `ray job submit` sets RAY_ADDRESS for the driver
        return f"cluster at {os.environ['RAY_ADDRESS']}"
    try:
        ray.init(address="auto", **kwargs)
        return "running cluster (address=auto)"
    except ConnectionError:
        pass
    ray.init(num_cpus=cfg.num_cpus or os.cpu_count(), num_gpus=cfg.num_gpus, **kwargs)
    return "new local cluster"


# Keys that say where and how a study runs, not what it computes: changing
# them between runs resumes the same study, and rows keep one config_hash.
RESOURCE_KEYS: tuple[str, ...] = (
    "ray",
    "trials_in_flight",
    "store.lease_stale_s",
    "store.give_up_after_s",
    # How much generated text is kept, not what is computed: an old study
    # (stored before the setting) resumes and keeps text for its new trials.
    "evaluation.keep_generations",
    *(
        f"{section}.{key}"
        for section in ("model", "surprisal_model")
        for key in (
            "num_actors",
            "gpus_per_actor",
            "cpus_per_actor",
            "torch_threads",
            "max_batch_jobs",
            "inbox_depth",
            "engine",
            "placement",
            "placement_timeout_s",
        )
    ),
)


# Settings added after studies were first stored, with their defaults. A
# stored config without one ran with that default, so while a setting has its
# default it is left out of the comparison with a stored config and of the
# study's identity hash: adding a setting changes no existing study.
ADDED_SETTINGS: dict[str, Any] = {
    "evaluation.coldness": 0.7,
    "search.shots": 1,
    "search.shots_loss": "mean",
}


def _drop(config: dict[str, Any], dotted: str, only_if: Any = None) -> None:
    """Remove ``dotted`` from ``config`` (if its value is ``only_if``, when given)."""
    *parents, last = dotted.split(".")
    node: Any = config
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and last in node:
        if only_if is None or node[last] == only_if:
            node.pop(last)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A copy without the added settings that are at their defaults."""
    out: dict[str, Any] = json.loads(json.dumps(config))
    for dotted, default in ADDED_SETTINGS.items():
        _drop(out, dotted, default)
    return out


def identity_hash(config: dict[str, Any]) -> str:
    """The hash of a (redacted) config without its resource keys: the study's identity."""
    trimmed = _comparable(config)
    for dotted in RESOURCE_KEYS:
        _drop(trimmed, dotted)
    return config_hash(trimmed)


def _changes(old: Any, new: Any, path: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _changes(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
        return out
    return [] if old == new else [path or "(top level)"]


def store_config(
    config: StudyConfig, root: StoreRoot, *, extend: bool = False, force: bool = False
) -> str:
    """Save the study's (redacted) config in the store, or check it against
    the one saved by an earlier run; returns the config hash.

    A different config under the same study name is refused
    (``StudyConfigMismatch``, naming the keys that differ), except that
    ``extend`` accepts a larger ``n_trials`` and nothing else, and ``force``
    accepts any change. The replaced config is kept in the store as
    ``_studies/<study>/history/config-<hash>.json``, so the store records
    which configs its trials came from (each row's ``config_hash``).
    """
    new = redact(config.model_dump(mode="json"))
    old = load_study_config(root, config.name)
    if old is None or config_hash(old) == config_hash(new):
        save_study_config(root, config.name, new)
        return identity_hash(new)
    changed = [
        key
        for key in _changes(_comparable(old), _comparable(new))
        if not key.startswith(RESOURCE_KEYS)
    ]
    if not changed:
        # Only where and how it runs changed (actors, GPUs, the cluster), or
        # a setting this version added is at its default: the same study.
        log.info("study %s: resuming (changed: %s)", config.name, ", ".join(_changes(old, new)))
        save_study_config(root, config.name, new, overwrite=True)
        return identity_hash(new)
    if force or (extend and changed == ["n_trials"] and new["n_trials"] > old["n_trials"]):
        key = f"_studies/{config.name}/history/config-{config_hash(old)}.json"
        put_bytes(root, key, canonical_json(old).encode())
        log.warning(
            "study %s: config changed (%s); the earlier one is kept as %s",
            config.name,
            ", ".join(changed),
            key,
        )
        save_study_config(root, config.name, new, overwrite=True)
        return identity_hash(new)
    hint = (
        "--extend accepts a larger n_trials and nothing else"
        if extend
        else "rerun with --extend to raise n_trials, or --force-config to accept the change"
    )
    raise StudyConfigMismatch(
        f"study {config.name!r} in {root.uri} was run with a different config "
        f"(changed: {', '.join(changed)}); {hint}, or use a new study name"
    )


def study_context(plan: Plan, info: dict[str, Any]) -> StudyContext:
    cfg = plan.config
    return StudyContext(
        study=cfg.name,
        config_hash=identity_hash(redact(cfg.model_dump(mode="json"))),
        model_id=cfg.model.name,
        d_model=int(info.get("d_model", plan.shape.d_model)),
        model_revision=str(info.get("revision", "")),
    )


def examples_records(plan: Plan) -> list[ExampleRecord]:
    out = []
    for ex in plan.train_pool + plan.transfer:
        out.append(ExampleRecord(ex.id, ex.split, ex.prompt, ex.scored_prompt().targets, ex.group))
    return out


def _actors(m: ModelConfig, plan: Plan) -> dict[str, Any]:
    """The actor count, resources and placement of one model's pool."""
    return {
        "num_actors": m.num_actors,
        "num_cpus": m.cpus_per_actor,
        "num_gpus": m.gpus_per_actor,
        "max_batch_jobs": m.max_batch_jobs,
        "torch_threads": m.torch_threads,
        "streaming": m.engine == "stream",
        "namespace": plan.config.ray.namespace,
        "placement": m.placement,
        "placement_timeout_s": m.placement_timeout_s,
    }


def check_placement(config: StudyConfig) -> None:
    """What Ray will be asked for matches the models' devices: a model on a GPU
    needs actors that are given one.

    Raises:
        PreflightError: ``device`` names a GPU but ``gpus_per_actor`` is 0.
    """
    for section in ("model", "surprisal_model"):
        m = getattr(config, section)
        if m is not None and m.device.startswith("cuda") and m.gpus_per_actor == 0:
            raise PreflightError(
                f"{section}.device is {m.device!r} but {section}.gpus_per_actor is 0, so Ray "
                "would give its actors no GPU; set gpus_per_actor (1, or a fraction such as "
                "0.5 to share a GPU), or device: auto"
            )


def refuse_unplaceable(config: StudyConfig, *, fresh: bool) -> None:
    """Compare what the pools ask for with the connected cluster's nodes.
    A cluster this run started cannot grow: a request it cannot hold is a
    :class:`PlacementError` now. An existing cluster may (an autoscaler): the
    pool waits up to ``model.placement_timeout_s`` for its first actor.

    Raises:
        PlacementError: ``fresh`` and the actors do not fit.
    """
    import ray

    if not ray.is_initialized():  # no cluster to compare with (in-process workers)
        return
    why = placement.check(config, placement.cluster_nodes())
    if why is None:
        return
    if fresh:
        raise placement.PlacementError(
            f"{why}. This run started its own local cluster, which does not grow"
        )
    log.warning(
        "%s; waiting up to %.0f s (model.placement_timeout_s) for the cluster to grow",
        why,
        config.model.placement_timeout_s,
    )


def make_ray_pool(plan: Plan) -> RayPool:
    m = plan.config.model
    return RayPool(
        model=plan.model_spec,
        evaluation=plan.evaluation,
        label=f"{m.name}:{plan.config.name}",
        **_actors(m, plan),
    )


def make_surprisal_pool(plan: Plan) -> RayPool:
    """The second pool: actors holding the surprisal (base) model."""
    m = plan.config.surprisal_model
    assert m is not None and plan.surprisal_spec is not None
    return RayPool(
        model=plan.surprisal_spec,
        evaluation=EvalSpec(metrics=()),
        label=f"{m.name}:{plan.config.name}:surprisal",
        **_actors(m, plan),
    )


def run_study(
    config: StudyConfig,
    *,
    pool: Pool | None = None,
    scorer: Pool | None = None,
    show_progress: bool = True,
    extend: bool = False,
    force_config: bool = False,
    force_lease: bool = False,
) -> RunSummary:
    """Run (or resume) a study; see :mod:`orchestrator.run.driver`.

    ``pool`` replaces the Ray actors (tests, benchmarks); by default Ray is
    connected and one ``SteeringWorker`` per ``model.num_actors`` is started,
    and with a ``surprisal_model`` a second pool of ``surprisal_model.num_actors``
    actors holding that model (``scorer`` replaces it).
    ``extend`` / ``force_config``: see :func:`store_config`. The run holds the
    study's lease (:class:`~orchestrator.store.StudyLease`) from before its
    first write to its end; ``force_lease`` takes it from another run.

    Raises:
        LeaseHeld: another run of the study holds its lease.
        LeaseLost: another run took the lease while this one ran.
        StoreUnavailable: the store refused writes for longer than
            ``store.give_up_after_s``.
    """
    started = time.perf_counter()
    if pool is None:
        check_placement(config)
    plan = prepare(config)
    lease = StudyLease(plan.store, config.name, stale_s=config.store.lease_stale_s)
    ours = None  # the Ray this call started, shut down if the run fails
    if pool is None:  # Ray, and whether it can hold the actors, before anything is written
        lease.refuse_if_held(force=force_lease)  # a refused run starts no Ray
        import ray

        was = ray.is_initialized()
        how = connect_ray(config.ray)
        log.info("ray: %s", how)
        ours = ray if not was and ray.is_initialized() else None
    try:
        if pool is None:
            refuse_unplaceable(config, fresh=how.startswith("new local cluster"))
        lease.acquire(force=force_lease)  # before anything is written
        try:
            return _run(
                config, plan, lease, started, pool, scorer, show_progress, extend, force_config
            )
        finally:
            lease.release()
    except BaseException:
        if ours is not None:  # a bad config found late, a lost store: leave no Ray behind
            ours.shutdown()
        raise


def _run(
    config: StudyConfig,
    plan: Plan,
    lease: StudyLease,
    started: float,
    pool: Pool | None,
    scorer: Pool | None,
    show_progress: bool,
    extend: bool,
    force_config: bool,
) -> RunSummary:
    try:
        store_config(config, plan.store, extend=extend, force=force_config)  # before any actor
    except StoreWriteError as exc:
        raise store_unavailable(
            plan.store.uri, f"refused writes before the first trial: {exc}", "nothing is lost"
        ) from exc
    lease.start_heartbeat()
    log.info("study %s: results go to %s", config.name, plan.store_uri)
    if not show_progress:  # the actors load their models without bars too
        quiet = replace(plan.model_spec, progress=False)
        scored = plan.surprisal_spec and replace(plan.surprisal_spec, progress=False)
        plan = replace(plan, model_spec=quiet, surprisal_spec=scored)
    info: dict[str, Any] = {}
    started_pools: list[Any] = []  # what this call started, and so shuts down
    try:
        if scorer is None and plan.surprisal_spec is not None:
            log.info("ray: %s", connect_ray(config.ray))
        if pool is None:
            pool = make_ray_pool(plan)
            started_pools.append(pool)
        if scorer is None and plan.surprisal_spec is not None:
            scorer = make_surprisal_pool(plan)  # loads beside the steering actors
            started_pools.append(scorer)
        for p in started_pools:
            infos = p.info()
            if p is pool:
                info = infos[0]  # the steering model's: d_model and revision of the rows
            for i in infos:
                log.info(
                    "actor %s on %s pid %s: %s on %s, loaded in %.1f s",
                    i["label"],
                    i["host"],
                    i["pid"],
                    i["model"],
                    i["device"],
                    i["load_s"],
                )
        load_s = time.perf_counter() - started
        ctx = study_context(plan, info)
        writer = StoreWriter(plan.store, ctx)
        try:
            writer.write_examples(examples_records(plan))
        except StoreWriteError as exc:
            raise store_unavailable(
                plan.store.uri, f"refused writes before the first trial: {exc}", "nothing is lost"
            ) from exc
        bar = _progress(config.n_trials) if show_progress else None

        def on_trial(summary: RunSummary, number: int) -> None:
            if bar is not None:
                bar.n = summary.resumed + summary.told
                bar.set_postfix(
                    vectors=summary.vectors,
                    **{k.lower(): v for k, v in summary.states.items()},
                    occupancy=f"{summary.occupancy:.0%}",
                    eval=f"{summary.eval_share:.0%}",
                )
                bar.refresh()

        scoring = None
        if scorer is not None:
            ev = config.evaluation
            scoring = Scoring(
                scorer,
                ScoreSettings(plan.surprisal_context, ev.log_base, ev.batch_size),
                max_items=(config.surprisal_model or config.model).max_batch_jobs,
            )
        try:
            driver = Driver(plan, pool, writer, progress=on_trial, scoring=scoring, lease=lease)
            summary = driver.run()
        finally:
            if bar is not None:
                bar.close()
        _restore_study_files(config, plan, writer)
    finally:
        for p in started_pools:
            p.shutdown()
    summary.seconds["setup_and_model_load"] = load_s
    summary.seconds["total"] = time.perf_counter() - started
    return summary


def _restore_study_files(config: StudyConfig, plan: Plan, writer: StoreWriter) -> None:
    """Put back the config copy and the examples table if the store lost them
    during the run (a bucket emptied and recreated)."""
    if load_study_config(plan.store, config.name) is None:
        log.error("the store lost the study's config copy; writing it again")
        save_study_config(plan.store, config.name, redact(config.model_dump(mode="json")))
    if not study_at(plan.store, config.name).files("examples"):
        log.error("the store lost the study's examples table; writing it again")
        writer.write_examples(examples_records(plan))


def _progress(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="trials", unit="trial", dynamic_ncols=True)
