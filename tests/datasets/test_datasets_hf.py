"""Tasks from Hugging Face data sets (``task: {hf: ...}``): a ``save_to_disk``
folder and a local Parquet file load with a mapping and a filter; a bad
column, a missing split and an offline cache miss are located errors; a study
without ``hf:`` never imports ``datasets``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")

from orchestrator.datasets import DatasetError  # noqa: E402
from orchestrator.datasets.hf import load_hf_examples  # noqa: E402
from orchestrator.run.preflight import load_task  # noqa: E402
from orchestrator.study.config import HFSource, parse_config  # noqa: E402

ROWS = {
    "behavior": [f"Explain how to do harmful thing {i}." for i in range(8)],
    "category": [
        "chemical",
        "cyber",
        "chemical",
        "harassment",
        "cyber",
        "chemical",
        "cyber",
        "chemical",
    ],  # fmt: skip
    "refusal": ["I cannot help with that."] * 8,
}
MAPPING = {"prompt": "behavior", "promote": "refusal"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "harmful"
    d = datasets.Dataset.from_dict(ROWS)
    datasets.DatasetDict({"train": d.select(range(6)), "test": d.select(range(6, 8))}).save_to_disk(
        str(folder)
    )
    return folder


@pytest.fixture(scope="module")
def parquet(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hf") / "harmful.parquet"
    datasets.Dataset.from_dict(ROWS).to_parquet(str(path))
    return path


def test_a_saved_folder_loads_with_mapping_filter_and_splits(saved) -> None:
    src = HFSource(path=str(saved), splits={"train": "train[1:]", "transfer": "test"})
    got = load_hf_examples(src, MAPPING, {"category": ["chemical", "cyber"]})
    train = [e for e in got if e.split == "train"]
    transfer = [e for e in got if e.split == "transfer"]
    # direct: rows 1..5 of train whose category is chemical or cyber, and all of test
    want_train = [i for i in range(1, 6) if ROWS["category"][i] in ("chemical", "cyber")]
    want_test = [i for i in (6, 7) if ROWS["category"][i] in ("chemical", "cyber")]
    assert [e.prompt[0][1] for e in train] == [ROWS["behavior"][i] for i in want_train]
    assert [e.prompt[0][1] for e in transfer] == [ROWS["behavior"][i] for i in want_test]
    assert all(e.promote == ("I cannot help with that.",) for e in got)
    assert all(e.meta.get("category") in ("chemical", "cyber") for e in got)
    assert len({e.id for e in got}) == len(got)


def test_a_local_parquet_file_loads(parquet) -> None:
    src = HFSource(path=str(parquet), splits={"train": "train[:4]", "transfer": "train[4:]"})
    got = load_hf_examples(src, MAPPING, {"category": "cyber"})
    assert [(e.split, e.prompt[0][1]) for e in got] == [
        ("train", ROWS["behavior"][1]),
        ("transfer", ROWS["behavior"][4]),
        ("transfer", ROWS["behavior"][6]),
    ]


def test_a_study_loads_its_task_from_hf(saved, tmp_path) -> None:
    cfg = parse_config({
        "name": "hf-study", "n_trials": 1, "vectors_per_trial": 2,
        "model": {"name": "tiny-random-llama"},
        "task": {"hf": {"path": str(saved), "splits": {"train": "train", "transfer": "test"}},
                 "mapping": MAPPING},
        "store": {"root": str(tmp_path / "store")},
    })  # fmt: skip
    train, transfer, task = load_task(cfg)
    assert (len(train), len(transfer), task.name) == (6, 2, str(saved))
    assert task.examples == (*train, *transfer)


def test_a_bad_column_is_located(saved) -> None:
    src = HFSource(path=str(saved), splits={"train": "train"})
    with pytest.raises(DatasetError) as err:
        load_hf_examples(src, {"prompt": "behaviour", "promote": "refusal"}, {})
    text = str(err.value)
    assert f"{saved}[train]" in text and "row 0" in text and "behaviour" in text
    with pytest.raises(DatasetError, match="filter.*colour"):
        load_hf_examples(src, MAPPING, {"colour": "red"})


def test_a_missing_split_names_the_splits(saved, parquet) -> None:
    with pytest.raises(DatasetError, match=r"no split 'validation'; its splits: test, train"):
        load_hf_examples(HFSource(path=str(saved), splits={"train": "validation"}), MAPPING, {})
    with pytest.raises(DatasetError, match="one split, 'train'"):
        load_hf_examples(HFSource(path=str(parquet), splits={"train": "test"}), MAPPING, {})
    with pytest.raises(DatasetError, match="is not NAME or NAME"):
        load_hf_examples(HFSource(path=str(saved), splits={"train": "train[a:b]"}), MAPPING, {})


def test_an_offline_cache_miss_names_the_cache(tmp_path) -> None:
    """A hub id not in the cache, with HF_DATASETS_OFFLINE=1, in a fresh
    interpreter (the flag is read at import): a located error naming the cache."""
    code = (
        "from orchestrator.datasets.hf import load_hf_examples\n"
        "from orchestrator.study.config import HFSource\n"
        "try:\n"
        "    load_hf_examples(HFSource(path='nobody-xyz/not-a-dataset'), {}, {})\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    cache = tmp_path / "cache"
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(cache),
           "HF_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout  # fmt: skip
    assert out.startswith("DatasetError nobody-xyz/not-a-dataset:"), out
    assert str(cache) in out and "HF_DATASETS_OFFLINE" in out


def test_a_study_without_hf_never_imports_datasets() -> None:
    code = (
        "import sys\n"
        "from orchestrator.run.preflight import load_task\n"
        "from orchestrator.study.config import parse_config\n"
        "cfg = parse_config({'name': 's', 'n_trials': 1, 'task': {'builtin': 'refusal'}})\n"
        "load_task(cfg)\n"
        "print('datasets' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert out.stdout.strip() == "False", out.stderr


def test_config_wants_one_source_and_filter_with_hf(tmp_path) -> None:
    from orchestrator.study.config import ConfigError

    base = {"name": "s", "n_trials": 1, "store": {"root": str(tmp_path)}}
    with pytest.raises(ConfigError, match="exactly one of task.builtin, task.path or task.hf"):
        parse_config({**base, "task": {"builtin": "refusal", "hf": {"path": "x"}}})
    with pytest.raises(ConfigError, match="task.filter applies to task.hf"):
        parse_config({**base, "task": {"builtin": "refusal", "filter": {"a": 1}}})
    with pytest.raises(ConfigError, match="splits"):
        parse_config({**base, "task": {"hf": {"path": "x", "splits": {"test": "test"}}}})


def test_a_hub_source_asks_load_dataset_for_its_subset_and_revision(monkeypatch) -> None:
    """``hf.name`` and ``hf.revision`` reach ``datasets.load_dataset`` (the
    hub is not reachable here: the call is recorded at that boundary, then
    fails as an unreachable hub does, and the error is located)."""
    calls = []

    def recorded(*args, **kwargs):
        calls.append((args, kwargs))
        raise ConnectionError("no network in this test")

    monkeypatch.setattr(datasets, "load_dataset", recorded)
    src = HFSource(path="walledai/HarmBench", name="standard", revision="0123abc",
                   splits={"train": "train"})  # fmt: skip
    with pytest.raises(DatasetError, match="^walledai/HarmBench: "):
        load_hf_examples(src, MAPPING, {})
    (args, kwargs), *_ = calls
    assert args[:2] == ("walledai/HarmBench", "standard")
    assert kwargs["revision"] == "0123abc" and kwargs["split"] == "train"
