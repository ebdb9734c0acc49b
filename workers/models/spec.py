"""What to load: a model's name, dtype and device, and the errors of loading.

Plain data and small helpers; nothing here reads a file or imports transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TINY_PREFIX = "tiny-random-"  # e.g. tiny-random-llama: see workers.models.tiny

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says which and why."""


@dataclass(frozen=True)
class ModelSpec:
    """What to load.

    ``name`` is a bundled model name (``smollm2-135m-instruct``), a local
    directory, a ``.gguf`` file, or a hub id. ``dtype`` ``"auto"`` means
    bfloat16 on a GPU and float32 on the CPU. ``device`` ``"auto"`` picks CUDA
    when available.
    """

    name: str
    dtype: str = "auto"
    device: str = "auto"
    revision: str | None = None
    trust_remote_code: bool = False
    layers_path: str | None = None
    cache_dir: str | None = None


@dataclass(frozen=True)
class ModelShape:
    n_layers: int
    d_model: int


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype '{dtype}'; use one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]
