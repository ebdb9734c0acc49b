"""Model loading errors and bad jobs: clear messages, never a deep torch trace."""

from __future__ import annotations

import pytest

from workers.engine.loop import optimize
from workers.jobs import ScoredPrompt, StopRules, Target, TokenSelection, VectorJob, chat
from workers.models import ModelLoadError, ModelSpec, load_model
from workers.steering.encoding import JobError


def job(**kw) -> VectorJob:
    base = dict(
        job_id="bad",
        prompts=(ScoredPrompt(chat("Hello"), (Target("Paris", "promote"),)),),
        layers=(1,),
        stop=StopRules(max_iters=1),
    )
    base.update(kw)
    return VectorJob(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompts": (ScoredPrompt("Hi", (Target("", "promote"),)),)}, "target is empty"),
        ({"layers": (4,)}, r"layer 4 is out of range: this model has 4 decoder blocks"),
        ({"layers": (-5,)}, "out of range"),
        (
            {"prompts": (ScoredPrompt("Hi", (Target("x", "amplify"),)),)},
            "unknown loss kind 'amplify'",
        ),
        (
            {"prompts": (ScoredPrompt("Hi " * 1600, (Target("x", "promote"),)),)},
            "longer than the model's context of 1024",
        ),
        ({"prompts": (ScoredPrompt("", (Target("x", "promote"),)),)}, "prompt is empty"),
        ({"prompts": ()}, "nothing to optimize"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"norm_bound": 0.0}, "norm_bound must be positive"),
        ({"stop": StopRules(targets_reached=True)}, "needs at least one target threshold"),
        ({"tokens": TokenSelection("positions", positions=(500,))}, "fall outside prompt 0"),
    ],
)
def test_bad_jobs_raise_a_clear_error_before_any_work(tiny_llama, kwargs, message) -> None:
    with pytest.raises(JobError, match=message) as info:
        optimize(tiny_llama, [job(**kwargs)])
    assert "job 'bad'" in str(info.value)
    # Raised by our validation, not from inside torch or transformers.
    assert info.traceback[-1].path.name == "encoding.py"


def test_a_target_that_tokenizes_to_nothing(tiny_llama) -> None:
    from workers.steering.encoding import encode_job

    class DropsZ:
        """Wraps the real tokenizer but maps the text 'ZZZ' to no tokens."""

        def __init__(self, real) -> None:
            self.real = real

        def __call__(self, text, add_special_tokens=True):
            if text == "ZZZ":
                return {"input_ids": []}
            return self.real(text, add_special_tokens=add_special_tokens)

    real = tiny_llama.tokenizer
    tiny_llama.tokenizer = DropsZ(real)
    try:
        with pytest.raises(JobError, match="'ZZZ' tokenizes to nothing"):
            encode_job(tiny_llama, job(prompts=(ScoredPrompt("Hi", (Target("ZZZ"),)),)))
    finally:
        tiny_llama.tokenizer = real


def test_duplicate_job_ids_are_refused(tiny_llama) -> None:
    with pytest.raises(JobError, match="unique"):
        optimize(tiny_llama, [job(), job()])


def test_a_missing_model_path_is_reported(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "no" / "such" / "model"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_model(str(tmp_path / "missing.gguf"))


def test_a_truncated_gguf_file_is_reported(tmp_path) -> None:
    from workers.models.sources import bundled_gguf

    real = bundled_gguf("smollm2-135m-instruct")
    broken = tmp_path / "broken.gguf"
    with real.open("rb") as src:
        broken.write_bytes(src.read(200_000))
    with pytest.raises(ModelLoadError, match="could not read GGUF file") as info:
        load_model(ModelSpec(str(broken), cache_dir=str(tmp_path / "cache")))
    assert "truncated" in str(info.value)
    not_gguf = tmp_path / "fake.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_model(str(not_gguf))


def test_remote_code_is_refused_by_default(tmp_path) -> None:
    (tmp_path / "config.json").write_text(
        '{"model_type": "evilformer", "auto_map": {"AutoConfig": "modeling_evil.EvilConfig",'
        ' "AutoModelForCausalLM": "modeling_evil.EvilModel"}}'
    )
    marker = tmp_path / "EXECUTED"
    (tmp_path / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(ModelLoadError, match="trust_remote_code: true"):
        load_model(str(tmp_path))
    assert not marker.exists()
    assert ModelSpec("x").trust_remote_code is False


def test_tiny_models_load_by_name_with_dtype() -> None:
    import torch

    lm = load_model(ModelSpec("tiny-random-gpt2", dtype="bfloat16"))
    assert lm.dtype == torch.bfloat16 and lm.n_layers == 4 and lm.d_model == 64
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_model(ModelSpec("tiny-random-gpt2", dtype="float8"))


def test_a_final_assistant_turn_is_continued_not_closed(tiny_llama) -> None:
    from workers.jobs import chat

    text, templated = tiny_llama.format_prompt(chat("Who is Ada?", ("assistant", "Ada is a")))
    assert templated
    assert text.endswith("<|im_start|>assistant\nAda is a")
    plain, _ = tiny_llama.format_prompt(chat("Who is Ada?"))
    assert plain.endswith("<|im_start|>assistant\n")
