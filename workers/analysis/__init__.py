"""Analysis of vectors beyond transfer: the CAA skyline (``caa``, §2.1.3) and
the geometry of a set of vectors (``geometry``: cosine similarity, mode
connectivity, dot-product classifiers; §3.3, §4.3, §5.3).

May import: ``workers.jobs``, ``workers.examples``, ``workers.models``,
``workers.steering``, ``workers.engine`` (mode connectivity evaluates losses
through the optimizer), torch, numpy.
"""

from workers.analysis.caa import activations, caa_vector, examples_caa
from workers.analysis.geometry import (
    Connectivity,
    cosine_matrix,
    dot_product_auc,
    geodesic,
    median_off_diagonal,
    mode_connectivity,
    model_loss_fn,
    roc_auc,
)

__all__ = [
    "Connectivity",
    "activations",
    "caa_vector",
    "cosine_matrix",
    "dot_product_auc",
    "examples_caa",
    "geodesic",
    "median_off_diagonal",
    "mode_connectivity",
    "model_loss_fn",
    "roc_auc",
]
