"""Datasets: examples from files, and the built-in tasks.

- :func:`load_examples` reads JSONL, CSV or Parquet into
  :class:`workers.examples.Example` rows, with a column mapping; a malformed row
  raises :class:`DatasetError` naming the file, line (or row) and field.
- :func:`save_examples` writes examples back in the default layout.
- :func:`builtin_task` returns a :class:`Task` from ``BUILTIN_TASKS``.
- :func:`swap_example` builds the option-swapped copy of a two-choice example (§3).

A *task* is a data set: examples plus what their evaluation needs (judge
strings, neutral prompts, a surprisal context). The built-in tasks' files are
under ``data/``.

May import: ``workers.examples`` and ``workers.jobs`` (plain dataclasses),
pyarrow. Nothing that runs a model.
"""

from orchestrator.datasets.builtin import (
    BUILTIN_TASKS,
    NEUTRAL_PROMPTS,
    UnknownTaskError,
    builtin_task,
)
from orchestrator.datasets.loaders import (
    DEFAULT_MAPPING,
    FIELDS,
    PromptFormat,
    examples_from_rows,
    load_examples,
)
from orchestrator.datasets.rows import DatasetError, RawRow
from orchestrator.datasets.swap import SwapError, swap_example, swap_prompt, swap_text
from orchestrator.datasets.task import Task
from orchestrator.datasets.writers import example_record, save_examples

__all__ = [
    "BUILTIN_TASKS",
    "DEFAULT_MAPPING",
    "FIELDS",
    "NEUTRAL_PROMPTS",
    "DatasetError",
    "PromptFormat",
    "RawRow",
    "SwapError",
    "Task",
    "UnknownTaskError",
    "builtin_task",
    "example_record",
    "examples_from_rows",
    "load_examples",
    "save_examples",
    "swap_example",
    "swap_prompt",
    "swap_text",
]
