"""``steer``: one steering vector on any Hugging Face causal LM, as a context
manager that removes its hooks on exit, normal or not::

    from workers import steer

    with steer(model, vector, layer=12, scale=4.0):
        out = model.generate(**inputs, max_new_tokens=30, do_sample=False)

The vector acts where every vector of this project acts: on the residual
stream entering decoder block ``layer`` (a forward pre-hook on the block),
through the same arithmetic as the optimizer and the study's evaluation
(``interventions._pre_hook``), so a stored vector applied here gives the
study's stored generations.

Which positions it touches (``tokens``) is decided per forward pass of the
model. A pass that starts a sequence (no KV-cache entries yet) holds the
prompt; a pass that extends a cached sequence holds generated tokens.

- ``"all"``: every position of every pass (prompt and generated tokens).
- ``"prompt"``: every real position of a starting pass, none of a later one.
- an ``int`` k: the last k real positions of a starting pass (§4.4 steers
  the last 20 prompt tokens).
- a ``TokenSelection`` (as a study stores it), ``positions`` included.

Real positions are those the pass's ``attention_mask`` marks (left or right
padding both work); without a mask, every position is real. Without a KV
cache (``use_cache=False``) every pass starts a sequence, so a prompt-only
selection then also touches the generated tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from workers.jobs import Intervention, TokenSelection
from workers.models.layers import normalize_layer, resolve_layers
from workers.steering.interventions import (
    KIND_CODES,
    BatchSteering,
    JobMeta,
    _pre_hook,
    params_from,
)

Tokens = str | int | TokenSelection


def token_selection(tokens: Tokens) -> TokenSelection:
    """``tokens`` as a :class:`TokenSelection` (see the module docstring).

    Raises:
        ValueError: not ``"all"``, ``"prompt"``, a positive int or a TokenSelection.
    """
    if isinstance(tokens, TokenSelection):
        return tokens
    if isinstance(tokens, bool) or not isinstance(tokens, str | int):
        raise ValueError(f"tokens must be 'all', 'prompt' or a number k, got {tokens!r}")
    if isinstance(tokens, int):
        if tokens < 1:
            raise ValueError(f"tokens k (the last k prompt positions) must be >= 1, got {tokens}")
        return TokenSelection("last_k", k=tokens)
    if tokens not in ("all", "prompt"):
        raise ValueError(f"tokens must be 'all', 'prompt' or a number k, got {tokens!r}")
    return TokenSelection(tokens)  # type: ignore[arg-type]


@dataclass
class _Steerer:
    """The hooks' shared state: the vector's packed parameters and, per
    forward pass of the model, the positions it touches."""

    params: Tensor  # (1, K, d) float32, see interventions.params_from
    meta: JobMeta
    selection: TokenSelection
    positions: Tensor | None = None  # (S, T) float mask of this pass; None: every position
    active: bool = True  # False during a pass the selection leaves alone

    def on_model(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict) -> None:
        self.active, self.positions = True, None
        ids = kwargs.get("input_ids", args[0] if args else None)
        first = ids if ids is not None else kwargs.get("inputs_embeds")
        if self.selection.mode == "all" or first is None:
            return
        S, T = int(first.shape[0]), int(first.shape[1])
        past = kwargs.get("past_key_values", kwargs.get("cache"))
        if past is not None and hasattr(past, "get_seq_length") and past.get_seq_length() > 0:
            self.active = False  # generated tokens: a prompt-only selection leaves them
            return
        mask = kwargs.get("attention_mask")
        device = self.params.device
        real = (
            torch.ones(S, T, device=device)
            if mask is None or mask.dim() != 2
            else mask[:, -T:].to(device=device, dtype=torch.float32)
        )
        self.positions = _select(self.selection, real)

    def on_block(
        self, layer: int, _module: nn.Module, args: tuple[Any, ...], kwargs: dict
    ) -> tuple[tuple[Any, ...], dict]:
        if not self.active:
            return args, kwargs
        hidden = args[0] if args else kwargs["hidden_states"]
        rows = torch.zeros(hidden.shape[0], dtype=torch.long, device=hidden.device)  # (S,)
        batch = BatchSteering(self.params, self.meta, rows, positions=self.positions)
        return _pre_hook(batch, layer, _module, args, kwargs)


def _select(sel: TokenSelection, real: Tensor) -> Tensor:
    """``(S, T)`` float mask of the real positions ``sel`` touches in a pass
    that starts a sequence; ``real`` marks the non-padding positions."""
    if sel.mode == "prompt":
        return real
    after = real.flip(1).cumsum(1).flip(1)  # real positions at or after each one
    if sel.mode == "last_k":
        return real * (after <= sel.k).to(real.dtype)
    ordinal = real.cumsum(1) - 1  # 0-based index among the row's real positions
    n = real.sum(1, keepdim=True).clamp_min(1)
    keep = torch.zeros_like(real)
    for p in sel.positions:
        keep = torch.maximum(keep, (ordinal == (p % n)).to(real.dtype))
    return real * keep


@contextmanager
def steer(
    model: nn.Module,
    vector: np.ndarray | Tensor | Sequence[float],
    layer: int | Sequence[int],
    *,
    scale: float = 1.0,
    intervention: str | Intervention = "add",
    tokens: Tokens = "all",
    clamp_coef: float = 1.0,
    layers_path: str | None = None,
    factors: tuple[np.ndarray, np.ndarray] | None = None,
) -> Iterator[nn.Module]:
    """Steer ``model`` (a loaded ``*ForCausalLM``) with ``scale * vector`` at
    ``layer`` (the input of that block; negative counts from the end; a list
    applies the same vector at each) while the block runs; yields ``model``.

    ``intervention``: ``"add"`` (x -> x + v) or ``"clamp"`` (the component of
    x along v becomes ``clamp_coef * v``, §4.1), or an ``Intervention`` as a
    study stores it (an affine one also needs its stored ``factors``, two
    ``(rank, d_model)`` arrays). ``tokens``: see the module docstring.
    ``layers_path``: where the decoder blocks are, for a family this project
    does not know (e.g. ``"model.layers"``).

    Raises:
        ValueError: the vector's width is not the model's, a layer is out of
            range, or an argument is not one of those above.
        LayerResolutionError: the model's decoder blocks cannot be found.
    """
    blocks = resolve_layers(model, layers_path)
    iv = intervention if isinstance(intervention, Intervention) else None
    if iv is None:
        if intervention not in ("add", "clamp"):
            raise ValueError(f"intervention must be 'add' or 'clamp', got {intervention!r}")
        iv = Intervention(intervention, clamp_coef=clamp_coef)  # type: ignore[arg-type]
    if iv.kind not in KIND_CODES:
        raise ValueError(f"unknown intervention {iv.kind!r}; use add, clamp or affine")
    if iv.kind == "affine" and factors is None:
        raise ValueError("an affine intervention needs its factors (a, b)")
    layers = [layer] if isinstance(layer, int) else list(layer)
    if not layers:
        raise ValueError("give at least one layer")
    try:
        where = sorted({normalize_layer(int(x), len(blocks)) for x in layers})
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    device = next(model.parameters()).device
    vec = torch.tensor(np.array(vector, np.float32), device=device).reshape(-1)
    width = int(getattr(model.config, "hidden_size", vec.shape[0]))
    if vec.shape[0] != width:
        raise ValueError(f"the vector is {vec.shape[0]} wide; the model's residual is {width}")
    vec = vec * float(scale)
    packed = None
    rank = 0
    if factors is not None:
        rank = int(np.asarray(factors[0]).shape[0])
        packed = tuple(torch.as_tensor(np.asarray(f, np.float32), device=device) for f in factors)
    params = params_from(vec, packed, rank)[None]  # type: ignore[arg-type]
    meta = JobMeta.build([where], [iv], len(blocks), device)
    state = _Steerer(params, meta, token_selection(tokens))
    handles = []
    try:
        top = getattr(model, "base_model", model)
        handles.append(top.register_forward_pre_hook(state.on_model, with_kwargs=True))
        for i in where:
            hook = partial(state.on_block, i)
            handles.append(blocks[i].register_forward_pre_hook(hook, with_kwargs=True))
        yield model
    finally:
        for handle in handles:
            handle.remove()
