"""Loading a model for steering, and reading its shape and tokenizer without
its weights (so a study is checked before any actor loads the model)."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workers.models.codec import Codec, LoadedModel, context_of
from workers.models.sources import (
    BUNDLED_MODELS,
    bundled_gguf,
    cache_root,
    gguf_shape,
    hub_kwargs,
    hub_unreachable_hint,
    resolve_source,
)
from workers.models.spec import (
    TINY_PREFIX,
    ModelLoadError,
    ModelShape,
    ModelSpec,
    block_params,
    pick_device,
    pick_dtype,
)
from workers.models.tiny import TINY_FAMILIES, tiny_config, tiny_model, tiny_tokenizer

log = logging.getLogger(__name__)


def load_model(spec: ModelSpec | str) -> LoadedModel:
    """Load a model for steering. See :class:`ModelSpec`.

    Raises:
        ModelLoadError: the model cannot be found, read, or placed.
        LayerResolutionError: its decoder blocks cannot be found.
    """
    if isinstance(spec, str):
        spec = ModelSpec(spec)
    if spec.progress:
        return _load(spec)
    with quiet_loading():
        return _load(spec)


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No progress bars while a model loads: transformers' own are switched
    off, and bars that libraries draw with tqdm on standard error (the GGUF
    conversion's) go nowhere. Log records still reach their handlers, which
    hold the stream they were built with."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _load(spec: ModelSpec) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    device = pick_device(spec.device)
    dtype = pick_dtype(spec.dtype, device)
    if spec.name.startswith(TINY_PREFIX):
        try:
            return tiny_model(spec.name[len(TINY_PREFIX) :], dtype=dtype, device=str(device))
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
    source, revision = resolve_source(spec)
    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code, **hub_kwargs(source)}
    if spec.revision and revision not in ("local",):
        kwargs["revision"] = spec.revision
    try:
        # The config comes first: it is where custom code would be demanded,
        # so a refusal happens before any tokenizer or weight file is read.
        config = AutoConfig.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model: Any = AutoModelForCausalLM.from_pretrained(
            source, config=config, dtype=dtype, **kwargs
        )
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ModelLoadError(
                f"model '{spec.name}' needs custom code from its repository. That is off by "
                f"default; set `model.trust_remote_code: true` only if you trust it."
            ) from exc
        raise ModelLoadError(f"could not load model '{spec.name}': {exc}") from exc
    except OSError as exc:
        raise ModelLoadError(
            f"could not load model '{spec.name}': {' '.join(str(exc).split())}."
            f"{hub_unreachable_hint(kwargs)} For a hub id, check the name and "
            f"that the hub is reachable (or pre-download it); for a path, check it exists."
        ) from exc
    model.to(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(
        model, tokenizer, model_id=spec.name, revision=revision, layers_path=spec.layers_path
    )


def load_codec(spec: ModelSpec | str) -> Codec | None:
    """The model's tokenizer and context length without its weights, or ``None``
    when that needs the weights' file parsed (a GGUF not yet converted) or the
    tokenizer cannot be read here; the caller then checks on the actor."""
    from transformers import AutoConfig, AutoTokenizer

    if isinstance(spec, str):
        spec = ModelSpec(spec)
    name = spec.name
    if name.startswith(TINY_PREFIX):
        tokenizer = tiny_tokenizer()
        config = tiny_config(name[len(TINY_PREFIX) :], len(tokenizer))
        return Codec(tokenizer, model_id=name, max_context=context_of(config))
    if name in BUNDLED_MODELS:
        source = str(cache_root(spec.cache_dir) / name)
        if not (Path(source) / "config.json").is_file():
            return None
    elif name.endswith(".gguf"):
        return None
    else:
        source, _ = resolve_source(spec)
    try:
        kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
        kwargs |= hub_kwargs(source)
        config = AutoConfig.from_pretrained(source, revision=spec.revision, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, revision=spec.revision, **kwargs)
    except (OSError, ValueError) as exc:
        log.info(
            "no tokenizer for %s before loading it (%s); prompts are checked on the actor",
            name,
            exc,
        )
        return None
    return Codec(tokenizer, model_id=name, max_context=context_of(config))


def peek_shape(spec: ModelSpec | str) -> ModelShape:
    """The number of decoder blocks and the width of a model, without its weights.

    Used to validate a study (layer ranges) before any actor loads the model.

    Raises:
        ModelLoadError: the model cannot be found or its config read.
    """
    from transformers import AutoConfig

    if isinstance(spec, str):
        spec = ModelSpec(spec)
    name = spec.name
    if name.startswith(TINY_PREFIX):
        family = name[len(TINY_PREFIX) :]
        if family not in TINY_FAMILIES:
            raise ModelLoadError(
                f"unknown tiny model '{name}'; families: {', '.join(TINY_FAMILIES)}"
            )
        tiny = tiny_config(family, len(tiny_tokenizer()), n_layers=4, d_model=64)
        return config_shape(tiny, name)
    if name in BUNDLED_MODELS:
        cached = cache_root(spec.cache_dir) / name
        if not (cached / "config.json").is_file():
            return gguf_shape(bundled_gguf(name))
        source = str(cached)
    elif name.endswith(".gguf"):
        return gguf_shape(Path(name).expanduser())
    else:
        source, _ = resolve_source(spec)
    hub = hub_kwargs(source)
    try:
        config = AutoConfig.from_pretrained(
            source, trust_remote_code=spec.trust_remote_code, revision=spec.revision, **hub
        )
    except ValueError as exc:
        raise ModelLoadError(f"could not read the config of '{name}': {exc}") from exc
    except OSError as exc:
        text = " ".join(str(exc).split())  # transformers' message spans several lines
        if not Path(source).expanduser().exists():  # a hub id, not a local folder
            text += hub_unreachable_hint(hub) + (
                ". A hub id needs the hub or the local Hugging Face cache (HF_HOME); on a "
                "machine without network, download the model once where the hub is reachable, "
                "or give model.name a local folder (HF_HUB_OFFLINE=1 skips the retries)"
            )
        raise ModelLoadError(f"could not read the config of '{name}': {text}") from exc
    return config_shape(config, name)


def config_shape(config: Any, name: str) -> ModelShape:
    """The shape of the ``transformers`` config of model ``name``.

    Raises:
        ModelLoadError: the config names no layer count or width.
    """
    n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if not n_layers or not width:
        raise ModelLoadError(f"the config of '{name}' names no layer count or width")
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    ffn = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
    params = block_params(
        d_model=int(width),
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None),
        head_dim=getattr(config, "head_dim", None),
        ffn=ffn,
        family=str(getattr(config, "model_type", "")),
    )
    vocab = getattr(config, "vocab_size", None)
    return ModelShape(int(n_layers), int(width), params, int(vocab) if vocab else None)
