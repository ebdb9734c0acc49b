"""Transfer metrics: how a one-shot vector acts on held-out examples.

Every metric is batched over (vector, example) pairs and returns tidy
:class:`TransferRow` s: vector id, example id, metric, steered value,
unsteered value, success. Values are in the unit of ``log_base`` (base 10:
hartleys) unless the metric says otherwise.

Metrics (docs/methods.md, "Transfer metrics"):
- ``target_logprob:<kind>:<i>``: teacher-forced log-probability of target ``i``.
- ``choice_flip:+`` / ``choice_flip:-``: does adding (``+``) or subtracting
  (``-``) the vector flip the argmax between single-token choices (§3)?
- ``judge:<name>``: a judge's verdict on a greedy generation (§4, §5.2).
- ``side_effect_kl``: KL(steered || unsteered) of the next-token distribution
  on neutral prompts (not in the paper; for tuning the norm).
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from workers.evaluation.judges import Judge
from workers.evaluation.rows import Generation, TransferRow  # plain data, re-exported
from workers.examples import Example
from workers.jobs import (
    Intervention,
    Prompt,
    ScoredPrompt,
    Target,
    TokenSelection,
    VectorJob,
)
from workers.models import LoadedModel
from workers.steering.encoding import EncodedJob, collate, encode_job, pad_right
from workers.steering.generate import greedy_decode, next_token_logprobs, stop_reason
from workers.steering.interventions import BatchSteering
from workers.steering.losses import final_hidden, logits_at, token_logprobs
from workers.steering.prefix import assemble, block_output_format, capture_layers, resume, split
from workers.steering.vectors import SteeringVector, VectorRows


@dataclass(frozen=True)
class Decoded:
    """One decoded continuation: its text (special tokens dropped), how many
    tokens were generated (the end-of-sequence token not counted) and why it
    stopped (``eos`` or ``length``)."""

    text: str
    tokens: int
    stop: str


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


class PrefixCache:
    """Unsteered hidden states entering a block, per (example id, layer), kept
    across evaluation calls (least recently used first out, up to
    ``max_bytes``): a worker that evaluates vectors as they finish, a few at a
    time, computes each example's prefix at each layer once."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, int], Tensor] = OrderedDict()
        self._bytes = 0

    def get(self, key: tuple[str, int]) -> Tensor | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: tuple[str, int], value: Tensor) -> None:
        if key in self._items:
            self._bytes -= self._items.pop(key).nbytes
        self._items[key] = value
        self._bytes += value.nbytes
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.nbytes

    def __len__(self) -> int:
        return len(self._items)


@torch.no_grad()
def _prefixes(
    lm: LoadedModel,
    encoded: dict[str, EncodedJob],
    layers: dict[str, set[int]],
    batch_size: int,
    cache: PrefixCache,
) -> None:
    """Put into ``cache`` the unsteered states entering each block of
    ``layers[key]``, per (key of ``encoded``, layer), from one forward pass
    per chunk of jobs; pairs already cached are not computed again.

    They are shared by every vector steering at that layer (prefix reuse)."""
    pad = int(lm.tokenizer.pad_token_id or 0)
    todo = {k: {la for la in layers[k] if cache.get((k, la)) is None} for k in sorted(encoded)}
    keys = [k for k, missing in todo.items() if missing]
    for chunk in _chunks(len(keys), batch_size):
        names = [keys[i] for i in chunk]
        jobs = [encoded[k] for k in names]
        wanted = sorted(set().union(*(todo[k] for k in names)))
        batch = collate(jobs, pad, lm.device)
        states = capture_layers(lm, batch.input_ids, batch.attention_mask, wanted)
        lengths = [max(len(s.ids) for s in e.seqs) for e in jobs]
        for layer, at_layer in states.items():
            parts = split(at_layer, [len(e.seqs) for e in jobs], lengths)
            for name, part in zip(names, parts, strict=True):
                cache.put((name, layer), part)


