"""``steer-sweep try``: a stored vector applied to prompts gives the stored
generations, ``--scale 0`` the unsteered model, ``--scale -1`` the negated
vector; an exported file applies the same; bad input is one paragraph, exit 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_checks import assert_one_paragraph
from reference import reference_greedy
from sweep_helpers import run_in_process, tiny_config

from orchestrator import apply as A
from orchestrator import cli
from orchestrator.run.preflight import prepare
from orchestrator.store import open_study
from workers.jobs import chat
from workers.models import load_model

TOKENS = 6


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A judged study on the tiny model, add and clamp vectors, 3 held-out prompts."""
    root = str(tmp_path_factory.mktemp("try") / "store")
    cfg = tiny_config(
        root,
        n_trials=4,
        vectors_per_trial=1,
        sampler={"name": "grid", "seed": 0},
        trials_in_flight=1,  # one grid point at a time: all four are covered
        task={"builtin": "refusal", "max_transfer": 3},
        evaluation={"metrics": ["target_logprob", "judge"], "generation_tokens": TOKENS},
        search={
            "layer": 1,
            "norm": 8.0,
            "lr": 0.5,
            "max_iters": 3,
            "clamp_coef": 0.5,
            "intervention": ["add", "clamp"],
            "tokens": ["all", "prompt"],
        },
    )
    lm = load_model(prepare(cfg).model_spec)  # what `try` loads: the study's model by name
    plan, _ = run_in_process(cfg, lm)
    st = open_study(root, "tiny")
    vectors = st.vectors.to_table().to_pylist()
    assert {v["intervention"] for v in vectors} == {"add", "clamp"}
    trials = {t.number: t.params for t in st.completed_trials()}
    assert {trials[v["trial"]]["tokens"] for v in vectors} == {"all", "prompt"}
    return {"root": root, "lm": lm, "st": st, "vectors": vectors, "plan": plan}


def plain_add(study: dict[str, Any]) -> dict[str, Any]:
    """The vector that adds at every position (what a reference hook does)."""
    tokens = {t.number: t.params["tokens"] for t in study["st"].completed_trials()}
    return next(
        v for v in study["vectors"] if v["intervention"] == "add" and tokens[v["trial"]] == "all"
    )


