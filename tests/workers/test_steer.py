"""``workers.steer`` on a model as a user holds it: ``model.generate`` under
the context manager equals the study's own steered decoding (the engine's
``greedy_decode`` with per-row steering, what the store's generations come
from), for every intervention and token selection, alone and in a padded batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers import steer
from workers.jobs import Intervention, TokenSelection, chat
from workers.steering.generate import greedy_decode
from workers.steering.vectors import SteeringVector, VectorRows

PROMPTS = [
    chat("Tell me about the weather today."),
    chat("Hi"),
    chat("Write a poem about the sea and the sky at night."),
]
N = 8
NORM = 0.5  # small enough that every selection below decodes differently
SELECTIONS = [TokenSelection("all"), TokenSelection("prompt"), TokenSelection("last_k", k=3)]


@pytest.fixture(scope="module")
def vector(tiny_llama) -> np.ndarray:
    v = np.random.default_rng(0).normal(size=tiny_llama.d_model).astype(np.float32)
    return v * NORM / np.linalg.norm(v)


def engine_decode(lm, vec: np.ndarray, kind: str, sel: TokenSelection) -> list[list[int]]:
    ids = [lm.encode_prompt(p) for p in PROMPTS]
    sv = SteeringVector("v", vec, (1,), Intervention(kind, clamp_coef=0.5), sel)  # type: ignore[arg-type]
    rows = VectorRows(lm, [sv]).rows([0] * len(ids), [len(i) for i in ids])
    return greedy_decode(lm, ids, N, rows, stop_at_eos=False)


def generate(lm, ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    out = lm.model.generate(
        ids, attention_mask=mask, max_new_tokens=N, min_new_tokens=N, do_sample=False,
        pad_token_id=lm.tokenizer.pad_token_id,
    )  # fmt: skip
    return out[:, ids.shape[1] :].tolist()


@pytest.mark.parametrize("kind", ["add", "clamp"])
@pytest.mark.parametrize("sel", SELECTIONS, ids=lambda s: s.mode)
def test_generate_under_steer_equals_the_engines_decoding(tiny_llama, vector, kind, sel) -> None:
    lm = tiny_llama
    want = engine_decode(lm, vector, kind, sel)
    tokens = sel if sel.mode == "last_k" else sel.mode
    with steer(lm.model, vector, 1, intervention=kind, clamp_coef=0.5, tokens=tokens):
        alone = [
            generate(lm, torch.tensor([lm.encode_prompt(p)]), torch.ones(1, len(lm.encode_prompt(p)), dtype=torch.long))[0]
            for p in PROMPTS
        ]  # fmt: skip
        # One left-padded batch, as users batch generation.
        ids = [lm.encode_prompt(p) for p in PROMPTS]
        width = max(map(len, ids))
        pad = int(lm.tokenizer.pad_token_id)
        batch = torch.tensor([[pad] * (width - len(i)) + i for i in ids])
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
        batched = generate(lm, batch, mask)
        # The project's own decoding (right-padded, KV cache), as `try` runs it.
        right = greedy_decode(lm, ids, N, stop_at_eos=False)
    assert alone == want
    assert batched == want
    assert right == want


def test_the_selections_decode_differently(tiny_llama, vector) -> None:
    """The equality above would hold for a hook that ignores the selection
    only if the selections agreed; they do not."""
    outs = {s.mode: engine_decode(tiny_llama, vector, "add", s)[0] for s in SELECTIONS}
    plain = greedy_decode(tiny_llama, [tiny_llama.encode_prompt(PROMPTS[0])], N, stop_at_eos=False)
    assert len({tuple(o) for o in [*outs.values(), plain[0]]}) == 4


def test_scale_and_negative_layers(tiny_llama, vector) -> None:
    lm = tiny_llama
    ids = torch.tensor([lm.encode_prompt(PROMPTS[0])])
    with steer(lm.model, vector * 2, -3):  # layer 1 of 4
        twice = lm.model(ids).logits
    with steer(lm.model, vector, 1, scale=2.0):
        scaled = lm.model(ids).logits
    torch.testing.assert_close(twice, scaled)


@pytest.mark.real_model
def test_the_python_example_steers_a_model_the_user_loaded(smollm2) -> None:
    """examples/python/steer_your_model.py as a user runs it: a model loaded
    with transformers, a vector optimized on it, applied with ``steer``."""
    import subprocess
    import sys
    from pathlib import Path

    from workers.models import ModelSpec
    from workers.models.sources import resolve_source

    root = Path(__file__).resolve().parents[2]
    folder = resolve_source(ModelSpec("smollm2-135m-instruct"))[0]
    done = subprocess.run(
        [sys.executable, str(root / "examples" / "python" / "steer_your_model.py"), folder],
        capture_output=True, text=True, timeout=600, cwd=root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(":", 1) for line in done.stdout.splitlines() if ":" in line)
    first, last = done.stdout.split("loss ")[1].split(" hartleys")[0].split(" -> ")
    assert float(last) < float(first)
    assert lines["steered"].strip() != lines["unsteered"].strip()
    assert "sorry" in lines["steered"].lower() and "sorry" not in lines["unsteered"].lower()
