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
    when available. ``progress``: whether loading may draw progress bars
    (``steer-sweep -q`` turns them off, on the actors too).
    """

    name: str
    dtype: str = "auto"
    device: str = "auto"
    revision: str | None = None
    trust_remote_code: bool = False
    layers_path: str | None = None
    cache_dir: str | None = None
    progress: bool = True


@dataclass(frozen=True)
class ModelShape:
    """A model's size, read from its config without weights. ``block_params``
    is the weights of one decoder block (attention and MLP; norms left out)
    and ``vocab`` the vocabulary size, when the config says (None: unknown)."""

    n_layers: int
    d_model: int
    block_params: int | None = None
    vocab: int | None = None


# MLPs with two matrices (up, down); every other family here has a gated MLP (three).
UNGATED = ("gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi")


def block_params(
    *,
    d_model: int,
    heads: int | None,
    kv_heads: int | None,
    head_dim: int | None,
    ffn: int | None,
    family: str,
) -> int:
    """Weights of one decoder block from its config's sizes: query and output
    projections of ``heads`` x ``head_dim``, key and value of ``kv_heads`` x
    ``head_dim`` (grouped-query attention), and an MLP of width ``ffn``
    (4 x ``d_model`` when unknown; gated unless ``family`` is in ``UNGATED``)."""
    heads = heads or max(1, d_model // 64)
    hd = head_dim or d_model // heads
    kv = kv_heads or heads
    attn = 2 * d_model * heads * hd + 2 * d_model * kv * hd
    width = ffn or 4 * d_model
    mlp = (2 if family in UNGATED else 3) * d_model * width
    return attn + mlp


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
