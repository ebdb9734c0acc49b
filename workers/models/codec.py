"""A model's tokenizer and prompt formatting (:class:`Codec`), and a loaded,
frozen model with its decoder blocks resolved (:class:`LoadedModel`)."""

from __future__ import annotations

from typing import Any

from workers.jobs import Prompt
from workers.models.layers import resolve_layers


def context_of(config: Any) -> int:
    """The longest sequence a model config allows, in tokens (2048 if it does not say)."""
    context: Any = getattr(config, "max_position_embeddings", None)
    return int(context or getattr(config, "n_positions", None) or 2048)


class Codec:
    """A model's tokenizer and prompt formatting, without its weights.

    :class:`LoadedModel` is one; :func:`load_codec` makes one cheaply, so a
    study can check its prompts against the model's context before any actor
    loads the model.
    """

    def __init__(self, tokenizer: Any, *, model_id: str, max_context: int) -> None:
        self.tokenizer: Any = tokenizer
        self.model_id = model_id
        self.max_context = max_context

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def format_prompt(self, prompt: Prompt) -> tuple[str, bool]:
        """Return ``(text, templated)``; chat messages go through the chat template."""
        if isinstance(prompt, str):
            return prompt, False
        if not self.has_chat_template:
            raise ValueError(
                f"prompt is given as chat messages, but the tokenizer of {self.model_id} "
                f"has no chat template; give a raw string prompt instead"
            )
        messages = [{"role": role, "content": content} for role, content in prompt]
        # A final assistant turn is a prefilled reply (§5): continue it rather
        # than opening a new assistant turn after it.
        prefilled = bool(messages) and messages[-1]["role"] == "assistant"
        text = self.tokenizer.apply_chat_template(
            messages,
            add_generation_prompt=not prefilled,
            continue_final_message=prefilled,
            tokenize=False,
        )
        return str(text), True

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt. A templated prompt already holds its special tokens."""
        text, templated = self.format_prompt(prompt)
        if not text:
            raise ValueError("prompt is empty")
        ids = self.tokenizer(text, add_special_tokens=not templated)["input_ids"]
        return [int(i) for i in ids]

    def encode_target(self, text: str) -> list[int]:
        """Token ids of a completion, without special tokens, appended after a prompt."""
        ids = [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]
        if not ids:
            raise ValueError(f"target {text!r} tokenizes to nothing")
        return ids


class LoadedModel(Codec):
    """A frozen causal LM with its tokenizer and decoder blocks resolved.

    Wrap a model you loaded yourself with ``LoadedModel(model, tokenizer)``
    (it is put in eval mode and its weights are frozen, in place) to
    optimize vectors on it with :func:`workers.optimize`.

    Attributes: ``model`` (the ``*ForCausalLM``), ``tokenizer``, ``layers``
    (the ``ModuleList`` of blocks), ``n_layers``, ``d_model``, ``vocab_size``,
    ``max_context`` (tokens), ``model_id`` and ``revision`` (for result records).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_id: str | None = None,
        revision: str = "unknown",
        layers_path: str | None = None,
    ) -> None:
        # A model the caller loaded: named by where it was loaded from.
        model_id = model_id or str(
            getattr(model.config, "_name_or_path", "") or type(model).__name__
        )
        super().__init__(tokenizer, model_id=model_id, max_context=context_of(model.config))
        model.eval()
        for param in model.parameters():
            param.requires_grad_(False)
        self.model: Any = model
        self.layers = resolve_layers(model, layers_path)
        self.layers_path = layers_path
        self.revision = revision
        config = model.config
        self.n_layers = len(self.layers)
        self.d_model = int(config.hidden_size)
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        first = next(model.parameters())
        self.device = first.device
        self.dtype = first.dtype
