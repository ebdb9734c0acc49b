"""One resolver for the decoder blocks of a Hugging Face causal LM.

Steering hooks attach to "the residual stream entering block l", so every
family only needs to say where its list of decoder blocks lives. Known
families are keyed by ``config.model_type``; anything else can be reached by
giving ``layers_path`` (a dotted attribute path such as ``"model.layers"``),
which the study config exposes as ``model.layers_path``.
"""

from __future__ import annotations

from torch import nn

# model_type -> dotted path from the *ForCausalLM module to its ModuleList of blocks.
KNOWN_LAYER_PATHS: dict[str, str] = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "mixtral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "gemma3_text": "model.layers",
    "phi3": "model.layers",
    "olmo2": "model.layers",
    "gpt2": "transformer.h",
    "gptj": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
    "opt": "model.decoder.layers",
}


class LayerResolutionError(ValueError):
    """The decoder blocks of a model could not be found."""


def _follow(module: nn.Module, path: str) -> nn.Module | None:
    current: object = module
    for part in path.split("."):
        current = getattr(current, part, None)
        if current is None:
            return None
    return current if isinstance(current, nn.Module) else None


def resolve_layers(model: nn.Module, layers_path: str | None = None) -> nn.ModuleList:
    """Return the ``nn.ModuleList`` of decoder blocks of ``model``.

    Raises:
        LayerResolutionError: the family is unknown and no ``layers_path`` was
            given, or the path does not lead to a ``ModuleList``.
    """
    model_type = str(getattr(getattr(model, "config", None), "model_type", "?"))
    path = layers_path or KNOWN_LAYER_PATHS.get(model_type)
    if path is None:
        raise LayerResolutionError(
            f"steer-sweep does not know where the decoder blocks of model_type "
            f"'{model_type}' live. Set `model.layers_path` in the study config "
            f"(or `layers_path=` in ModelSpec) to the dotted attribute path of its "
            f"block list, e.g. 'model.layers' or 'transformer.h'. Known families: "
            f"{', '.join(sorted(KNOWN_LAYER_PATHS))}."
        )
    found = _follow(model, path)
    if not isinstance(found, nn.ModuleList) or len(found) == 0:
        raise LayerResolutionError(
            f"layers_path '{path}' does not name a non-empty nn.ModuleList on this "
            f"{type(model).__name__} (model_type '{model_type}'). Fix `model.layers_path`."
        )
    return found


def normalize_layer(layer: int, n_layers: int) -> int:
    """Map a possibly negative layer index to ``[0, n_layers)``.

    Raises:
        ValueError: the index is outside ``[-n_layers, n_layers)``.
    """
    if not -n_layers <= layer < n_layers:
        raise ValueError(
            f"layer {layer} is out of range: this model has {n_layers} decoder blocks, "
            f"so a layer must be in [0, {n_layers - 1}] (or [-{n_layers}, -1] from the end)"
        )
    return layer % n_layers
