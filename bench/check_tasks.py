"""Check that each built-in task leaves room for steering on the real model.

For every built-in task, on the unsteered model (default: the bundled
SmolLM2-135M-Instruct, fp32 CPU), this prints:

- the teacher-forced log-probability of each promote and suppress target,
  ``log10 softmax(0.7 * logits)`` summed over the target's tokens (hartleys);
- the task's string-match judge on greedy generations (``--new-tokens``);
- two_choice: how often the model prefers the benign option (P(A) vs P(B) at
  the answer position), per group, and on the option-swapped copies;
- fictitious: whether the model knows each person's real occupation (the
  margin of the real occupation over the best other one, as §5.1.2 filters),
  and the promote target on the real prompt, §5's reference level.

Room for steering means: promote targets well below 0 (a vector can raise
them), suppress targets well above the floor (a vector can lower them), and a
judge rate far from where steering should push it.

    python bench/check_tasks.py [--tasks refusal two_choice] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

from orchestrator.datasets import BUILTIN_TASKS, Task, builtin_task, swap_example
from orchestrator.datasets.fictitious import OCCUPATIONS, article
from workers import load_model
from workers.jobs import Prompt
from workers.models import LoadedModel

COLDNESS, LOG_BASE = 0.7, 10.0
log = logging.getLogger("check_tasks")


@torch.no_grad()
def target_logprobs(
    lm: LoadedModel, pairs: Sequence[tuple[Prompt, str]], chunk: int = 16
) -> list[float]:
    """Teacher-forced ``sum_k log10 P(y_k | y_<k, x)`` of each (prompt, target), coldness 0.7."""
    out: list[float] = []
    pad = int(lm.tokenizer.pad_token_id or 0)
    for start in range(0, len(pairs), chunk):
        seqs, spans = [], []
        for prompt, target in pairs[start : start + chunk]:
            p, t = lm.encode_prompt(prompt), lm.encode_target(target)
            seqs.append(p + t)
            spans.append((len(p), len(t)))
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            attn[i, : len(s)] = 1
        hidden = lm.model.model(input_ids=ids, attention_mask=attn).last_hidden_state  # (S, T, d)
        for i, (n_p, n_t) in enumerate(spans):
            pos = torch.arange(n_p - 1, n_p + n_t - 1)
            logits = lm.model.lm_head(hidden[i, pos]).float()  # (n_t, vocab)
            lp = torch.log_softmax(COLDNESS * logits, dim=-1)
            tok = ids[i, n_p : n_p + n_t]
            out.append(float(lp[torch.arange(n_t), tok].sum()) / math.log(LOG_BASE))
    return out


@torch.no_grad()
def greedy(lm: LoadedModel, prompts: Sequence[Prompt], n_tokens: int, chunk: int = 16) -> list[str]:
    """Greedy continuations (left-padded batches); special tokens are dropped."""
    pad = int(lm.tokenizer.pad_token_id or 0)
    texts: list[str] = []
    for start in range(0, len(prompts), chunk):
        encoded = [lm.encode_prompt(p) for p in prompts[start : start + chunk]]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, e in enumerate(encoded):
            ids[i, width - len(e) :] = torch.tensor(e)
            attn[i, width - len(e) :] = 1
        gen = lm.model.generate(
            input_ids=ids,
            attention_mask=attn,
            max_new_tokens=n_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
        texts += lm.tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
    return texts


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def _fmt(s: dict[str, float]) -> str:
    return f"mean {s['mean']:+.2f}  median {s['median']:+.2f}  [{s['min']:+.2f}, {s['max']:+.2f}]"


def check_targets(lm: LoadedModel, task: Task) -> dict[str, Any]:
    """Unsteered target log-probabilities, overall and per target slot (``promote[0]``, ...)."""
    res: dict[str, Any] = {}
    for kind in ("promote", "suppress"):
        slots = [(ex.prompt, i, t) for ex in task.examples for i, t in enumerate(getattr(ex, kind))]
        if not slots:
            continue
        values = target_logprobs(lm, [(p, t) for p, _, t in slots])
        res[kind] = _stats(values)
        print(f"  {kind:8s} log10 P (hartleys): {_fmt(res[kind])}  (n={len(slots)})")
        n_slots = max(i for _, i, _ in slots) + 1
        for i in range(n_slots) if n_slots > 1 else ():
            sel = [v for (_, j, t), v in zip(slots, values, strict=True) if j == i]
            texts = {t for _, j, t in slots if j == i}
            label = repr(texts.pop()) if len(texts) == 1 else f"{len(texts)} texts"
            res[f"{kind}[{i}]"] = _stats(sel)
            print(f"    {kind}[{i}] {label}: {_fmt(res[f'{kind}[{i}]'])}")
    return res


def check_judge(lm: LoadedModel, task: Task, n_tokens: int) -> dict[str, Any]:
    if not (task.judge_contains_any or task.judge_lacks_all):
        return {}
    texts = greedy(lm, [ex.prompt for ex in task.examples], n_tokens)
    rate = sum(task.judge(t) for t in texts) / len(texts)
    print(f"  judge success on unsteered greedy ({n_tokens} tokens): {rate:.1%} of {len(texts)}")
    for ex, text in list(zip(task.examples, texts, strict=True))[:3]:
        print(f"    {ex.id}: {text[:90]!r}")
    return {"judge_rate": rate, "samples": texts[:5], "texts": texts}


@torch.no_grad()
def check_choices(lm: LoadedModel, task: Task) -> dict[str, Any]:
    """P(A)/P(B) at the answer position, on each example and on its swapped copy.

    Reports per group the fraction preferring the benign option, the fraction
    answering A, the mean P(A)+P(B), and the mean log10 odds A:B when A is the
    benign option and when B is: equal odds mean the choice ignores content.
    """
    res: dict[str, Any] = {}
    a_id, b_id = (lm.encode_target(c)[0] for c in task.examples[0].choices)
    rows = []
    for ex in [*task.examples, *(swap_example(ex) for ex in task.examples)]:
        ids = torch.tensor([lm.encode_prompt(ex.prompt)])
        lp = torch.log_softmax(COLDNESS * lm.model(ids).logits[0, -1].float(), dim=-1)
        odds = float(lp[a_id] - lp[b_id]) / math.log(LOG_BASE)
        mass = float(lp[a_id].exp() + lp[b_id].exp())
        rows.append((ex.group, ex.correct, odds, mass))
    for group in task.groups:
        sel = [r for r in rows if r[0] == group]
        benign = sum((r[2] > 0) == (r[1] == 0) for r in sel) / len(sel)
        says_a = sum(r[2] > 0 for r in sel) / len(sel)
        odds_a = statistics.fmean(r[2] for r in sel if r[1] == 0)
        odds_b = statistics.fmean(r[2] for r in sel if r[1] == 1)
        mass = statistics.fmean(r[3] for r in sel)
        res[group] = {
            "prefers_benign": benign,
            "answers_A": says_a,
            "mass_AB": mass,
            "log10_odds_A_B_when_A_benign": odds_a,
            "log10_odds_A_B_when_B_benign": odds_b,
        }
        print(
            f"  {group:8s} (with swapped copies, n={len(sel)}): prefers benign {benign:.1%}, "
            f"answers A {says_a:.1%}, mean P(A)+P(B) {mass:.2f}, log10 odds A:B "
            f"{odds_a:+.3f} when A is benign vs {odds_b:+.3f} when B is"
        )
    return res


def check_fictitious(lm: LoadedModel, task: Task, texts: Sequence[str]) -> dict[str, Any]:
    """Name knowledge (§5.1.2), the §5 reference level, and which attribute generations mention."""
    fake = sum(
        ex.meta["fake_occupation"] in t.lower() for ex, t in zip(task.examples, texts, strict=True)
    )
    real = sum(
        ex.meta["real_occupation"] in t.lower() for ex, t in zip(task.examples, texts, strict=True)
    )
    print(
        f"  unsteered generations mentioning the fake occupation: {fake}/{len(texts)}, "
        f"the real one: {real}/{len(texts)}"
    )
    margins = []
    for ex in task.examples:
        stem = ex.meta["real_prompt"].rsplit(" is best known for being", 1)[0]
        stem += " is best known for being"
        lps = target_logprobs(lm, [(stem, f" {article(o)} {o}") for o in OCCUPATIONS])
        real = OCCUPATIONS.index(ex.group)
        margins.append(lps[real] - max(v for i, v in enumerate(lps) if i != real))
    known = sum(m > 0 for m in margins) / len(margins)
    print(f"  real-occupation margin: {_fmt(_stats(margins))}; ranked first for {known:.0%}")
    real_pairs = [
        (ex.meta["real_prompt"], f" As {article(ex.group)} {ex.group},") for ex in task.examples
    ]
    on_real = _stats(target_logprobs(lm, real_pairs))
    print(f"  promote-style target on the REAL prompt (§5 reference): {_fmt(on_real)}")
    return {
        "mentions_fake": fake / len(texts),
        "mentions_real": real / len(texts),
        "margin": _stats(margins),
        "known": known,
        "promote_on_real": on_real,
    }


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tasks", nargs="*", default=list(BUILTIN_TASKS))
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    lm = load_model(args.model)
    report: dict[str, Any] = {"model": lm.model_id, "coldness": COLDNESS, "log_base": LOG_BASE}
    for name in args.tasks:
        t1 = time.perf_counter()
        task = builtin_task(name)
        print(f"\n== {name}: {len(task.examples)} examples, {len(task.transfer)} transfer")
        res = check_targets(lm, task)
        res |= check_judge(lm, task, args.new_tokens)
        if task.examples[0].choices:
            res["choices"] = check_choices(lm, task)
        if name == "fictitious":
            res |= check_fictitious(lm, task, res["texts"])
        res.pop("texts", None)
        report[name] = res
        print(f"  ({time.perf_counter() - t1:.0f} s)")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
