"""How a finished vector transfers to held-out examples.

``transfer`` holds the metrics (teacher-forced target log-probabilities,
choice flips, judged generations, side-effect KL, base-model surprisal),
``judges`` the string and model judges, and ``evaluate`` the study's
:class:`EvalSpec` and the function that runs its metrics on a batch of vectors.

May import: ``workers.jobs``, ``workers.examples``, ``workers.models``,
``workers.steering``, torch. Never ``workers.engine``: evaluating a vector
needs no optimizer.
"""

from workers.evaluation.evaluate import METRICS, EvalSpec, evaluate
from workers.evaluation.judges import ContainsAny, Judge, LacksAll, LLMJudge
from workers.evaluation.transfer import (
    Generation,
    TransferRow,
    choice_flips,
    generations,
    judged,
    side_effect_kl,
    surprisal_per_token,
    target_logprobs,
)

__all__ = [
    "METRICS",
    "ContainsAny",
    "EvalSpec",
    "Generation",
    "Judge",
    "LLMJudge",
    "LacksAll",
    "TransferRow",
    "choice_flips",
    "evaluate",
    "generations",
    "judged",
    "side_effect_kl",
    "surprisal_per_token",
    "target_logprobs",
]
