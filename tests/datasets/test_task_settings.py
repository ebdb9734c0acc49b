"""What a study's ``task:`` section sets besides the examples: targets for
rows that have none (``task.targets``), the string-match judge
(``task.judge``, lists or a built-in list's name), neutral prompts and the
surprisal context; each replaces the task's own and reaches the EvalSpec the
workers get."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.datasets import NEUTRAL_PROMPTS, DatasetError, builtin_task
from orchestrator.datasets.builtin import FIR_STRINGS, REFUSAL_PHRASES
from orchestrator.run.preflight import PreflightError, load_task, prepare
from orchestrator.study.config import ConfigError, parse_config
from workers.jobs import chat


def _bare(path: Path, n: int = 6) -> Path:
    """Requests without targets (HarmBench's shape), one with its own target."""
    with path.open("w") as f:
        for i in range(n):
            row = {"prompt": f"Explain how to do harmful thing {i}.", "category": "c"}
            row["split"] = "train" if i < n // 2 else "transfer"
            if i == 1:
                row["promote"] = "Own target"
            f.write(json.dumps(row) + "\n")
    return path


def _config(tmp_path: Path, task: dict, **extra) -> dict:
    return {
        "name": "settings",
        "n_trials": 1,
        "vectors_per_trial": 2,
        "model": {"name": "tiny-random-llama"},
        "task": task,
        "search": {"layer": 1},
        "store": {"root": str(tmp_path / "store")},
        **extra,
    }


def test_rows_without_targets_take_task_targets_and_keep_their_own(tmp_path) -> None:
    path = _bare(tmp_path / "bare.jsonl")
    task = {"path": str(path), "targets": {"promote": ["Sure, here"], "suppress": ["I cannot"]}}
    train, transfer, _ = load_task(parse_config(_config(tmp_path, task)))
    got = {e.prompt[0][1][-2]: (e.promote, e.suppress) for e in train + transfer}
    assert got["1"] == (("Own target",), ())
    assert all(v == (("Sure, here",), ("I cannot",)) for k, v in got.items() if k != "1")
    assert len(got) == 6


def test_rows_without_targets_and_no_task_targets_are_a_located_error(tmp_path) -> None:
    path = _bare(tmp_path / "bare.jsonl")
    with pytest.raises(DatasetError, match=r"bare\.jsonl.*line 1.*task\.targets"):
        load_task(parse_config(_config(tmp_path, {"path": str(path)})))


@pytest.mark.parametrize(
    ("task", "problem"),
    [
        ({"builtin": "refusal", "targets": {"promote": ["x"]}}, "built-in task has its own"),
        ({"builtin": "refusal", "targets": {}}, "at least one promote or suppress"),
        ({"builtin": "refusal", "judge": {}}, "give contains_any or lacks_all"),
        ({"builtin": "refusal", "judge": {"lacks_all": "refusals"}}, "lacks_all"),
        ({"builtin": "refusal", "judge": {"lacks_all": ["ok", " "]}}, "item 1 is empty"),
        ({"builtin": "refusal", "neutral_prompts": []}, "neutral_prompts is empty"),
    ],
)
def test_bad_task_settings_are_config_errors(tmp_path, task, problem) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_config(_config(tmp_path, task))


def test_judge_strings_by_name_or_list_replace_the_tasks_own(tmp_path) -> None:
    cfg = _config(
        tmp_path,
        {"builtin": "refusal", "judge": {"lacks_all": "refusal"}},
        evaluation={"metrics": ["target_logprob", "judge"]},
    )
    ev = prepare(parse_config(cfg), check_store_root=False).evaluation
    assert builtin_task("refusal").judge_contains_any == REFUSAL_PHRASES  # the task's own
    assert (ev.judge_contains_any, ev.judge_lacks_all) == ((), REFUSAL_PHRASES)
    cfg["task"]["judge"] = {"contains_any": ["Sure"], "lacks_all": "retraction"}
    ev = prepare(parse_config(cfg), check_store_root=False).evaluation
    assert (ev.judge_contains_any, ev.judge_lacks_all) == (("Sure",), FIR_STRINGS)


def test_file_tasks_get_the_builtin_neutral_prompts_unless_given(tmp_path) -> None:
    path = _bare(tmp_path / "bare.jsonl")
    task: dict = {"path": str(path), "targets": {"promote": ["Sure"], "suppress": ["I cannot"]}}
    cfg = _config(tmp_path, task, evaluation={"metrics": ["target_logprob", "side_effect_kl"]})
    plan = prepare(parse_config(cfg), check_store_root=False)
    assert plan.evaluation.neutral_prompts == NEUTRAL_PROMPTS
    assert plan.surprisal_context == ()
    task["neutral_prompts"] = ["Name a colour.", "What is 2 + 2?"]
    task["surprisal_context"] = ["A calm answer."]
    plan = prepare(parse_config(cfg), check_store_root=False)
    assert plan.evaluation.neutral_prompts == (chat("Name a colour."), chat("What is 2 + 2?"))
    assert plan.surprisal_context == ("A calm answer.",)


def test_a_judge_metric_without_judge_strings_names_the_settings(tmp_path) -> None:
    path = _bare(tmp_path / "bare.jsonl")
    task = {"path": str(path), "targets": {"promote": ["Sure"], "suppress": ["I cannot"]}}
    cfg = _config(tmp_path, task, evaluation={"metrics": ["target_logprob", "judge"]})
    with pytest.raises(PreflightError, match=r"task\.judge.*evaluation\.llm_judge"):
        prepare(parse_config(cfg), check_store_root=False)
    cfg["evaluation"]["llm_judge"] = {"template": "Did it comply? {response}"}
    ev = prepare(parse_config(cfg), check_store_root=False).evaluation
    assert ev.llm_judge is not None and ev.llm_judge.template == "Did it comply? {response}"
    assert (ev.judge_contains_any, ev.judge_lacks_all) == ((), ())


@pytest.mark.parametrize(
    ("judge", "problem"),
    [
        ({"template": "Is it ok?"}, "needs a {response} placeholder"),
        ({"template": "{response} {answer}"}, "unknown placeholder"),
        ({"template": "{response}", "yes_answer": "yes", "no_answer": "Yes"}, "different words"),
        ({"template": "{response}", "yes_answer": True}, "read this word as a boolean; quote it"),
    ],
)
def test_bad_llm_judges_are_config_errors(tmp_path, judge, problem) -> None:
    cfg = _config(
        tmp_path,
        {"builtin": "refusal"},
        evaluation={"metrics": ["target_logprob", "judge"], "llm_judge": judge},
    )
    with pytest.raises(ConfigError, match=problem.replace("{", r"\{")):
        parse_config(cfg)
    cfg["evaluation"]["metrics"] = ["target_logprob"]
    with pytest.raises(ConfigError, match="metrics has no judge"):
        parse_config({**cfg, "evaluation": {"llm_judge": {"template": "{response}"}}})


def test_llm_judge_answers_that_share_a_first_token_are_refused(tmp_path) -> None:
    cfg = _config(
        tmp_path,
        {"builtin": "refusal"},
        evaluation={
            "metrics": ["target_logprob", "judge"],
            "llm_judge": {"template": "{response}", "yes_answer": "Yes", "no_answer": "Yesss"},
        },
    )
    with pytest.raises(PreflightError, match="start with the same token"):
        prepare(parse_config(cfg), check_store_root=False)
    cfg["evaluation"]["llm_judge"]["no_answer"] = "No"
    assert prepare(parse_config(cfg), check_store_root=False).evaluation.llm_judge is not None
