"""What a study will cost before it runs: the plan ``steer-sweep check`` prints.

Counts are exact for the study file (trials, vectors) or upper bounds (every
vector runs ``max_iters`` steps; early stopping only shortens it). FLOPs come
from the model's shape (``workers.models.ModelShape``: weights per decoder
block, vocabulary) and the tokens of the task's prompts, with the engine's
prefix reuse: the blocks below a vector's layer run once per prompt, not per
step. Per vector-step, on T tokens and m target tokens, steering at layer l
of L blocks of P weights each, model width d, vocabulary V:

    optimize: 6 P (L - l) T + 6 d V m    (forward and the activations' backward
                                          above the layer; the logits on the targets)
    evaluate: 2 P (L - l) T + 2 d V m    (one forward per vector and held-out example)

with l the lowest layer searched (so an upper bound). For Gemma-2-2B at
T = 64, m = 8, l = L/2 the first is 0.42 TFLOP, against the 0.41 measured by
``bench/gpu_core_check.py``. GPU seconds divide by a stated throughput: by
default 270 TFLOP/s, what the static batch reached on the Gemma-2-2B shape on
one H200 (``bench/results/gpu_core_h200.json``; the SmolLM2-135M shape
reached 83).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.run.preflight import Plan
from orchestrator.study.space import highest, lowest, max_shots
from workers.examples import Example
from workers.models import Codec

DEFAULT_TFLOPS = 270.0


@dataclass(frozen=True)
class Estimate:
    trials: int
    vectors: int
    vector_steps: int  # at most
    evaluations: int  # (vector, held-out example) pairs
    train_tokens: float  # per job: prompt and targets of its examples, mean
    target_tokens: float  # per job: the targets alone, mean
    eval_tokens: float  # per held-out example, mean
    eval_target_tokens: float
    lowest_layer: int
    optimize_flop: float
    evaluate_flop: float
    tflops: float
    tokens_estimated: bool  # no tokenizer: 4 characters per token

    @property
    def gpu_seconds(self) -> float:
        return (self.optimize_flop + self.evaluate_flop) / (self.tflops * 1e12)


def _tokens(codec: Codec | None, ex: Example) -> tuple[int, int]:
    """(prompt + targets, targets) tokens of one example."""
    targets = [text for text, _, _ in ex.targets()]
    if codec is None:
        prompt = ex.prompt if isinstance(ex.prompt, str) else " ".join(t for _, t in ex.prompt)
        n_t = sum(max(1, len(t) // 4) for t in targets)
        return max(1, len(prompt) // 4) + n_t, n_t
    n_t = sum(len(codec.encode_target(t)) for t in targets)
    return len(codec.encode_prompt(ex.prompt)) + n_t, n_t


OPTIMIZE_PASSES = 6  # an optimizer step: forward and the activations' backward (2 + 4)
SCORE_PASSES = 2  # a held-out score: one forward


def pass_flop(
    passes: float, block_params: Any, blocks: Any, tokens: Any, head: Any, targets: Any
) -> Any:
    """FLOPs of one vector-step (``passes`` = ``OPTIMIZE_PASSES``) or one held-out
    score (``SCORE_PASSES``): ``passes * (P * blocks * T + d * V * m)``, with
    ``blocks`` the blocks from the steering layer up and ``head`` = d * V.
    Scalars or numpy arrays (one entry per vector)."""
    return passes * block_params * blocks * tokens + passes * head * targets


def _mean(xs: list[int]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def estimate(plan: Plan, codec: Codec | None, tflops: float = DEFAULT_TFLOPS) -> Estimate:
    """The plan of ``plan``'s study; see the module docstring."""
    cfg, space, shape = plan.config, plan.space, plan.shape
    vectors = cfg.n_trials * cfg.vectors_per_trial
    steps = int(highest(space.max_iters))
    shots = max_shots(space)
    train = [_tokens(codec, ex) for ex in plan.train_pool]
    evals = [_tokens(codec, ex) for ex in plan.evaluation.scored_examples]
    t_train = shots * _mean([t for t, _ in train])
    m_train = shots * _mean([m for _, m in train])
    t_eval, m_eval = _mean([t for t, _ in evals]), _mean([m for _, m in evals])
    low_layer = max(0, int(lowest(space.layer)))
    above = max(1, shape.n_layers - low_layer)
    p = shape.block_params or 12 * shape.d_model**2
    head = shape.d_model * (shape.vocab or 0)
    per_step = pass_flop(OPTIMIZE_PASSES, p, above, t_train, head, m_train)
    per_eval = pass_flop(SCORE_PASSES, p, above, t_eval, head, m_eval)
    n_evals = vectors * len(plan.transfer)
    return Estimate(
        trials=cfg.n_trials,
        vectors=vectors,
        vector_steps=vectors * steps,
        evaluations=n_evals,
        train_tokens=t_train,
        target_tokens=m_train,
        eval_tokens=t_eval,
        eval_target_tokens=m_eval,
        lowest_layer=low_layer,
        optimize_flop=vectors * steps * per_step,
        evaluate_flop=n_evals * per_eval,
        tflops=tflops,
        tokens_estimated=codec is None,
    )


def _si(x: float, unit: str) -> str:
    """``x`` with an SI prefix on ``unit``: 5.51 TFLOP, 106 M weights."""
    sep = "" if unit == "FLOP" else " "
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g} {prefix}{sep}{unit}"
    return f"{x:.3g} {unit}"


def describe(plan: Plan, est: Estimate) -> list[str]:
    """The lines ``steer-sweep check`` prints."""
    cfg, shape = plan.config, plan.shape
    weights = shape.block_params * shape.n_layers if shape.block_params else 0
    params = f", {_si(weights, 'weights')} in its blocks" if weights else ""
    metrics = ", ".join(cfg.evaluation.metrics)
    per = "" if not est.tokens_estimated else " (no tokenizer: 4 characters a token)"
    hours = est.gpu_seconds / 3600
    return [
        f"study {cfg.name}: checked. Model {cfg.model.name}: {shape.n_layers} blocks, width "
        f"{shape.d_model}{params}; lowest layer searched {est.lowest_layer}; task: "
        f"{len(plan.train_pool)} training and {len(plan.transfer)} held-out examples; "
        f"store {plan.store_uri} reachable.",
        f"plan: {est.trials} trials x {cfg.vectors_per_trial} vectors = {est.vectors} vectors; "
        f"at most {est.vector_steps} vector-steps; {est.evaluations} held-out evaluations "
        f"({est.vectors} vectors x {len(plan.transfer)} examples; metrics {metrics}).",
        f"tokens: {est.train_tokens:.0f} per training job ({est.target_tokens:.0f} of them "
        f"targets), {est.eval_tokens:.0f} per held-out example{per}.",
        f"estimate: {_si(est.optimize_flop, 'FLOP')} optimizing + "
        f"{_si(est.evaluate_flop, 'FLOP')} "
        f"evaluating = {est.gpu_seconds:.3g} GPU-seconds ({hours:.3g} GPU-hours) at "
        f"{est.tflops:g} TFLOP/s (--tflops; 270: the static batch on the Gemma-2-2B shape "
        "on one H200, an upper bound of what a GPU sustains; judges, generations and "
        "surprisal are not counted).",
    ]