@torch.no_grad()
def _target_logprobs(
    lm: LoadedModel,
    encoded: Sequence[EncodedJob],
    steer: tuple[VectorRows, Sequence[int], Sequence[str]] | None,
    coldness: float,
    batch_size: int,
    cache: PrefixCache | None = None,
) -> list[list[float]]:
    """Natural-log probability of every target of every encoded job, per job.

    ``steer`` is ``(vectors, vector of each job, example id of each job)``:
    jobs of one example share its token ids, so the blocks below a vector's
    layer run once per (example, layer) rather than once per pair (and, with
    ``cache``, once per worker).
    """
    out: list[list[float]] = []
    pad = int(lm.tokenizer.pad_token_id or 0)
    cold = torch.full((len(encoded),), coldness, device=lm.device)
    reuse = steer is not None and block_output_format(lm) is not None
    cache = cache if cache is not None else PrefixCache()
    if steer is not None and reuse:
        pairs, vec_idx, ex_ids = steer
        by_example = {e: encoded[i] for i, e in enumerate(ex_ids)}
        layers: dict[str, set[int]] = {e: set() for e in by_example}
        for v, e in zip(vec_idx, ex_ids, strict=True):
            layers[e].add(min(pairs.vectors[v].layers))
        _prefixes(lm, by_example, layers, batch_size, cache)
    for chunk in _chunks(len(encoded), batch_size):
        batch = collate([encoded[i] for i in chunk], pad, lm.device)
        if steer is None:
            hidden = final_hidden(lm, batch.input_ids, batch.attention_mask, None)
        else:
            pairs, vec_idx, ex_ids = steer
            params, meta = pairs.select([vec_idx[i] for i in chunk])
            bsteer = BatchSteering(params, meta, batch.row_job, positions=batch.positions)
            if reuse:
                firsts_of = [min(pairs.vectors[vec_idx[i]].layers) for i in chunk]
                parts = [cache.get((ex_ids[i], f)) for i, f in zip(chunk, firsts_of, strict=True)]
                if any(p is None for p in parts):  # evicted between capture and use
                    _prefixes(lm, by_example, layers, batch_size, cache)
                    parts = [
                        cache.get((ex_ids[i], f)) for i, f in zip(chunk, firsts_of, strict=True)
                    ]
                prefix = assemble(lm, [p for p in parts if p is not None], batch.input_ids.shape)
                row_layer = [
                    f for i, f in zip(chunk, firsts_of, strict=True) for _ in encoded[i].seqs
                ]
                with resume(lm, prefix, row_layer):
                    hidden = final_hidden(lm, batch.input_ids, batch.attention_mask, bsteer)
            else:
                hidden = final_hidden(lm, batch.input_ids, batch.attention_mask, bsteer)
        lp = token_logprobs(lm, hidden, batch, cold[: len(chunk)])
        per_term = torch.zeros(batch.term_job.shape[0], device=lm.device).index_add(
            0, batch.tok_term, lp
        )
        term_job = batch.term_job.tolist()
        values = per_term.tolist()
        for j in range(len(chunk)):
            out.append([v for v, jj in zip(values, term_job, strict=True) if jj == j])
    return out


def _example_job(ex: Example, vec: SteeringVector | None) -> VectorJob:
    targets = tuple(Target(text, "promote") for text, _, _ in ex.targets())
    return VectorJob(
        job_id=ex.id,
        prompts=(ScoredPrompt(ex.prompt, targets),),
        layers=vec.layers if vec else (0,),
        tokens=vec.tokens if vec else TokenSelection(),
        intervention=vec.intervention if vec else Intervention(),
    )


