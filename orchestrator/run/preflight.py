"""Everything checked before any model is loaded or actor started.

``prepare(config)`` resolves the task's examples, reads the model's shape
from its config (no weights), resolves the layer range against it, checks the
search space against the training examples, and checks that the store is
reachable and writable. Any problem raises :class:`PreflightError` with a
message that names the config key.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from orchestrator.datasets.task import Task
from orchestrator.store import StoreConfigError, StoreRoot, check_store, resolve_root
from orchestrator.study.config import ModelConfig, SearchSpace, StudyConfig, token_spec
from orchestrator.study.space import (
    distributions,
    fixed_params,
    grid,
    max_shots,
    resolve_layers,
)
from workers.evaluation.evaluate import EvalSpec
from workers.evaluation.judges import LLMJudgeSpec
from workers.evaluation.screen import SCREENABLE, Screen, matches
from workers.examples import Example
from workers.jobs import chat
from workers.models import Codec, ModelShape, ModelSpec, load_codec, peek_shape

log = logging.getLogger(__name__)


class PreflightError(ValueError):
    """The study cannot start; the message says what to fix."""


@dataclass
class Plan:
    config: StudyConfig
    shape: ModelShape
    model_spec: ModelSpec
    space: SearchSpace  # layers resolved against the model
    train: list[Example]  # one per vector of a trial: each vector's first (anchor) example
    transfer: list[Example]
    evaluation: EvalSpec
    store: StoreRoot  # resolved once, here; every writer and reader of the run uses it
    # The surprisal model's spec (a second pool of actors) and the context C
    # its surprisal is taken under (the task's ``surprisal_context``).
    surprisal_spec: ModelSpec | None = None
    surprisal_context: tuple[str, ...] = ()
    # The training examples K-shot vectors draw from (the whole train split
    # when a trial may use more than one example per vector; else ``train``).
    train_pool: list[Example] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.train_pool:
            self.train_pool = list(self.train)

    @property
    def store_uri(self) -> str:
        return self.store.uri


def model_spec(config: StudyConfig) -> ModelSpec:
    return spec_of(config.model)


def spec_of(m: ModelConfig) -> ModelSpec:
    return ModelSpec(
        m.name,
        dtype=m.dtype,
        device=m.device,
        revision=m.revision,
        trust_remote_code=m.trust_remote_code,
        layers_path=m.layers_path,
    )


def load_task(config: StudyConfig) -> tuple[list[Example], list[Example], Task]:
    """``(train, transfer, task)``: the study's examples by split (transfer cut
    to ``task.max_transfer``), and the task with the study's ``task.judge``,
    ``task.neutral_prompts`` and ``task.surprisal_context`` in place of its own."""
    from orchestrator import datasets

    t = config.task
    targets = (tuple(t.targets.promote), tuple(t.targets.suppress)) if t.targets else ((), ())
    if t.builtin is not None:
        try:
            task = datasets.builtin_task(t.builtin)
        except KeyError:
            names = ", ".join(sorted(datasets.BUILTIN_TASKS))
            raise PreflightError(
                f"task.builtin '{t.builtin}' is not a built-in task ({names})"
            ) from None
    else:
        if t.hf is not None:
            from orchestrator.datasets.hf import load_hf_examples

            examples = load_hf_examples(t.hf, t.mapping or None, t.filter, targets)
            name = t.hf.path
        else:
            assert t.path is not None  # TaskConfig allows exactly one source
            examples = datasets.load_examples(t.path, t.mapping or None, default_targets=targets)
            name = t.path
        task = datasets.Task(
            name=name,
            description=f"examples from {name}",
            examples=tuple(examples),
            neutral_prompts=datasets.NEUTRAL_PROMPTS,
        )
    task = _with_overrides(task, config)
    train = [e for e in task.examples if e.split == t.train_split]
    transfer = [e for e in task.examples if e.split == t.transfer_split]
    if t.max_transfer is not None:
        transfer = transfer[: t.max_transfer]
    return train, transfer, task


def _with_overrides(task: Task, config: StudyConfig) -> Task:
    from orchestrator.datasets.builtin import PHRASE_LISTS

    t = config.task
    out = task
    if t.judge is not None:

        def strings(value: str | list[str]) -> tuple[str, ...]:
            return PHRASE_LISTS[value] if isinstance(value, str) else tuple(value)

        out = dataclasses.replace(
            out,
            judge_contains_any=strings(t.judge.contains_any),
            judge_lacks_all=strings(t.judge.lacks_all),
        )
    if t.neutral_prompts is not None:
        out = dataclasses.replace(out, neutral_prompts=tuple(chat(p) for p in t.neutral_prompts))
    if t.surprisal_context is not None:
        out = dataclasses.replace(out, surprisal_context=tuple(t.surprisal_context))
    return out


def _check_space(config: StudyConfig, space: SearchSpace, train: list[Example]) -> None:
    try:
        dists = distributions(space)
    except ValueError as exc:
        raise PreflightError(f"search: {exc}") from None
    fixed = fixed_params(space)
    if not dists and config.n_trials > 1 and config.sampler.name != "grid":
        log.warning("the search space has no sampled entry: every trial has the same params")
    if config.sampler.name == "grid":
        try:
            points = 1
            for values in grid(space).values():
                points *= len(values)
        except ValueError as exc:
            raise PreflightError(str(exc)) from None
        if config.n_trials > points:
            raise PreflightError(
                f"n_trials is {config.n_trials} but the grid has only {points} points; "
                f"set n_trials to at most {points}"
            )
    losses = set(dists["loss"].choices) if "loss" in dists else {fixed["loss"]}  # type: ignore[attr-defined]
    for ex in train:
        if "promote" in losses and not ex.promote:
            raise PreflightError(
                f"search.loss includes promote but training example '{ex.id}' has no promote target"
            )
        if "suppress" in losses and not ex.suppress:
            raise PreflightError(
                f"search.loss includes suppress but training example '{ex.id}' has no suppress target"
            )
        if "caa" in losses and not (ex.promote or "real_prompt" in ex.meta):
            raise PreflightError(
                f"search.loss includes caa but training example '{ex.id}' has no promote target: "
                "CAA contrasts each prompt followed by its first promote target with the same "
                "prompt followed by its first suppress target (or nothing)"
            )


def check_lengths(codec: Codec, examples: list[Example]) -> None:
    """Every prompt plus its longest target fits the model's context, and no
    prompt or target encodes to nothing (the same encoding the workers use)."""
    for ex in examples:
        where = f"{ex.split} example '{ex.id}'"
        try:
            n = len(codec.encode_prompt(ex.prompt))
            lengths = [(text, n + len(codec.encode_target(text))) for text, _, _ in ex.targets()]
        except ValueError as exc:
            raise PreflightError(f"{where}: {exc}") from None
        for text, total in [("", n), *lengths]:
            if total > codec.max_context:
                what = f"its prompt plus target {text[:40]!r}" if text else "its prompt"
                raise PreflightError(
                    f"{where}: {what} is {total} tokens, longer than the context of "
                    f"{codec.model_id} ({codec.max_context} tokens); shorten it or drop the example"
                )


def check_positions(codec: Codec, space: SearchSpace, train: list[Example]) -> None:
    """Explicit token positions (``search.tokens: positions:I,J``) fall inside
    every training prompt, as the workers require."""
    specs = space.tokens if isinstance(space.tokens, list) else [space.tokens]
    for spec in specs:
        mode, _, positions = token_spec(spec)
        if mode != "positions":
            continue
        for ex in train:
            n = len(codec.encode_prompt(ex.prompt))
            outside = [p for p in positions if not -n <= p < n]
            if outside:
                raise PreflightError(
                    f"search.tokens '{spec}': positions {outside} fall outside training example "
                    f"'{ex.id}', whose prompt is {n} tokens (use -{n}..{n - 1}, negative from "
                    "the end)"
                )


def check_judge_answers(codec: Codec, judge: LLMJudgeSpec) -> None:
    """The LLM judge compares the first tokens of its two answers, so they
    must differ (``Yes`` and ``Yesterday`` may share one)."""
    yes, no = (codec.encode_target(a)[:1] for a in (judge.yes, judge.no))
    if yes == no:
        raise PreflightError(
            f"evaluation.llm_judge: yes_answer {judge.yes!r} and no_answer {judge.no!r} start "
            f"with the same token for {codec.model_id}'s tokenizer, so the judge could not tell "
            "them apart; use two words that start differently, such as Yes and No"
        )


def measured_metrics(evaluation: EvalSpec) -> list[str]:
    """The transfer metrics the workers will write for this study, by name."""
    examples = evaluation.scored_examples
    out: dict[str, None] = {}
    metrics = evaluation.metrics
    if "target_logprob" in metrics:
        for ex in examples:
            out |= {f"target_logprob:promote:{i}": None for i in range(len(ex.promote))}
            out |= {f"target_logprob:suppress:{i}": None for i in range(len(ex.suppress))}
    if "choice_flip" in metrics and any(len(ex.choices) >= 2 for ex in examples):
        out |= {"choice_flip:+": None, "choice_flip:-": None}
    if "judge" in metrics:
        if evaluation.judge_contains_any:
            out["judge:contains_any"] = None
        if evaluation.judge_lacks_all:
            out["judge:lacks_all"] = None
        if evaluation.llm_judge is not None:
            out["judge:llm"] = None
    if "side_effect_kl" in metrics and evaluation.neutral_prompts:
        out["side_effect_kl"] = None
    if "surprisal" in metrics:
        out["surprisal"] = None
    return list(out)


def check_objectives(config: StudyConfig, measured: list[str]) -> None:
    """Every objective reduces a metric the study measures (or the vector norm);
    otherwise every trial would end FAIL with no objective value."""
    for i, obj in enumerate(config.objectives):
        if obj.metric == "norm":
            continue
        if not any(matches(m, obj.metric) for m in measured):
            shown = ", ".join(measured) or "nothing"
            raise PreflightError(
                f"objectives[{i}].metric '{obj.metric}' is not measured by this study, which "
                f"measures {shown} (evaluation.metrics {list(config.evaluation.metrics)} on "
                "its held-out examples); name one of those, a family such as target_logprob, "
                "or norm"
            )


def screen_of(config: StudyConfig, n_transfer: int) -> Screen | None:
    """The worker's transfer screen for ``pruner: {name: transfer_screen}``."""
    p = config.pruner
    if p.name != "transfer_screen":
        return None
    obj = config.objectives[0]  # pruning takes a single objective (config check)
    if not any(matches(obj.metric, family) for family in SCREENABLE):
        raise PreflightError(
            f"pruner transfer_screen scores the objective on a slice of the held-out examples, "
            f"but objectives[0].metric '{obj.metric}' is not measured per held-out example; "
            f"use one of {', '.join(SCREENABLE)} (or a family member such as "
            "target_logprob:promote), or another pruner"
        )
    if p.slice_size >= n_transfer:
        raise PreflightError(
            f"pruner.slice_size is {p.slice_size} but the study has only {n_transfer} held-out "
            "examples, so the screen would never skip any; set pruner.slice_size below "
            f"{n_transfer}, or raise task.max_transfer"
        )
    return Screen(p.slice_size, obj.metric, obj.statistic, obj.direction)


