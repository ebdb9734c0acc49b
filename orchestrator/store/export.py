"""Export chosen vectors as safetensors, or as llama.cpp control vectors (GGUF).

GGUF layout (what llama.cpp's ``--control-vector`` loads, and what repeng's
``ControlVector.export_gguf`` writes): architecture ``controlvector``, string
``controlvector.model_hint``, uint32 ``controlvector.layer_count`` (the number
of direction tensors, as repeng writes it), and one 1-D float32 tensor
``direction.<il>`` of length ``n_embd`` per steered layer.

Layer index convention, checked against llama.cpp's source:

- ``common_control_vector_load_one`` rejects ``direction.0`` and stores
  ``direction.<il>`` for ``il >= 1``; ``llama_adapter_cvec::apply`` fills the
  per-layer tensors for ``il = 1 .. n_layer-1`` only.
- Every model graph calls ``build_cvec(cur, il)`` at the end of block ``il``
  (0-based), after the FFN residual add: ``direction.<il>`` is added to the
  residual stream leaving block ``il``, i.e. entering block ``il + 1``. In
  Hugging Face terms that is the output of ``model.layers[il]``
  (``hidden_states[il + 1]``), the same index repeng uses.
- This project steers the residual stream *entering* block ``l`` (a forward
  pre-hook; docs/cli.md, "export"), so a vector stored at layer ``l`` is written as
  ``direction.<l - 1>`` (``gguf_layer_offset=-1``). Layers 0 and 1 have no
  llama.cpp slot (block 0's input is the embeddings; ``direction.0`` is
  rejected) and raise ``ValueError``.
- llama.cpp control vectors are additive at every position, so only ``add``
  interventions export to GGUF; clamp and affine vectors raise ``ValueError``.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.compute as pc

from orchestrator.store import schemas as S
from orchestrator.store.reader import Study, fixed_list_to_numpy, open_study
from orchestrator.store.roots import StoreRoot

PROJECT_TO_LLAMACPP_LAYER = -1
"""Offset from this project's layer index (input of block l) to llama.cpp's
``direction.<il>`` index (output of block il)."""

_META_COLUMNS = [
    "vector_id",
    "trial",
    "example_id",
    "model_id",
    "model_revision",
    "layer",
    "layers",
    "intervention",
    "norm_bound",
    "loss_kind",
    "lr",
    "seed",
    "log_base",
    "final_loss",
    "final_norm",
    "dtype",
    "config_hash",
]


def export_vectors(
    root: str | os.PathLike[str] | StoreRoot,
    study: str,
    vector_ids: Sequence[str],
    out: str | os.PathLike[str],
    *,
    format: Literal["safetensors", "gguf"] = "safetensors",
    model_hint: str | None = None,
    gguf_layer_offset: int = PROJECT_TO_LLAMACPP_LAYER,
    endpoint_url: str | None = None,
) -> list[Path]:
    """Write the vectors ``vector_ids`` of ``study`` to local files; return their paths.

    - ``safetensors``: one file ``out``; tensor names are the vector ids,
      float32 ``(d_model,)``; ``__metadata__`` holds ``steer_sweep.vectors``,
      a JSON list of each vector's layer, model, trial, loss and settings.
    - ``gguf``: one control vector per vector id. If ``out`` ends in
      ``.gguf`` it is that file (one id only); otherwise ``out`` is a folder
      that receives ``<vector_id>.gguf`` per id. ``model_hint`` defaults to
      the stored model id.
    """
    if format not in ("safetensors", "gguf"):
        raise ValueError(f"format must be 'safetensors' or 'gguf', got {format!r}")
    ids = list(dict.fromkeys(vector_ids))
    if not ids:
        raise ValueError("no vector ids given")
    st = open_study(root, study, endpoint_url=endpoint_url)
    table = st.vectors.to_table(
        columns=[*_META_COLUMNS, "vector"], filter=pc.field("vector_id").isin(ids)
    )
    found = table["vector_id"].to_pylist()
    missing = [i for i in ids if i not in set(found)]
    if missing:
        raise ValueError(f"study {study!r} has no vectors with ids {missing[:5]}")
    mat = fixed_list_to_numpy(table["vector"])
    rows = table.drop_columns(["vector"]).to_pylist()
    # First occurrence wins should a half-finished compaction show a vector twice.
    by_id: dict[str, tuple[dict[str, Any], np.ndarray]] = {}
    for row, vec in zip(rows, mat, strict=True):
        by_id.setdefault(row["vector_id"], (row, vec))
    chosen = [by_id[i] for i in ids]
    if format == "gguf":
        bad = {
            row["vector_id"]: why
            for row, _ in chosen
            if (why := gguf_problem(row, gguf_layer_offset))
        }
        if bad:
            raise ValueError("; ".join(f"vector {vid}: {why}" for vid, why in bad.items()))
    out_path = Path(out)
    if format == "safetensors":
        _write_safetensors(out_path, study, chosen)
        return [out_path]
    if out_path.suffix == ".gguf":
        if len(chosen) != 1:
            raise ValueError(
                "a .gguf output path takes exactly one vector; pass a folder for several"
            )
        targets = [out_path]
    else:
        out_path.mkdir(parents=True, exist_ok=True)
        targets = [out_path / f"{row['vector_id']}.gguf" for row, _ in chosen]
    for path, (row, vec) in zip(targets, chosen, strict=True):
        _write_gguf(path, row, vec, model_hint or row["model_id"], gguf_layer_offset)
    return targets


def _write_safetensors(
    path: Path, study: str, chosen: list[tuple[dict[str, Any], np.ndarray]]
) -> None:
    from safetensors.numpy import save_file

    meta = {
        "format": "steer-sweep-vectors",
        "steer_sweep.schema_version": str(S.SCHEMA_VERSION),
        "steer_sweep.code_version": S.code_version(),
        "steer_sweep.study": study,
        "steer_sweep.vectors": json.dumps([row for row, _ in chosen], default=str),
    }
    tensors = {row["vector_id"]: np.ascontiguousarray(vec, np.float32) for row, vec in chosen}
    _atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def gguf_problem(row: dict[str, Any], offset: int = PROJECT_TO_LLAMACPP_LAYER) -> str | None:
    """Why the vector of ``row`` (a ``vectors`` row) cannot be a llama.cpp
    control vector, or None when it can."""
    if row["intervention"] != "add":
        return (
            f"it uses the {row['intervention']!r} intervention; llama.cpp control vectors are "
            "additive, so only 'add' vectors export to GGUF"
        )
    for layer in row["layers"]:
        il = int(layer) + offset
        if il < 1:
            return (
                f"it is at layer {layer}, which maps to llama.cpp direction.{il}; llama.cpp "
                "control vectors start at direction.1"
            )
    return None


def check_exportable(
    study: Study, vector_ids: Sequence[str], format: str = "safetensors"
) -> dict[str, str]:
    """The ids among ``vector_ids`` that cannot be exported in ``format``, with why
    (not in the study; for GGUF, not additive or at a layer llama.cpp lacks)."""
    ids = list(dict.fromkeys(vector_ids))
    if not ids:
        return {}
    table = study.vectors.to_table(
        columns=["vector_id", "intervention", "layers"], filter=pc.field("vector_id").isin(ids)
    )
    rows = {r["vector_id"]: r for r in table.to_pylist()}
    out = {}
    for vid in ids:
        if vid not in rows:
            out[vid] = f"study {study.name!r} has no vector with this id"
        elif format == "gguf" and (why := gguf_problem(rows[vid])) is not None:
            out[vid] = why
    return out


def _write_gguf(path: Path, row: dict[str, Any], vec: np.ndarray, hint: str, offset: int) -> None:
    import gguf

    why = gguf_problem(row, offset)
    if why is not None:
        raise ValueError(f"vector {row['vector_id']}: {why}")
    slots = [int(layer) + offset for layer in row["layers"]]

    def write(tmp: Path) -> None:
        w = gguf.GGUFWriter(str(tmp), "controlvector")
        w.add_string("controlvector.model_hint", hint)
        w.add_uint32("controlvector.layer_count", len(slots))
        w.add_string("steer_sweep.vector_id", row["vector_id"])
        w.add_string("steer_sweep.model_id", row["model_id"])
        w.add_string("steer_sweep.model_revision", row["model_revision"])
        w.add_int32("steer_sweep.layer", int(row["layer"]))
        w.add_int32("steer_sweep.gguf_layer_offset", offset)
        w.add_string("steer_sweep.code_version", S.code_version())
        for il in slots:
            w.add_tensor(f"direction.{il}", np.ascontiguousarray(vec, np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    _atomic(path, write)


@dataclass(frozen=True)
class ControlVector:
    """A llama.cpp control vector read back (:func:`read_control_vector`):
    ``directions`` maps this project's layer index (the input of block
    ``l``) to its ``(n_embd,)`` float32 direction; ``model_hint`` is the
    file's ``controlvector.model_hint``; ``vector_id`` the stored vector's
    id when steer-sweep wrote the file, else the file's stem."""

    directions: dict[int, np.ndarray]
    model_hint: str | None
    vector_id: str


