"""Prefix reuse: compute the blocks before the steering layer once per job.

A vector that acts at block ``l`` cannot change anything that enters block
``l``: those hidden states depend only on the tokens. The optimizer therefore
runs the model once, without gradients, up to block ``l`` (:func:`capture`),
and on every later step runs only blocks ``l..L-1`` (:func:`resume`), for
every family the layer resolver knows, because it works on the block list
alone:

- Blocks below the batch's lowest prefix layer are replaced, for the duration
  of the forward pass, by a pass-through that returns its input in the block's
  own output format (found once per model by :func:`block_output_format`).
- At each prefix layer, a pre-hook (ahead of any steering hook) swaps in the
  cached states of the rows that resume there.

- Blocks between the batch's lowest and highest prefix layer run only on the
  rows that have started (the block's batched inputs are cut to those rows),
  so rows at different layers share a batch without computing blocks below
  their own layer.

The backward pass then starts at the steering layer as well, since nothing
below it is part of the graph.

A family whose blocks cannot be passed through (the probe fails) falls back
to full forward passes, with a warning that names it.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from workers.models import LoadedModel

log = logging.getLogger(__name__)

# model -> 0 if its blocks return a bare tensor, n for an n-tuple; None: unsupported
_FORMATS: weakref.WeakKeyDictionary[nn.Module, int | None] = weakref.WeakKeyDictionary()


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the needed states are captured."""


