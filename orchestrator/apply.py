"""Apply a stored vector to prompts and compare with the unsteered model
(``steer-sweep try``).

A vector is applied as it was trained: its intervention (add or clamp, with
the trial's clamp coefficient; affine factors when it has them), its layers,
and its trial's token selection, all read back from the store (the
``vectors`` row, the trial's parameters and the study's stored model
config). ``scale`` multiplies the vector: -1 is the paper's negation (§3);
0 means no steering at all (for a clamp, a zero vector has no direction to
clamp, so "unsteered" is what 0 can only mean). A vector exported to
safetensors applies the same way, with the layer and model given by hand
where the file does not say them.

Generation is greedy by default (the same decoding, KV cache and steering
code as the study's evaluation, so a held-out prompt gives the stored
``generations`` text); a temperature above 0 samples, with one seeded
generator per side so a run repeats.

May import: ``orchestrator.store``, ``orchestrator.study``, ``workers`` (a
model is loaded here, so torch too).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.store import Study
from orchestrator.store.reader import fixed_list_to_numpy

if TYPE_CHECKING:
    from workers.jobs import Prompt
    from workers.models import LoadedModel, ModelSpec
    from workers.steering.vectors import SteeringVector

log = logging.getLogger(__name__)


class TryError(ValueError):
    """What the user asked for cannot be tried (unknown id, bad file, bad setting)."""


@dataclass(frozen=True)
class TryVector:
    """A vector ready to apply, with where it came from (for the output)."""

    vector: SteeringVector
    model: str  # a bundled name, path or hub id: what load_model takes
    label: str  # e.g. "study s, trial 3, layer 12, add"
    # Further per-layer directions applied together with ``vector`` (a
    # llama.cpp control vector holds one direction per layer).
    extra_layers: tuple[SteeringVector, ...] = ()

    @property
    def parts(self) -> tuple[SteeringVector, ...]:
        return (self.vector, *self.extra_layers)


@dataclass(frozen=True)
class Continuation:
    prompt: str
    unsteered: str
    steered: str
    unsteered_tokens: int
    steered_tokens: int
    unsteered_stop: str
    steered_stop: str


# ---------------------------------------------------------------- vectors


def stored_vectors(study: Study, vector_ids: Sequence[str]) -> list[TryVector]:
    """The study's vectors ``vector_ids``, each as it was trained.

    Raises:
        TryError: an id is not in the study (the message names a few that are).
    """
    import pyarrow.compute as pc

    from orchestrator.study.params import TrialParams
    from workers.jobs import Intervention
    from workers.steering.vectors import SteeringVector

    ids = list(dict.fromkeys(vector_ids))
    cols = ["vector_id", "trial", "layers", "intervention", "affine_rank", "affine_a",
            "affine_b", "model_id", "vector"]  # fmt: skip
    table = study.vectors.to_table(columns=cols, filter=pc.field("vector_id").isin(ids))
    rows = {r["vector_id"]: r for r in table.drop_columns(["vector"]).to_pylist()}
    mats = dict(
        zip(table["vector_id"].to_pylist(), fixed_list_to_numpy(table["vector"]), strict=True)
    )
    missing = [i for i in ids if i not in rows]
    if missing:
        some = study.vectors.to_table(columns=["vector_id"]).column(0).to_pylist()[:5]
        hint = f"; some that are: {', '.join(some)}" if some else "; it has no vectors yet"
        raise TryError(
            f"study {study.name!r} has no vector {missing[0]!r}{hint} (see `steer-sweep best`)"
        )
    params = _trial_params(study, {int(r["trial"]) for r in rows.values()})
    model = _model_name(study)
    out = []
    for vid in ids:
        row = rows[vid]
        p = TrialParams.from_params(params[int(row["trial"])])
        vec = mats[vid]
        factors = None
        kind = str(row["intervention"])
        if row["affine_rank"]:
            r, d = int(row["affine_rank"]), vec.shape[0]
            factors = (
                np.asarray(row["affine_a"], np.float32).reshape(r, d),
                np.asarray(row["affine_b"], np.float32).reshape(r, d),
            )
            intervention = Intervention("affine", rank=r, affine_additive=bool(np.any(vec)))
        else:
            intervention = Intervention(kind, clamp_coef=p.clamp_coef)  # type: ignore[arg-type]
        layers = tuple(int(x) for x in row["layers"])
        sv = SteeringVector(vid, vec, layers, intervention, p.tokens, factors)
        where = f"study {study.name}, trial {row['trial']}, layer {','.join(map(str, layers))}"
        out.append(TryVector(sv, model, f"{vid} ({where}, {kind}, tokens {_tokens(p.tokens)})"))
    return out


def best_vector_ids(study: Study, n: int) -> list[str]:
    """The ``n`` best vectors of COMPLETE trials, by the one ranking
    (``orchestrator.ranking``: what ``steer-sweep best`` lists)."""
    from orchestrator.ranking import rank_vectors

    if not study.vectors.count_rows():
        raise TryError(f"study {study.name!r} has no vectors yet")
    top = rank_vectors(study).head(n)
    if top.empty:
        raise TryError(f"study {study.name!r} has no vectors from a COMPLETE trial yet")
    return [str(v) for v in top["vector_id"]]


def file_vectors(
    path: str | Path, *, layer: int | None, model: str | None, name: str | None = None
) -> list[TryVector]:
    """Vectors from a safetensors file (``steer-sweep export`` or ``optimize --out``),
    added at ``layer`` (else the layer the file records) for ``model`` (else the
    model it records). ``name`` picks one tensor of a file that holds several.
    A ``.gguf`` file is a llama.cpp control vector (:func:`gguf_vector`)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from workers.steering.vectors import SteeringVector

    p = Path(path)
    if not p.is_file():
        raise TryError(f"--vector {p}: no such file")
    if p.suffix == ".gguf":
        if name is not None:
            raise TryError(f"--vector {p} is one control vector: name no tensor ({name!r})")
        return [gguf_vector(p, layer=layer, model=model)]
    try:
        tensors = load_file(str(p))
        meta = _safetensors_metadata(p)
    except (SafetensorError, OSError, ValueError) as exc:
        raise TryError(f"--vector {p} is not a readable safetensors file ({exc})") from None
    if name is not None:
        if name not in tensors:
            raise TryError(
                f"--vector {p} has no tensor {name!r}; it has {', '.join(sorted(tensors))}"
            )
        tensors = {name: tensors[name]}
    recorded = _recorded(meta)
    out = []
    for key, arr in tensors.items():
        vec = np.asarray(arr, np.float32)
        if vec.ndim != 1:
            raise TryError(f"--vector {p}: tensor {key!r} has shape {vec.shape}, not one vector")
        info = recorded.get(key, {})
        lay = layer if layer is not None else info.get("layer")
        mod = model if model is not None else info.get("model")
        if lay is None:
            raise TryError(f"--vector {p} does not say the layer of {key!r}; give --layer L")
        if mod is None:
            raise TryError(f"--vector {p} does not say the model of {key!r}; give --model M")
        sv = SteeringVector(key, vec, (int(lay),))
        out.append(TryVector(sv, str(mod), f"{key} (file {p.name}, layer {lay}, add)"))
    return out


