"""The generated text the report tests store (``build_study(generations=True)``)
and look for in the page."""

from __future__ import annotations

MARKUP = "<script>alert(\"x\")</script> & 'quoted'"  # in every stored prompt and text
UNJUDGED = "eval-1"  # the held-out example without judge rows


def generated_text(vid: str, eval_id: str, steered: bool) -> str:
    """The text stored for a vector on a held-out example."""
    return f"{'steered' if steered else 'unsteered'} {vid} on {eval_id}:\n{MARKUP}"
