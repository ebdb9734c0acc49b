"""Layer resolution for every listed family, on tiny random configs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workers.models.layers import LayerResolutionError, normalize_layer, resolve_layers
from workers.models.tiny import TINY_FAMILIES, tiny_config, tiny_model

EXPECTED_BLOCK = {
    "llama": "LlamaDecoderLayer",
    "mistral": "MistralDecoderLayer",
    "qwen2": "Qwen2DecoderLayer",
    "gemma": "GemmaDecoderLayer",
    "gemma2": "Gemma2DecoderLayer",
    "gpt2": "GPT2Block",
    "gpt_neox": "GPTNeoXLayer",
}


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_family_resolves_to_its_decoder_blocks(family: str) -> None:
    lm = tiny_model(family, n_layers=3)
    assert lm.n_layers == 3
    assert all(type(block).__name__ == EXPECTED_BLOCK[family] for block in lm.layers)
    # The hook point is really on the path of the forward pass: a pre-hook on
    # every block fires once per forward.
    calls: list[int] = []
    handles = [
        block.register_forward_pre_hook(lambda *_a, i=i: calls.append(i))
        for i, block in enumerate(lm.layers)
    ]
    try:
        lm.model(input_ids=torch.tensor([[1, 2, 3]]))
    finally:
        for h in handles:
            h.remove()
    assert calls == [0, 1, 2]


def test_unknown_family_names_the_config_key() -> None:
    class Weird(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = type("C", (), {"model_type": "weirdformer"})()
            self.body = nn.Module()
            self.body.blocks = nn.ModuleList([nn.Linear(2, 2)])

    with pytest.raises(LayerResolutionError, match="model.layers_path") as info:
        resolve_layers(Weird())
    assert "weirdformer" in str(info.value)
    assert len(resolve_layers(Weird(), "body.blocks")) == 1
    with pytest.raises(LayerResolutionError, match="does not name"):
        resolve_layers(Weird(), "body.nothing")


def test_layers_path_overrides_a_known_family() -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(tiny_config("llama", 50, n_layers=2))
    assert resolve_layers(model, "model.layers") is model.model.layers


def test_negative_layers_count_from_the_end() -> None:
    assert normalize_layer(-1, 30) == 29
    assert normalize_layer(12, 30) == 12
    with pytest.raises(ValueError, match=r"\[0, 29\]"):
        normalize_layer(30, 30)
    with pytest.raises(ValueError, match="out of range"):
        normalize_layer(-31, 30)