def prepare(config: StudyConfig, *, check_store_root: bool = True) -> Plan:
    """Validate a study against its model, data and store; see the module docstring."""
    spec = model_spec(config)
    try:
        shape = peek_shape(spec)
    except Exception as exc:
        raise PreflightError(f"model.name: {exc}") from None
    try:
        space = resolve_layers(config.search, shape.n_layers)
    except ValueError as exc:
        raise PreflightError(str(exc)) from None
    train, transfer, task = load_task(config)
    k = config.vectors_per_trial
    if len(train) < k:
        raise PreflightError(
            f"vectors_per_trial is {k} but the task has only {len(train)} examples in split "
            f"'{config.task.train_split}'"
        )
    most = max_shots(space)
    if most > len(train):
        raise PreflightError(
            f"search.shots goes up to {most} but the task has only {len(train)} examples in "
            f"split '{config.task.train_split}'"
        )
    pool = train if most > 1 else train[:k]
    train = train[:k]
    if not transfer:
        raise PreflightError(f"the task has no examples in split '{config.task.transfer_split}'")
    _check_space(config, space, pool)
    codec = load_codec(spec)
    if codec is not None:
        check_lengths(codec, pool + transfer)
        check_positions(codec, space, pool)
    else:
        log.info("%s: prompt lengths are checked when the model loads", config.model.name)
    ev = config.evaluation
    evaluation = EvalSpec(
        examples=tuple(transfer),
        metrics=tuple(ev.metrics),
        neutral_prompts=task.neutral_prompts,
        judge_contains_any=task.judge_contains_any,
        judge_lacks_all=task.judge_lacks_all,
        llm_judge=None
        if ev.llm_judge is None
        else LLMJudgeSpec(ev.llm_judge.template, ev.llm_judge.yes_answer, ev.llm_judge.no_answer),
        generation_tokens=ev.generation_tokens,
        keep_generations=ev.keep_generations,
        log_base=ev.log_base,
        coldness=ev.coldness,
        max_kl=ev.max_kl,
        batch_size=ev.batch_size,
        max_targets=ev.max_targets,
        screen=screen_of(config, len(transfer)),
    )
    judged = evaluation.judge_contains_any or evaluation.judge_lacks_all or evaluation.llm_judge
    if "judge" in ev.metrics and not judged:
        raise PreflightError(
            "evaluation.metrics has judge but the task defines no judge strings; give them "
            "as task.judge: {contains_any: [...]} or {lacks_all: [...]} (or a built-in list: "
            "refusal, retraction, enthusiasm), or set evaluation.llm_judge"
        )
    if evaluation.llm_judge is not None and codec is not None:
        check_judge_answers(codec, evaluation.llm_judge)
    check_objectives(config, measured_metrics(evaluation))
    surprisal_spec = None
    if config.surprisal_model is not None:
        surprisal_spec = spec_of(config.surprisal_model)
        try:
            peek_shape(surprisal_spec)
        except Exception as exc:
            raise PreflightError(f"surprisal_model.name: {exc}") from None
    try:
        store = resolve_root(config.store.root, endpoint_url=config.store.endpoint_url)
        if check_store_root:
            check_store(store)
    except StoreConfigError as exc:
        raise PreflightError(f"store.root: {exc}") from None
    context = task.surprisal_context
    return Plan(
        config, shape, spec, space, train, transfer, evaluation, store, surprisal_spec, context,
        train_pool=pool,
    )  # fmt: skip