def gguf_vector(path: Path, *, layer: int | None, model: str | None) -> TryVector:
    """A llama.cpp control vector (``export --format gguf``, repeng) as one
    vector to try: every direction at its own layer, applied together.
    ``layer`` moves a one-direction file; ``model`` (else the file's model
    hint) is the model to load."""
    from orchestrator.store import read_control_vector
    from workers.steering.vectors import SteeringVector

    try:
        cv = read_control_vector(path)
    except ValueError as exc:
        raise TryError(f"--vector {exc}") from None
    directions = cv.directions
    if layer is not None:
        if len(directions) > 1:
            raise TryError(
                f"--vector {path} holds directions for layers {', '.join(map(str, directions))}; "
                "--layer moves a file of one direction only"
            )
        directions = {layer: next(iter(directions.values()))}
    mod = model if model is not None else cv.model_hint
    if mod is None:
        raise TryError(f"--vector {path} does not say its model; give --model M")
    layers = list(directions)
    first = directions[layers[0]]
    if all(np.array_equal(first, directions[x]) for x in layers):
        parts = [SteeringVector(cv.vector_id, first, tuple(layers))]
    else:
        parts = [SteeringVector(f"{cv.vector_id}@{x}", directions[x], (x,)) for x in layers]
    where = f"file {path.name}, layer {','.join(map(str, layers))}, add"
    return TryVector(parts[0], str(mod), f"{cv.vector_id} ({where})", tuple(parts[1:]))