def read_control_vector(path: str | os.PathLike[str]) -> ControlVector:
    """Read a GGUF control vector (written by ``export --format gguf``,
    repeng's ``export_gguf`` or llama.cpp's tools): ``direction.<il>`` becomes
    layer ``il`` minus the file's ``steer_sweep.gguf_layer_offset`` (this
    project's -1 when the file does not say), the inverse of the export.

    Raises:
        ValueError: the file is not a readable GGUF control vector.
    """
    import gguf

    p = Path(path)
    try:
        reader = gguf.GGUFReader(str(p))
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{p} is not a readable GGUF file ({exc})") from None
    arch = _gguf_field(reader, "general.architecture")
    if arch != "controlvector":
        raise ValueError(f"{p} is a GGUF file of architecture {arch!r}, not a control vector")
    offset = _gguf_field(reader, "steer_sweep.gguf_layer_offset")
    offset = PROJECT_TO_LLAMACPP_LAYER if offset is None else int(offset)
    directions: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        name = str(tensor.name)
        if not name.startswith("direction.") or not name[len("direction.") :].isdigit():
            continue
        layer = int(name[len("direction.") :]) - offset
        directions[layer] = np.array(tensor.data, np.float32).reshape(-1)
    if not directions:
        raise ValueError(f"{p} holds no direction.<layer> tensors")
    hint = _gguf_field(reader, "controlvector.model_hint")
    vid = _gguf_field(reader, "steer_sweep.vector_id")
    return ControlVector(
        dict(sorted(directions.items())),
        None if hint is None else str(hint),
        str(vid) if vid is not None else p.stem,
    )


def _gguf_field(reader: Any, key: str) -> Any:
    """A scalar or string field of a GGUF file, or None when it is absent."""
    import gguf

    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    value = field.parts[field.data[0]]
    if field.types and field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(value).decode("utf-8")
    return value[0].item() if hasattr(value[0], "item") else value[0]


def _atomic(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        write(tmp)
        # Writers create their temporary file with their own mode (safetensors
        # 0600, gguf 0644): every exported file gets a new file's mode instead.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
