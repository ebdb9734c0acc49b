"""A study that generates text stores it: one ``generations`` row per
(vector, held-out example), equal to a greedy decode written independently
with the plain steering hook of ``tests/reference.py``."""

from __future__ import annotations

from typing import Any

import numpy as np
from reference import reference_greedy
from sweep_helpers import audit, run_in_process, tiny_config

from orchestrator.store import open_study


def test_a_judged_study_stores_every_generation_equal_to_a_reference_decode(
    tmp_path: Any, tiny_llama: Any
) -> None:
    root = str(tmp_path / "store")
    cfg = tiny_config(
        root,
        n_trials=2,
        vectors_per_trial=2,
        task={"builtin": "refusal", "max_transfer": 3},
        evaluation={"metrics": ["target_logprob", "judge"], "generation_tokens": 6},
        search={"layer": [1, 2], "norm": 8.0, "lr": 0.5, "max_iters": 3},
    )
    plan, summary = run_in_process(cfg, tiny_llama)
    assert summary.states == {"COMPLETE": 2}
    audit(root, "tiny", 2, 2)
    st = open_study(root, "tiny")
    gens = st.generations.to_table().to_pylist()
    vectors = {r["vector_id"]: r for r in st.vectors.to_table().to_pylist()}
    held = {ex.id: ex for ex in plan.transfer}
    assert len(held) == 3
    # One row per (vector, held-out example): a judge reads every example.
    assert sorted((g["vector_id"], g["eval_example_id"]) for g in gens) == sorted(
        (v, e) for v in vectors for e in held
    )
    judged = {
        (r["vector_id"], r["eval_example_id"])
        for r in st.transfer.to_table().to_pylist()
        if r["metric"].startswith("judge:")
    }
    assert judged == {(g["vector_id"], g["eval_example_id"]) for g in gens}
    plain: dict[str, tuple[str, int, str]] = {}
    for g in gens:
        v = vectors[g["vector_id"]]
        ex = held[g["eval_example_id"]]
        vec = np.asarray(v["vector"], np.float32)
        assert g["max_tokens"] == 6
        want = reference_greedy(tiny_llama, ex.prompt, vec, v["layer"], 6)
        assert (g["steered_text"], g["steered_tokens"], g["steered_stop"]) == want
        if ex.id not in plain:
            plain[ex.id] = reference_greedy(tiny_llama, ex.prompt, None, 0, 6)
        assert (g["unsteered_text"], g["unsteered_tokens"], g["unsteered_stop"]) == plain[ex.id]
    # The vectors did change some text (the comparison above is not vacuous).
    assert any(g["steered_text"] != g["unsteered_text"] for g in gens)


def test_a_study_without_text_metrics_keeps_the_first_n(tmp_path: Any, tiny_llama: Any) -> None:
    root = str(tmp_path / "store")
    cfg = tiny_config(
        root,
        n_trials=1,
        vectors_per_trial=2,
        task={"builtin": "refusal", "max_transfer": 4},
        evaluation={"keep_generations": 1, "generation_tokens": 4},
        search={"layer": 1, "norm": 8.0, "lr": 0.5, "max_iters": 2},
    )
    plan, _ = run_in_process(cfg, tiny_llama)
    gens = open_study(root, "tiny").generations.to_table().to_pylist()
    first = plan.transfer[0].id
    assert len(gens) == 2 and {g["eval_example_id"] for g in gens} == {first}

    none = tiny_config(
        str(tmp_path / "none"),
        n_trials=1,
        vectors_per_trial=1,
        evaluation={"keep_generations": 0},
        search={"layer": 1, "norm": 8.0, "lr": 0.5, "max_iters": 2},
    )
    run_in_process(none, tiny_llama)
    assert open_study(str(tmp_path / "none"), "tiny").files("generations") == []