def target_logprobs(
    lm: LoadedModel,
    vectors: Sequence[SteeringVector],
    examples: Sequence[Example],
    *,
    coldness: float = 0.7,
    log_base: float = 10.0,
    batch_size: int = 32,
    unsteered_cache: dict[tuple[str, float], list[float]] | None = None,
    prefix_cache: PrefixCache | None = None,
) -> list[TransferRow]:
    """Teacher-forced target log-probabilities, steered against unsteered.

    ``unsteered_cache`` (keyed by example id and coldness) lets a long-lived
    worker compute each example's unsteered values once; ``prefix_cache`` the
    unsteered states below each vector's layer.

    Success per target: the example's threshold is met when it has one
    (promote: steered >= threshold; suppress: steered <= threshold), else the
    value moved the right way (promote: up; suppress: down).
    """
    scored = [ex for ex in examples if ex.promote or ex.suppress]
    base_enc = [encode_job(lm, _example_job(ex, None)) for ex in scored]
    # Unsteered values depend only on the example: computed once per cache.
    cache = {} if unsteered_cache is None else unsteered_cache
    missing = [i for i, ex in enumerate(scored) if (ex.id, coldness) not in cache]
    fresh = _target_logprobs(lm, [base_enc[i] for i in missing], None, coldness, batch_size)
    for i, values in zip(missing, fresh, strict=True):
        cache[(scored[i].id, coldness)] = values
    unsteered = [cache[(ex.id, coldness)] for ex in scored]
    # A prefix is keyed by the example and its exact token ids (its targets).
    names = [f"{ex.id}:{hash(tuple(tuple(q.ids) for q in e.seqs))}" for ex, e in zip(scored, base_enc, strict=True)]  # fmt: skip
    pair_enc, vec_idx, pair_ex, pair_name = [], [], [], []
    for vi, vec in enumerate(vectors):
        for ei, ex in enumerate(scored):
            # Same tokens as the unsteered pass; only the steering settings differ.
            pair_enc.append(dataclasses.replace(base_enc[ei], job=_example_job(ex, vec)))
            vec_idx.append(vi)
            pair_ex.append(ei)
            pair_name.append(names[ei])
    steer = (VectorRows(lm, vectors), vec_idx, pair_name)
    steered = _target_logprobs(lm, pair_enc, steer, coldness, batch_size, prefix_cache)
    scale = 1.0 / math.log(log_base)
    rows = []
    for values, vi, ei in zip(steered, vec_idx, pair_ex, strict=True):
        ex = scored[ei]
        for k, (_, kind, threshold) in enumerate(ex.targets()):
            s, u = values[k] * scale, unsteered[ei][k] * scale
            if threshold is not None:
                ok = s >= threshold if kind == "promote" else s <= threshold
            else:
                ok = s > u if kind == "promote" else s < u
            counter = k if kind == "promote" else k - len(ex.promote)
            rows.append(
                TransferRow(
                    vectors[vi].vector_id, ex.id, f"target_logprob:{kind}:{counter}", s, u, ok
                )
            )
    return rows