def _hidden_arg(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(
    args: tuple[Any, ...], kwargs: dict[str, Any], hidden: Tensor
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


@torch.no_grad()
def block_output_format(lm: LoadedModel) -> int | None:
    """How a block returns its hidden states: 0 for a bare tensor, ``n`` for an
    ``n``-tuple whose first item is the states; ``None`` if it cannot be told."""
    if lm.model in _FORMATS:
        return _FORMATS[lm.model]
    seen: list[Any] = []

    def grab(_m: nn.Module, _a: Any, output: Any) -> None:
        seen.append(output)
        raise _Stop

    fmt: int | None = None
    handle = lm.layers[0].register_forward_hook(grab)
    try:
        ids = torch.zeros((1, 2), dtype=torch.long, device=lm.device)
        lm.model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    except _Stop:
        out = seen[0]
        if isinstance(out, Tensor):
            fmt = 0
        elif isinstance(out, tuple) and out and isinstance(out[0], Tensor):
            fmt = len(out)
    except Exception as exc:  # noqa: BLE001 - any failure means: no prefix reuse
        log.warning("prefix probe of %s failed: %s", lm.model_id, exc)
    finally:
        handle.remove()
    if fmt is None:
        log.warning(
            "%s: cannot pass through its blocks (%s); every step runs the full model",
            lm.model_id,
            type(lm.layers[0]).__name__,
        )
    _FORMATS[lm.model] = fmt
    return fmt


def _run_until(
    lm: LoadedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    layers: Sequence[int],
    keep: Callable[[int, Tensor], None],
) -> None:
    """One unsteered forward pass that hands the states entering each block in
    ``layers`` to ``keep(layer, states)`` and stops at the highest of them."""
    top = max(layers)

    def grab(layer: int, _m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        keep(layer, _hidden_arg(args, kwargs))
        if layer == top:
            raise _Stop

    handles = [
        lm.layers[layer].register_forward_pre_hook(partial(grab, layer), with_kwargs=True)
        for layer in sorted(set(layers))
    ]
    try:
        lm.model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def capture(
    lm: LoadedModel, input_ids: Tensor, attention_mask: Tensor, row_layer: Sequence[int]
) -> Tensor:
    """Hidden states ``(S, T, d)`` entering block ``row_layer[i]`` for each row ``i``,
    unsteered, in the model's dtype. One forward pass that stops at the highest layer."""
    S, T = input_ids.shape
    out = torch.zeros(S, T, lm.d_model, dtype=lm.dtype, device=lm.device)
    wanted = torch.tensor(list(row_layer), device=lm.device)

    def keep(layer: int, states: Tensor) -> None:
        rows = (wanted == layer).nonzero().flatten()
        out[rows] = states[rows].to(out.dtype)

    _run_until(lm, input_ids, attention_mask, row_layer, keep)
    return out


@torch.no_grad()
def capture_layers(
    lm: LoadedModel, input_ids: Tensor, attention_mask: Tensor, layers: Sequence[int]
) -> dict[int, Tensor]:
    """Hidden states ``(S, T, d)`` of every row entering each block in ``layers``,
    unsteered, in the model's dtype: one forward pass for all of them."""
    out: dict[int, Tensor] = {}

    def keep(layer: int, states: Tensor) -> None:
        out[layer] = states.to(lm.dtype).clone()

    _run_until(lm, input_ids, attention_mask, layers, keep)
    return out


def assemble(lm: LoadedModel, parts: Sequence[Tensor], shape: Sequence[int]) -> Tensor:
    """Stack per-job prefixes ``(S_j, T_j, d)`` into one right-padded ``(S, T, d)`` batch;
    ``shape`` is the batch's ``(S, T)``."""
    S, T = shape
    out = torch.zeros(S, T, lm.d_model, dtype=lm.dtype, device=lm.device)
    row = 0
    for part in parts:
        n, t = part.shape[:2]
        out[row : row + n, :t] = part
        row += n
    return out


def split(states: Tensor, seqs_per_job: Sequence[int], lengths: Sequence[int]) -> list[Tensor]:
    """The inverse of :func:`assemble`: each job's rows, trimmed to its own length."""
    out, row = [], 0
    for n, t in zip(seqs_per_job, lengths, strict=True):
        out.append(states[row : row + n, :t].clone())
        row += n
    return out


def _pass_through(fmt: int, *args: Any, **kwargs: Any) -> Any:
    hidden = _hidden_arg(args, kwargs)
    return hidden if fmt == 0 else (hidden, *([None] * (fmt - 1)))


def _take(value: Any, rows: Tensor, S: int) -> Any:
    """``value`` cut to ``rows`` along its batch dimension, if it has one of size ``S``.

    Only tensors of two or more dimensions count: a 1-D tensor (such as
    positions) of length ``S`` is not a batch."""
    if isinstance(value, Tensor) and value.dim() >= 2 and value.shape[0] == S:
        return value.index_select(0, rows)
    if isinstance(value, tuple):
        return tuple(_take(v, rows, S) for v in value)
    return value


def _rows_only(fmt: int, forward: Any, rows: Tensor, *args: Any, **kwargs: Any) -> Any:
    """Run a block on ``rows`` only; the other rows pass through unchanged."""
    hidden = _hidden_arg(args, kwargs)
    S = hidden.shape[0]
    out = forward(*_take(args, rows, S), **{k: _take(v, rows, S) for k, v in kwargs.items()})
    states = out if fmt == 0 else out[0]
    full = hidden.index_copy(0, rows, states.to(hidden.dtype))
    return full if fmt == 0 else (full, *([None] * (fmt - 1)))


def _swap_in(
    prefix: Tensor, rows: Tensor, _m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    hidden = _hidden_arg(args, kwargs)
    select = torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)
    select[rows] = True
    return _with_hidden(args, kwargs, torch.where(select[:, None, None], prefix, hidden))


@contextmanager
def resume(lm: LoadedModel, prefix: Tensor, row_layer: Sequence[int]) -> Iterator[None]:
    """Inside the block, a forward pass of the base model starts row ``i`` from
    ``prefix[i]`` at block ``row_layer[i]``: blocks below the lowest of them are
    skipped, and each block below the highest runs only the rows that have
    started, so no row computes a block below its own layer.

    Enter it *before* attaching steering hooks, or register those with
    ``prepend=False`` (the default): the swap is prepended so it always runs first.
    """
    fmt = block_output_format(lm)
    if fmt is None:
        raise RuntimeError("prefix reuse is not available for this model")
    low, top = min(row_layer), max(row_layer)
    layer_of = torch.tensor(list(row_layer), device=prefix.device)
    patched: list[tuple[nn.Module, Any]] = []
    handles = []
    try:
        for i in range(top):
            block = lm.layers[i]
            own = block.__dict__.get("forward")
            patched.append((block, own))
            if i < low:
                block.forward = partial(_pass_through, fmt)
            else:
                rows = (layer_of <= i).nonzero().flatten()
                block.forward = partial(_rows_only, fmt, own or block.forward, rows)
        for layer in sorted(set(row_layer)):
            rows = (layer_of == layer).nonzero().flatten()
            hook = partial(_swap_in, prefix, rows)
            handles.append(
                lm.layers[layer].register_forward_pre_hook(hook, with_kwargs=True, prepend=True)
            )
        yield
    finally:
        for h in handles:
            h.remove()
        for block, own in patched:
            if own is None:
                del block.forward
            else:
                block.forward = own
