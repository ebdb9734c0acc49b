"""The model under steering: batched interventions as hooks (``interventions``),
one vector on any Hugging Face model as a context manager (``context``: ``steer``),
jobs as padded token batches (``encoding``), the losses on them (``losses``),
prefix reuse below the steering layer (``prefix``), greedy decoding and
next-token distributions under per-row steering (``generate``), and stored
vectors as they are applied (``vectors``).

The primitives that both the optimizer (``workers.engine``) and evaluation
(``workers.evaluation``) build on. May import: ``workers.jobs``,
``workers.models``, torch. Nothing else of the project.
"""