def choice_flips(
    lm: LoadedModel,
    vectors: Sequence[SteeringVector],
    examples: Sequence[Example],
    *,
    batch_size: int = 32,
) -> list[TransferRow]:
    """§3 choice-flip rates: does ``+v`` or ``-v`` change the argmax among the choices?

    Values are the margin ``log P(ref) - log P(best other)`` in nats at the
    answer position, where ``ref`` is the unsteered argmax; success means the
    steered margin is negative (the answer flipped). Group the rows by the
    example's ``group`` and the sign to get +benign, -harmful, and so on.
    """
    chosen = [ex for ex in examples if len(ex.choices) >= 2]
    prompts = [lm.encode_prompt(ex.prompt) for ex in chosen]
    choice_ids = []
    for ex in chosen:
        ids = [lm.encode_target(c) for c in ex.choices]
        if any(len(i) != 1 for i in ids):
            raise ValueError(f"example '{ex.id}': every choice must be a single token")
        choice_ids.append([i[0] for i in ids])
    last = [[len(p) - 1] for p in prompts]
    base = [
        lp[0]
        for b in _chunks(len(chosen), batch_size)
        for lp in next_token_logprobs(lm, [prompts[i] for i in b], [last[i] for i in b], None)
    ]
    ref = [int(torch.argmax(base[i][choice_ids[i]])) for i in range(len(chosen))]

    def margin(lp: Tensor, i: int) -> float:
        scores = lp[choice_ids[i]]
        others = torch.cat([scores[: ref[i]], scores[ref[i] + 1 :]])
        return float(scores[ref[i]] - others.max())

    pairs = VectorRows(lm, vectors)
    rows: list[TransferRow] = []
    todo = [
        (vi, ei, sign)
        for vi in range(len(vectors))
        for ei in range(len(chosen))
        for sign in (1.0, -1.0)
    ]
    for b in _chunks(len(todo), batch_size):
        items = [todo[i] for i in b]
        steer = pairs.rows([vi for vi, _, _ in items], [len(prompts[ei]) for _, ei, _ in items])
        steer.sign = torch.tensor([s for _, _, s in items], device=lm.device)
        out = next_token_logprobs(
            lm, [prompts[ei] for _, ei, _ in items], [last[ei] for _, ei, _ in items], steer
        )
        for (vi, ei, sign), lp in zip(items, out, strict=True):
            m, m0 = margin(lp[0], ei), margin(base[ei], ei)
            name = "choice_flip:+" if sign > 0 else "choice_flip:-"
            rows.append(TransferRow(vectors[vi].vector_id, chosen[ei].id, name, m, m0, m < 0))
    return rows


def generations(
    lm: LoadedModel,
    vectors: Sequence[SteeringVector],
    examples: Sequence[Example],
    *,
    n_tokens: int = 32,
    batch_size: int = 32,
    plain_cache: dict[tuple[str, int], Decoded] | None = None,
) -> list[Generation]:
    """Greedy steered and unsteered generations for every (vector, example) pair.

    ``plain_cache`` keeps unsteered continuations by (example id, tokens)
    across calls: an example's unsteered generation does not depend on the
    vector, so it is decoded once per worker and shared by every vector."""
    prompts = [lm.encode_prompt(ex.prompt) for ex in examples]
    cache = {} if plain_cache is None else plain_cache
    missing = [i for i, ex in enumerate(examples) if (ex.id, n_tokens) not in cache]
    for b in _chunks(len(missing), batch_size):
        idx = [missing[i] for i in b]
        outs = greedy_decode(lm, [prompts[i] for i in idx], n_tokens)
        for i, o in zip(idx, outs, strict=True):
            cache[(examples[i].id, n_tokens)] = decoded(lm, o)
    plain = [cache[(ex.id, n_tokens)] for ex in examples]
    pairs = VectorRows(lm, vectors)
    todo = [(vi, ei) for vi in range(len(vectors)) for ei in range(len(examples))]
    result = []
    for b in _chunks(len(todo), batch_size):
        items = [todo[i] for i in b]
        steer = pairs.rows([vi for vi, _ in items], [len(prompts[ei]) for _, ei in items])
        outs = greedy_decode(lm, [prompts[ei] for _, ei in items], n_tokens, steer)
        for (vi, ei), o in zip(items, outs, strict=True):
            s, u = decoded(lm, o), plain[ei]
            result.append(
                Generation(
                    vectors[vi].vector_id,
                    examples[ei].id,
                    s.text,
                    u.text,
                    s.tokens,
                    u.tokens,
                    s.stop,
                    u.stop,
                    n_tokens,
                )
            )
    return result


def decoded(lm: LoadedModel, tokens: Sequence[int]) -> Decoded:
    """Text, token count and stop reason of tokens from ``greedy_decode``."""
    stop = stop_reason(tokens, lm.tokenizer.eos_token_id)
    n = len(tokens) - (1 if stop == "eos" else 0)
    return Decoded(lm.tokenizer.decode(list(tokens), skip_special_tokens=True), n, stop)


