"""Tiny random-weight models built from a config, for tests and dry runs.

``load_model("tiny-random-llama")`` (or ``-gpt2``, ``-qwen2``, ...) builds a
2-4 layer, d_model 64 model of that family with seeded weights and a small
byte-level BPE tokenizer with a chat template. Nothing is downloaded, so these
names work on air-gapped machines, in CI and inside Ray actors.
"""

from __future__ import annotations

from typing import Any

import torch

from workers.models.codec import LoadedModel

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = (
    "The quick brown fox jumps over the lazy dog. I cannot help with that request. "
    "Sure, here is a short answer. What is the capital of France? Paris is lovely. "
    "Option A or option B: choose the safer action. Just kidding! Hello world, "
    "steering vectors move the residual stream. Thank you so much, this is wonderful!"
)


def tiny_tokenizer(vocab_size: int = 320) -> Any:
    """A deterministic byte-level BPE tokenizer with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def tiny_config(family: str, vocab_size: int, n_layers: int = 4, d_model: int = 64) -> Any:
    """A small config of a known family (llama, mistral, qwen2, gemma, gemma2, gpt2, gpt_neox)."""
    import transformers as tf

    common: dict[str, Any] = {"vocab_size": vocab_size}
    llama_like = {
        "hidden_size": d_model,
        "intermediate_size": 2 * d_model,
        "num_hidden_layers": n_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        **common,
    }
    if family == "llama":
        return tf.LlamaConfig(**llama_like)
    if family == "mistral":
        return tf.MistralConfig(**llama_like)
    if family == "qwen2":
        return tf.Qwen2Config(**llama_like)
    if family == "gemma":
        return tf.GemmaConfig(head_dim=16, **llama_like)
    if family == "gemma2":
        return tf.Gemma2Config(head_dim=16, **llama_like)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=d_model, n_layer=n_layers, n_head=4, n_positions=256, **common)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            max_position_embeddings=256,
            **common,
        )
    raise ValueError(f"no tiny config for family '{family}'")


TINY_FAMILIES = ("llama", "mistral", "qwen2", "gemma", "gemma2", "gpt2", "gpt_neox")


def tiny_model(
    family: str = "llama",
    *,
    n_layers: int = 4,
    d_model: int = 64,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> LoadedModel:
    """A seeded random-weight model of ``family`` with the tiny tokenizer."""
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    config = tiny_config(family, len(tokenizer), n_layers=n_layers, d_model=d_model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device)
    return LoadedModel(model, tokenizer, model_id=f"tiny-random-{family}", revision=f"seed{seed}")
