"""Package names imported on first use, so that importing one plain-data
module of a package (``workers.jobs``, ``workers.evaluation.rows``,
``workers.service.protocol``) does not load torch through the package's
``__init__``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(namespace: dict[str, Any], names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``names[name]`` (a module path)
    on first use of ``name`` and keeps the value in ``namespace``."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name]), name)
        namespace[name] = value  # once
        return value

    return __getattr__
