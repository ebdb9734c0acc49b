"""How a finished vector transfers to held-out examples.

``transfer`` holds the metrics (teacher-forced target log-probabilities,
choice flips, judged generations, side-effect KL, base-model surprisal),
``judges`` the string and model judges, and ``evaluate`` the study's
:class:`EvalSpec` and the function that runs its metrics on a batch of vectors.

May import: ``workers.jobs``, ``workers.examples``, ``workers.models``,
``workers.steering``, torch. Never ``workers.engine``: evaluating a vector
needs no optimizer.
"""

from typing import TYPE_CHECKING

from workers.lazy import lazy_getattr

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
_PUBLIC = {
    "METRICS": "workers.evaluation.evaluate",
    "EvalSpec": "workers.evaluation.evaluate",
    "evaluate": "workers.evaluation.evaluate",
    "ContainsAny": "workers.evaluation.judges",
    "Judge": "workers.evaluation.judges",
    "LacksAll": "workers.evaluation.judges",
    "LLMJudge": "workers.evaluation.judges",
    "Generation": "workers.evaluation.rows",
    "TransferRow": "workers.evaluation.rows",
    "choice_flips": "workers.evaluation.transfer",
    "generations": "workers.evaluation.transfer",
    "judged": "workers.evaluation.transfer",
    "side_effect_kl": "workers.evaluation.transfer",
    "surprisal_per_token": "workers.evaluation.transfer",
    "target_logprobs": "workers.evaluation.transfer",
}

if TYPE_CHECKING:
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

__getattr__ = lazy_getattr(globals(), _PUBLIC)