def try_json(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, Any]]:
    assert cli.main(["-q", "try", *argv, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_stored_vector_comes_back_as_it_was_trained(study: dict[str, Any]) -> None:
    from orchestrator.apply import stored_vectors
    from workers.jobs import Intervention, TokenSelection

    trials = {t.number: t.params for t in study["st"].completed_trials()}
    got = stored_vectors(study["st"], [v["vector_id"] for v in study["vectors"]])
    for v, tv in zip(study["vectors"], got, strict=True):
        p = trials[v["trial"]]
        assert p["clamp_coef"] == 0.5
        assert tv.vector.intervention == Intervention(p["intervention"], clamp_coef=0.5)
        assert tv.vector.tokens == TokenSelection(p["tokens"])
        assert tv.vector.layers == (1,)
        assert np.array_equal(tv.vector.vector, np.asarray(v["vector"], np.float32))


def test_try_gives_the_stored_generation_of_every_vector(
    study: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    gens = study["st"].generations.to_table().to_pylist()
    stored = {(g["vector_id"], g["eval_example_id"]): g for g in gens}
    for v in study["vectors"]:  # add and clamp alike
        [out] = try_json(capsys, "tiny", v["vector_id"], "--root", study["root"])
        assert out["tokens"] == TOKENS  # the study's generation length by default
        assert len(out["continuations"]) == 3
        for c in out["continuations"]:
            g = stored[(v["vector_id"], c["example"])]
            assert (c["steered"], c["steered_tokens"], c["steered_stop"]) == (
                g["steered_text"], g["steered_tokens"], g["steered_stop"])  # fmt: skip
            assert c["unsteered"] == g["unsteered_text"]


def test_scale_zero_is_unsteered_and_minus_one_is_the_negated_vector(
    study: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    v = plain_add(study)
    prompt = "Tell me about the weather today."
    args = ("tiny", v["vector_id"], "--root", study["root"], "--prompt", prompt)
    [zero] = try_json(capsys, *args, "--scale", "0", "--tokens", "8")
    [c] = zero["continuations"]
    assert c["steered"] == c["unsteered"]
    lm, vec = study["lm"], np.asarray(v["vector"], np.float32)
    assert c["unsteered"] == reference_greedy(lm, chat(prompt), None, 0, 8)[0]
    [neg] = try_json(capsys, *args, "--scale", "-1", "--tokens", "8")
    [c] = neg["continuations"]
    assert c["steered"] == reference_greedy(lm, chat(prompt), -vec, v["layer"], 8)[0]
    assert c["steered"] != reference_greedy(lm, chat(prompt), vec, v["layer"], 8)[0]


def test_sampling_repeats_with_its_seed(
    study: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    vid = study["vectors"][0]["vector_id"]
    args = ("tiny", vid, "--root", study["root"], "--temperature", "1.5", "--tokens", "12")
    a = try_json(capsys, *args, "--seed", "1")
    assert try_json(capsys, *args, "--seed", "1") == a
    runs = [try_json(capsys, *args, "--seed", str(s)) for s in (2, 3, 4)]
    texts = {c["steered"] for run in [a, *runs] for c in run[0]["continuations"]}
    assert len(texts) > 3, "sampling at temperature 1.5 gave the same text for every seed"


def test_an_exported_vector_file_applies_like_the_stored_vector(
    study: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    v = plain_add(study)
    out = tmp_path / "v.safetensors"
    assert cli.main(["-q", "export", "tiny", v["vector_id"], "--root", study["root"],
                     "--out", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    prompts = ("--prompt", "Say hi.", "--prompt", "Count to three.")
    stored = try_json(capsys, "tiny", v["vector_id"], "--root", study["root"], *prompts)
    filed = try_json(capsys, "--vector", str(out), *prompts, "--tokens", str(TOKENS))
    assert [c["steered"] for c in filed[0]["continuations"]] == [
        c["steered"] for c in stored[0]["continuations"]
    ]
    # --layer moves it; --model is required by nothing here: the file records it.
    other = try_json(
        capsys, "--vector", str(out), *prompts, "--layer", "0", "--tokens", str(TOKENS)
    )
    assert other[0]["label"].startswith(v["vector_id"]) and "layer 0" in other[0]["label"]


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["tiny"], ["--best N"]),
        (["tiny", "nope"], ["no vector 'nope'"]),
        (["nosuch", "abc"], ["no study 'nosuch'", "tiny"]),
        (["tiny", "X", "--best", "2"], ["not both"]),
        (["tiny", "X", "--tokens", "0"], ["--tokens"]),
        (["tiny", "X", "--scale", "inf"], ["--scale", "finite"]),
        (["tiny", "X", "--temperature", "-1"], ["--temperature"]),
        (["tiny", "X", "--file", "/no/such/prompts.txt"], ["--file"]),
        (["tiny", "X", "--layer", "1"], ["--layer goes with --vector"]),
        (["tiny", "X", "--prompt", " "], ["--prompt is empty"]),
        (["tiny", "X", "--device", "gpu"], ["--device 'gpu'"]),
        (["tiny", "X", "--dtype", "f32"], ["--dtype 'f32'"]),
        (["--vector", "/no/such.safetensors", "--prompt", "hi"], ["no such file"]),
        (["--vector", "README.md", "--prompt", "hi"], ["not a readable safetensors"]),
        (["--vector", "README.md"], ["needs prompts"]),
    ],
)
def test_bad_input_to_try_is_one_paragraph_and_exit_2(
    study: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    needles: list[str],
) -> None:
    vid = study["vectors"][0]["vector_id"]
    argv = [vid if a == "X" else a for a in argv]
    if argv[0] != "--vector":
        argv += ["--root", study["root"]]
    before = sorted(p for p in Path(study["root"]).rglob("*"))
    assert cli.main(["try", *argv]) == 2
    assert_one_paragraph(capsys.readouterr().err, *needles)
    assert sorted(p for p in Path(study["root"]).rglob("*")) == before  # nothing written


def test_a_wrong_model_is_named_before_anything_is_printed(
    study: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    vid = study["vectors"][0]["vector_id"]
    code = cli.main(["-q", "try", "tiny", vid, "--root", study["root"], "--model", "smollm2-135m-instruct",
                     "--prompt", "hi"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert_one_paragraph(captured.err.splitlines()[-1], "64 wide", "d_model 576")


def _steered_by_generate(lm: Any, vec: dict[str, Any], params: dict[str, Any], prompt: Any) -> str:
    """``model.generate`` (greedy, KV cache) under :func:`workers.steer`, as a
    user who loaded the model would run it."""
    import torch

    from workers import steer
    from workers.evaluation.transfer import decoded

    ids = torch.tensor([lm.encode_prompt(prompt)], device=lm.device)
    with steer(
        lm.model,
        np.asarray(vec["vector"], np.float32),
        vec["layer"],
        intervention=vec["intervention"],
        clamp_coef=params["clamp_coef"],
        tokens=params["tokens"],
    ):
        out = lm.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=TOKENS,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id,
        )
    return decoded(lm, out[0, ids.shape[1] :].tolist()).text


def test_steer_under_generate_gives_the_stored_generations(study: dict[str, Any]) -> None:
    lm, st = study["lm"], study["st"]
    params = {t.number: t.params for t in st.completed_trials()}
    prompts = dict(A.held_out_prompts(st, 3))
    gens = st.generations.to_table().to_pylist()
    seen = set()
    for g in gens:
        vec = next(v for v in study["vectors"] if v["vector_id"] == g["vector_id"])
        p = params[vec["trial"]]
        got = _steered_by_generate(lm, vec, p, prompts[g["eval_example_id"]])
        assert got == g["steered_text"], (vec["intervention"], p["tokens"])
        seen.add((vec["intervention"], p["tokens"]))
    assert seen == {(i, t) for i in ("add", "clamp") for t in ("all", "prompt")}


def test_steer_leaves_no_hook_behind_after_an_exception(study: dict[str, Any]) -> None:
    import torch

    from workers import steer

    lm = study["lm"]
    modules = [lm.model, lm.model.base_model, *lm.layers]
    before = [len(m._forward_pre_hooks) for m in modules]
    ids = torch.tensor([lm.encode_prompt(chat("Hello"))], device=lm.device)
    plain = lm.model(ids).logits
    with pytest.raises(RuntimeError, match="inside the block"):
        with steer(lm.model, np.ones(lm.d_model, np.float32), [0, 2], scale=3.0, tokens=2):
            assert not torch.equal(lm.model(ids).logits, plain)  # it steers inside
            raise RuntimeError("inside the block")
    assert [len(m._forward_pre_hooks) for m in modules] == before
    assert torch.equal(lm.model(ids).logits, plain)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"layer": 9}, "out of range"),
        ({"vector": np.ones(5)}, "5 wide"),
        ({"intervention": "affine"}, "add' or 'clamp"),
        ({"tokens": 0}, ">= 1"),
        ({"tokens": "completion"}, "'all', 'prompt'"),
    ],
)
def test_steer_refuses_bad_arguments_before_hooking(
    study: dict[str, Any], kwargs: dict[str, Any], needle: str
) -> None:
    from workers import steer

    lm = study["lm"]
    args = {"vector": np.ones(lm.d_model), "layer": 1, **kwargs}
    with pytest.raises(ValueError, match=needle):
        with steer(lm.model, args.pop("vector"), args.pop("layer"), **args):
            pass
    assert all(not m._forward_pre_hooks for m in lm.layers)


@pytest.mark.parametrize("n", [1, 2])
def test_examples_n_takes_the_first_n_held_out_prompts(
    study: dict[str, Any], capsys: pytest.CaptureFixture[str], n: int
) -> None:
    vid = study["vectors"][0]["vector_id"]
    [out] = try_json(capsys, "tiny", vid, "--root", study["root"], "--examples", str(n))
    stored = [ex for ex, _ in A.held_out_prompts(study["st"], 99)]
    assert len(stored) == 3 > n
    assert [c["example"] for c in out["continuations"]] == stored[:n]
