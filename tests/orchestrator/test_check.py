"""``steer-sweep check``: every shipped study passes it, its plan's figures
equal a direct computation, and a bad study is one paragraph, exit 2,
nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_checks import assert_one_paragraph

from orchestrator.cli import main
from orchestrator.run.estimate import DEFAULT_TFLOPS, estimate
from orchestrator.run.preflight import prepare
from orchestrator.study.config import load_config
from workers.models import load_codec, peek_shape

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))  # examples/paper/: test_paper_studies


def _check(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["check", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_passes_check_on_a_tiny_model(path, tmp_path, capsys) -> None:
    root = tmp_path / "store"
    code, out, err = _check(
        capsys, str(path), "model.name=tiny-random-llama", "search.layer={low: 0, high: 3}",
        f"store.root={root}",
    )  # fmt: skip
    assert code == 0, err
    assert "checked" in out and "vector-steps" in out and "GPU-seconds" in out
    assert not root.exists(), "check wrote the store"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_passes_check_as_shipped(path, tmp_path, capsys) -> None:
    """With the bundled SmolLM2-135M it names (its config and tokenizer only)."""
    code, out, err = _check(capsys, str(path), f"store.root={tmp_path / 'store'}")
    assert code == 0, err
    assert "30 blocks, width 576, 106 M weights in its blocks" in out


def _direct_tokens(codec, examples, max_targets=None) -> tuple[float, float]:
    """Mean (prompt + targets, targets) tokens per example, by the tokenizer."""
    tot, tgt = [], []
    for e in examples:
        texts = [t for t in e.promote] + [t for t in e.suppress]
        texts = texts[:max_targets] if max_targets else texts
        m = sum(len(codec.encode_target(t)) for t in texts)
        tot.append(len(codec.encode_prompt(e.prompt)) + m)
        tgt.append(m)
    return sum(tot) / len(tot), sum(tgt) / len(tgt)


@pytest.mark.parametrize("shots", [1, 2])
def test_the_estimate_is_the_formula(tmp_path, shots) -> None:
    """Every count and token figure recomputed from the tokenizer and the
    study file, not read back from the estimate."""
    cfg = load_config(
        REPO / "examples" / "quickstart.yaml", [f"store.root={tmp_path}", f"search.shots={shots}"]
    )
    plan = prepare(cfg, check_store_root=False)
    codec = load_codec(plan.model_spec)
    est = estimate(plan, codec)
    shape = peek_shape(plan.model_spec)
    assert shape.block_params == 3 * 576 * 1536 + 2 * 576 * 9 * 64 + 2 * 576 * 3 * 64
    assert (est.trials, est.vectors, est.vector_steps) == (6, 24, 24 * 8)
    assert est.evaluations == 24 * len(plan.transfer) == 24 * 16
    t_one, m_one = _direct_tokens(codec, plan.train_pool)
    t_train, m_train = shots * t_one, shots * m_one  # a K-shot job holds K examples
    t_eval, m_eval = _direct_tokens(codec, plan.transfer, max_targets=1)  # max_targets: 1
    assert (est.train_tokens, est.target_tokens) == (pytest.approx(t_train), pytest.approx(m_train))
    assert (est.eval_tokens, est.eval_target_tokens) == (
        pytest.approx(t_eval),
        pytest.approx(m_eval),
    )
    p, above, d, v = shape.block_params, 30 - 6, 576, 49152
    want = 24 * 8 * (6 * p * above * t_train + 6 * d * v * m_train)
    assert est.optimize_flop == pytest.approx(want)
    want_eval = 24 * 16 * (2 * p * above * t_eval + 2 * d * v * m_eval)
    assert est.evaluate_flop == pytest.approx(want_eval)
    assert est.gpu_seconds == pytest.approx((want + want_eval) / (DEFAULT_TFLOPS * 1e12))


def test_gemma_2_2b_vector_step_is_the_measured_figure() -> None:
    """The module docstring's check, through estimate.py's own formula: 0.41-0.42
    TFLOP per vector-step for the Gemma-2-2B shape at T = 64, m = 8, layer L/2
    (bench/gpu_core_check.py measured 0.41)."""
    from orchestrator.run.estimate import OPTIMIZE_PASSES, pass_flop
    from workers.models.spec import block_params

    p = block_params(d_model=2304, heads=8, kv_heads=4, head_dim=256, ffn=9216, family="gemma2")
    per_step = pass_flop(OPTIMIZE_PASSES, p, 13, 64, 2304 * 256000, 8)
    assert per_step == 6 * p * 13 * 64 + 6 * 2304 * 256000 * 8
    assert 0.40e12 < per_step < 0.43e12


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("search.layer=40", "out of range"),
        ("task.builtin=refusl", "not a built-in task"),
        ("model.name=no-such-model-anywhere", "model.name"),
        ("n_trials=0", "n_trials"),
        ("pruner.name=transfer_screen", "slice_size"),
    ],
)
def test_a_bad_study_is_one_paragraph_and_writes_nothing(override, match, tmp_path, capsys):
    root = tmp_path / "store"
    args = [str(REPO / "examples" / "quickstart.yaml"), override, f"store.root={root}"]
    if override.startswith("pruner"):
        args.append("pruner.slice_size=16")
    code, out, err = _check(capsys, *args)
    assert code == 2
    assert match in err
    assert_one_paragraph(err)
    assert not root.exists()


def test_a_store_root_that_cannot_be_a_folder_is_refused(tmp_path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    quick = str(REPO / "examples" / "quickstart.yaml")
    code, _, err = _check(capsys, quick, f"store.root={blocker}/store")
    assert code == 2 and "store.root" in err and "not a writable folder" in err
    code, _, err = _check(capsys, quick, f"store.root={blocker}")
    assert code == 2 and "exists and is not a folder" in err
    assert blocker.read_text() == "not a folder"


def test_bad_tflops(capsys) -> None:
    code, _, err = _check(capsys, str(REPO / "examples" / "quickstart.yaml"), "--tflops", "0")
    assert code == 2 and "--tflops" in err


def test_a_root_on_a_read_only_file_system_is_refused_like_run_refuses_it(capsys) -> None:
    """/proc: os.access says writable to root, but nothing can be made there."""
    quick = str(REPO / "examples" / "quickstart.yaml")
    code, _, err = _check(capsys, quick, "model.name=tiny-random-llama", "search.layer=1",
                          "store.root=/proc/steer-sweep-store")  # fmt: skip
    assert code == 2
    assert_one_paragraph(err, "store.root", "/proc is not a writable folder")


def test_an_unreachable_hub_is_one_quick_paragraph(capsys, monkeypatch) -> None:
    import time

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1")  # nothing listens there
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    quick = str(REPO / "examples" / "quickstart.yaml")
    started = time.monotonic()
    code, out, err = _check(capsys, quick, "model.name=someorg/no-such-model")
    assert code == 2 and out == ""
    assert time.monotonic() - started < 15
    assert "Retrying" not in err
    assert_one_paragraph(err, "someorg/no-such-model", "did not answer within 3 s", "HF_HOME")
