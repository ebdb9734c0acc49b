"""Export to safetensors and to llama.cpp control-vector GGUF files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from safetensors import safe_open

from orchestrator.store import StoreWriter, export_vectors, vector_id

from .factories import D_MODEL, TrialData, make_context, make_trial, write_study


def _field_value(reader: GGUFReader, name: str) -> object:
    f = reader.get_field(name)
    assert f is not None, name
    return f.contents()


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, list[TrialData]]:
    ctx = make_context()
    trials = [make_trial(ctx, 0, layer=5), make_trial(ctx, 1, layer=1)]
    write_study(StoreWriter(tmp_path / "root", ctx), trials)
    return tmp_path / "root", trials


def test_gguf_export_opens_with_gguf_reader(
    store: tuple[Path, list[TrialData]], tmp_path: Path
) -> None:
    root, trials = store
    v0, v2 = trials[0].vectors[0], trials[0].vectors[2]  # layers (5,) and (5, 6)
    ids = [vector_id("study-a", 0, v.example_id) for v in (v0, v2)]

    one = export_vectors(root, "study-a", ids[:1], tmp_path / "v.gguf", format="gguf")
    reader = GGUFReader(one[0])
    assert _field_value(reader, "general.architecture") == "controlvector"
    assert _field_value(reader, "controlvector.model_hint") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert _field_value(reader, "controlvector.layer_count") == 1
    assert _field_value(reader, "steer_sweep.vector_id") == ids[0]
    # Project layer 5 = input of block 5 = output of block 4 = llama.cpp direction.4.
    assert [t.name for t in reader.tensors] == ["direction.4"]
    t = reader.tensors[0]
    assert t.tensor_type.name == "F32" and list(t.shape) == [D_MODEL]
    assert np.array_equal(np.asarray(t.data), v0.result.vector)

    many = export_vectors(root, "study-a", ids, tmp_path / "out", format="gguf", model_hint="llama")
    assert [p.name for p in many] == [f"{i}.gguf" for i in ids]
    reader = GGUFReader(many[1])
    assert _field_value(reader, "controlvector.model_hint") == "llama"
    assert _field_value(reader, "controlvector.layer_count") == 2
    assert sorted(t.name for t in reader.tensors) == ["direction.4", "direction.5"]
    for t in reader.tensors:
        assert np.array_equal(np.asarray(t.data), v2.result.vector)


def test_gguf_export_refuses_what_llama_cpp_cannot_load(
    store: tuple[Path, list[TrialData]], tmp_path: Path
) -> None:
    root, trials = store
    low = vector_id("study-a", 1, trials[1].vectors[0].example_id)  # layer 1
    with pytest.raises(ValueError, match=r"direction\.0"):
        export_vectors(root, "study-a", [low], tmp_path / "x.gguf", format="gguf")
    affine = vector_id("study-a", 0, trials[0].vectors[1].example_id)
    with pytest.raises(ValueError, match="'affine' intervention"):
        export_vectors(root, "study-a", [affine], tmp_path / "y.gguf", format="gguf")
    with pytest.raises(ValueError, match="no vectors with ids"):
        export_vectors(root, "study-a", ["0000000000000000"], tmp_path / "z.gguf", format="gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*"))


def test_safetensors_export(store: tuple[Path, list[TrialData]], tmp_path: Path) -> None:
    root, trials = store
    chosen = [(0, trials[0].vectors[0]), (1, trials[1].vectors[2])]
    ids = [vector_id("study-a", n, v.example_id) for n, v in chosen]
    (path,) = export_vectors(root, "study-a", ids, tmp_path / "vecs.safetensors")
    with safe_open(str(path), framework="numpy") as f:
        assert sorted(f.keys()) == sorted(ids)
        for vid, (_, v) in zip(ids, chosen, strict=True):
            arr = f.get_tensor(vid)
            assert arr.dtype == np.float32 and arr.shape == (D_MODEL,)
            assert np.array_equal(arr, v.result.vector)
        meta = f.metadata()
    info = json.loads(meta["steer_sweep.vectors"])
    assert [m["vector_id"] for m in info] == ids
    assert info[0]["layer"] == 5 and info[0]["model_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