def _safetensors_metadata(path: Path) -> dict[str, str]:
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return dict(header.get("__metadata__") or {})


def _recorded(meta: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per tensor name, the layer and model its file records."""
    out: dict[str, dict[str, Any]] = {}
    if "steer_sweep.vectors" in meta:  # written by steer-sweep export
        for row in json.loads(meta["steer_sweep.vectors"]):
            out[row["vector_id"]] = {"layer": row.get("layer"), "model": row.get("model_id")}
    elif "layers" in meta:  # written by steer-sweep optimize --out
        out["vector"] = {"layer": json.loads(meta["layers"])[0], "model": meta.get("model")}
    return out


def _trial_params(study: Study, trials: set[int]) -> dict[int, dict[str, Any]]:
    got = {t.number: t.params for t in study.completed_trials() if t.number in trials}
    lost = trials - set(got)
    if lost:
        raise TryError(f"study {study.name!r} stores no trial row for trial(s) {sorted(lost)}")
    return got


def _model_name(study: Study) -> str:
    cfg = study.config() or {}
    name = (cfg.get("model") or {}).get("name")
    if not name:
        rows = study.vectors.to_table(columns=["model_id"]).column(0).to_pylist()[:1]
        if not rows:
            raise TryError(f"study {study.name!r} stores neither its config nor a model id")
        return str(rows[0])
    return str(name)


def model_spec_for(
    study: Study | None,
    model: str,
    dtype: str | None,
    device: str | None,
    *,
    progress: bool = True,
) -> ModelSpec:
    """The study's stored model settings (dtype, revision, layers path), with
    ``dtype``/``device`` overriding; ``auto`` where nothing is said.
    ``progress``: loading bars (off under ``steer-sweep -q``)."""
    from workers.models import ModelSpec

    m: dict[str, Any] = ((study.config() or {}).get("model") or {}) if study is not None else {}
    return ModelSpec(
        model,
        dtype=dtype or m.get("dtype", "auto"),
        device=device or "auto",
        revision=m.get("revision"),
        trust_remote_code=bool(m.get("trust_remote_code", False)),
        layers_path=m.get("layers_path"),
        progress=progress,
    )


def _tokens(sel: Any) -> str:
    if sel.mode == "last_k":
        return f"last {sel.k}"
    if sel.mode == "positions":
        return "positions " + ",".join(map(str, sel.positions))
    return str(sel.mode)


# ---------------------------------------------------------------- prompts


def held_out_prompts(study: Study, n: int) -> list[tuple[str, Prompt]]:
    """The first ``n`` held-out examples of the study (id, prompt), in stored order."""
    cfg = study.config() or {}
    split = (cfg.get("task") or {}).get("transfer_split", "transfer")
    rows = study.examples.to_table(columns=["example_id", "split", "prompt", "chat"]).to_pylist()
    out: list[tuple[str, Prompt]] = []
    for r in rows:
        if r["split"] != split:
            continue
        prompt: Prompt = (
            r["prompt"]
            if r["chat"] is None
            else tuple((m["role"], m["content"]) for m in r["chat"])
        )
        out.append((str(r["example_id"]), prompt))
    if not out:
        raise TryError(f"study {study.name!r} stores no held-out examples; give --prompt TEXT")
    return out[:n]


def prompt_text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return " | ".join(f"{role}: {content}" for role, content in prompt)


# ---------------------------------------------------------------- decoding


def load(spec: ModelSpec) -> LoadedModel:
    from workers.models import load_model

    log.info("loading %s (%s, %s) ...", spec.name, spec.dtype, spec.device)
    started = time.perf_counter()
    lm = load_model(spec)
    log.info(
        "loaded %s: %d layers, d_model %d, on %s in %.1f s",
        lm.model_id, lm.n_layers, lm.d_model, lm.device, time.perf_counter() - started,
    )  # fmt: skip
    return lm


def check_fits(lm: LoadedModel, tv: TryVector) -> None:
    """The vector's width and layers fit the loaded model."""
    for part in tv.parts:
        d = int(np.asarray(part.vector).shape[0])
        if d != lm.d_model:
            raise TryError(
                f"vector {part.vector_id} is {d} wide but {lm.model_id} has d_model "
                f"{lm.d_model}; give the model it was trained on (--model)"
            )
        for layer in part.layers:
            if not 0 <= layer < lm.n_layers:
                raise TryError(
                    f"vector {part.vector_id} is at layer {layer}; {lm.model_id} has layers "
                    f"0-{lm.n_layers - 1}"
                )


def continuations(
    lm: LoadedModel,
    tv: TryVector,
    prompts: Sequence[Prompt],
    *,
    scale: float = 1.0,
    tokens: int = 24,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 16,
) -> list[Continuation]:
    """Steered and unsteered continuations of each prompt; the vector is
    applied with :func:`workers.steer`, as a user would apply it."""
    import contextlib

    import torch

    from workers.evaluation.transfer import decoded
    from workers.steering.context import steer
    from workers.steering.generate import Sampling, greedy_decode

    check_sampling(scale, temperature)
    check_fits(lm, tv)
    ids = [lm.encode_prompt(p) for p in prompts]

    def sampling() -> Sampling:
        gen = torch.Generator(device=lm.device).manual_seed(seed)
        return Sampling(temperature, gen if temperature > 0 else None)

    def steered_by() -> contextlib.AbstractContextManager[Any]:
        if scale == 0:  # nothing to apply (a clamp by a zero vector has no direction)
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for part in tv.parts:
            stack.enter_context(
                steer(
                    lm.model,
                    part.vector,
                    list(part.layers),
                    scale=scale,
                    intervention=part.intervention,
                    tokens=part.tokens,
                    layers_path=lm.layers_path,
                    factors=part.factors,
                )
            )
        return stack

    plain_s, steer_s = sampling(), sampling()
    out: list[Continuation] = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        plain = greedy_decode(lm, chunk, tokens, sampling=plain_s)
        if scale == 0:
            steered = plain
        else:
            with steered_by():
                steered = greedy_decode(lm, chunk, tokens, sampling=steer_s)
        for k, (u, s) in enumerate(zip(plain, steered, strict=True)):
            du, ds = decoded(lm, u), decoded(lm, s)
            out.append(
                Continuation(
                    prompt_text(prompts[start + k]),
                    du.text,
                    ds.text,
                    du.tokens,
                    ds.tokens,
                    du.stop,
                    ds.stop,
                )  # fmt: skip
            )
    return out


def check_sampling(scale: float, temperature: float) -> None:
    """``scale`` is finite and ``temperature`` 0 (greedy) or more."""
    if not math.isfinite(scale):
        raise TryError(f"--scale must be a finite number, got {scale:g}")
    if temperature < 0 or not math.isfinite(temperature):
        raise TryError(f"--temperature must be 0 (greedy) or more, got {temperature:g}")


def render_text(label: str, scale: float, items: Sequence[tuple[str, Continuation]]) -> str:
    """Plain text: per prompt, the unsteered and steered continuations one under the other."""
    lines = [f"vector {label}, scale {scale:g}"]
    for name, c in items:
        lines.append(f"  prompt {name}: {c.prompt!r}")
        lines.append(
            f"    unsteered ({c.unsteered_tokens} tokens, {c.unsteered_stop}): {c.unsteered!r}"
        )
        lines.append(f"    steered   ({c.steered_tokens} tokens, {c.steered_stop}): {c.steered!r}")
    return "\n".join(lines)
