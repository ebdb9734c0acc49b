"""``steer-sweep run``: preflight, Ray, actors, the store, the driver, a summary."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from orchestrator.config import RayConfig, StudyConfig
from orchestrator.driver import Driver, RunSummary
from orchestrator.pool import Pool, RayPool
from orchestrator.preflight import Plan, prepare
from orchestrator.store import (
    ExampleRecord,
    StoreWriter,
    StudyContext,
    config_hash,
    redact,
    save_study_config,
)

log = logging.getLogger(__name__)


def connect_ray(cfg: RayConfig) -> str:
    """Join the cluster at ``cfg.address``; with none, join a running one if
    there is one ("auto"), else start a local one. Returns how it connected."""
    import ray

    if ray.is_initialized():
        return "already connected"
    kwargs: dict[str, Any] = {"namespace": cfg.namespace, "log_to_driver": True}
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


def study_context(plan: Plan, info: dict[str, Any]) -> StudyContext:
    cfg = plan.config
    return StudyContext(
        study=cfg.name,
        config_hash=config_hash(redact(cfg.model_dump(mode="json"))),
        model_id=cfg.model.name,
        d_model=int(info.get("d_model", plan.shape.d_model)),
        model_revision=str(info.get("revision", "")),
    )


def examples_records(plan: Plan) -> list[ExampleRecord]:
    out = []
    for ex in plan.train + plan.transfer:
        out.append(ExampleRecord(ex.id, ex.split, ex.prompt, ex.scored_prompt().targets))
    return out


def make_ray_pool(plan: Plan) -> RayPool:
    m = plan.config.model
    return RayPool(
        model=plan.model_spec,
        evaluation=plan.evaluation,
        label=f"{m.name}:{plan.config.name}",
        num_actors=m.num_actors,
        num_cpus=m.cpus_per_actor,
        num_gpus=m.gpus_per_actor,
        max_batch_jobs=m.max_batch_jobs,
        torch_threads=m.torch_threads,
        namespace=plan.config.ray.namespace,
    )


def run_study(
    config: StudyConfig,
    *,
    pool: Pool | None = None,
    show_progress: bool = True,
) -> RunSummary:
    """Run (or resume) a study; see :mod:`orchestrator.driver`.

    ``pool`` replaces the Ray actors (tests, benchmarks); by default Ray is
    connected and one ``SteeringWorker`` per ``model.num_actors`` is started.
    """
    started = time.perf_counter()
    plan = prepare(config)
    log.info("study %s: results go to %s", config.name, plan.store_uri)
    info: dict[str, Any] = {}
    ray_pool = None
    if pool is None:
        log.info("ray: %s", connect_ray(config.ray))
        ray_pool = make_ray_pool(plan)
        infos = ray_pool.info()
        info = infos[0]
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
        pool = ray_pool
    load_s = time.perf_counter() - started
    ctx = study_context(plan, info)
    writer = StoreWriter(config.store.root, ctx, endpoint_url=config.store.endpoint_url)
    save_study_config(writer.root, config.name, redact(config.model_dump(mode="json")))
    writer.write_examples(examples_records(plan))
    bar = _progress(config.n_trials) if show_progress else None

    def on_trial(summary: RunSummary, number: int) -> None:
        if bar is not None:
            bar.n = summary.resumed + summary.told
            bar.set_postfix(
                vectors=summary.vectors, **{k.lower(): v for k, v in summary.states.items()}
            )
            bar.refresh()

    try:
        summary = Driver(plan, pool, writer, progress=on_trial).run()
    finally:
        if bar is not None:
            bar.close()
        if ray_pool is not None:
            ray_pool.shutdown()
    summary.seconds["setup_and_model_load"] = load_s
    summary.seconds["total"] = time.perf_counter() - started
    return summary


def _progress(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="trials", unit="trial", dynamic_ncols=True)