def judged(
    gens: Sequence[Generation], examples: Sequence[Example], judge: Judge
) -> list[TransferRow]:
    """Apply ``judge`` to steered and unsteered generations: ``judge:<name>`` rows (1.0 = yes)."""
    by_id = {ex.id: ex for ex in examples}
    prompts = [by_id[g.example_id].prompt for g in gens]
    steered = judge(prompts, [g.steered for g in gens])
    unsteered = judge(prompts, [g.unsteered for g in gens])
    return [
        TransferRow(g.vector_id, g.example_id, f"judge:{judge.name}", float(s), float(u), bool(s))
        for g, s, u in zip(gens, steered, unsteered, strict=True)
    ]


@torch.no_grad()
def side_effect_kl(
    lm: LoadedModel,
    vectors: Sequence[SteeringVector],
    prompts: Sequence[Prompt],
    *,
    log_base: float = 10.0,
    max_kl: float = 0.1,
    batch_size: int = 32,
) -> list[TransferRow]:
    """KL(steered || unsteered) of the next-token distribution after each neutral prompt.

    Rows have example ids ``neutral:<i>``; success means KL <= ``max_kl``.
    """
    ids = [lm.encode_prompt(p) for p in prompts]
    last = [[len(i) - 1] for i in ids]
    base = next_token_logprobs(lm, ids, last, None)
    pairs = VectorRows(lm, vectors)
    todo = [(vi, pi) for vi in range(len(vectors)) for pi in range(len(ids))]
    rows = []
    for b in _chunks(len(todo), batch_size):
        items = [todo[i] for i in b]
        steer = pairs.rows([vi for vi, _ in items], [len(ids[pi]) for _, pi in items])
        out = next_token_logprobs(
            lm, [ids[pi] for _, pi in items], [last[pi] for _, pi in items], steer
        )
        for (vi, pi), lp in zip(items, out, strict=True):
            q = base[pi][0]
            kl = float((lp[0].exp() * (lp[0] - q)).sum()) / math.log(log_base)
            rows.append(
                TransferRow(
                    vectors[vi].vector_id, f"neutral:{pi}", "side_effect_kl", kl, 0.0, kl <= max_kl
                )
            )
    return rows


@torch.no_grad()
def surprisal_per_token(
    base_lm: LoadedModel,
    context: Sequence[str],
    texts: Sequence[str],
    *,
    log_base: float = 2.0,
    batch_size: int = 16,
) -> list[float]:
    """§2.2: ``-log B(x | C) / |x|`` for each text ``x`` under a base model (bits by default).

    The context texts are joined by blank lines and put before each ``x``.
    """
    prefix = base_lm.encode_prompt("\n\n".join(context) + "\n\n") if context else []
    seqs, spans = [], []
    for text in texts:
        body = base_lm.encode_target(text)
        seqs.append(prefix + body)
        spans.append((len(prefix), len(body)))
    out: list[float] = []
    pad = int(base_lm.tokenizer.pad_token_id or 0)
    for b in _chunks(len(seqs), batch_size):
        ids, attn = pad_right([seqs[i] for i in b], pad, base_lm.device)
        hidden = final_hidden(base_lm, ids, attn, None)
        for row, i in enumerate(b):
            start, n = spans[i]
            if start == 0:
                start, n = 1, n - 1  # the first token has nothing to be predicted from
            if n <= 0:
                out.append(math.nan)
                continue
            logits = logits_at(base_lm, hidden[row, start - 1 : start - 1 + n])
            lp = torch.log_softmax(logits, dim=-1)
            tok = torch.tensor(seqs[i][start : start + n], device=base_lm.device)
            total = -float(lp.gather(1, tok[:, None]).sum())
            out.append(total / n / math.log(log_base))
    return out
