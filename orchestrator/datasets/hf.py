"""Tasks from Hugging Face data sets (``task: {hf: {...}, mapping, filter}``).

``hf.path`` is one of:

- a folder written by ``datasets.Dataset.save_to_disk`` (or a ``DatasetDict``'s),
  read with ``datasets.load_from_disk``;
- a local ``.parquet``, ``.arrow``, ``.jsonl``/``.json`` or ``.csv`` file, read
  with the matching ``datasets`` builder (its one split is ``train``);
- a hub id (``walledai/HarmBench``), read with ``datasets.load_dataset`` at
  ``hf.name`` and ``hf.revision``; with ``HF_DATASETS_OFFLINE=1`` only from
  the local cache.

``hf.splits`` maps the study's ``train`` and ``transfer`` splits to the data
set's splits, each optionally sliced (``test[:100]``, ``train[10:]``). Rows then
go through ``task.filter`` (keep a row when its column holds one of the
values) and the same column mapping, checks and located errors as the file
loaders (``loaders.examples_from_rows``); a row is named ``PATH[SPLIT], row N``.

``datasets`` is imported only here, so a study without ``hf:`` never imports it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from orchestrator.datasets.loaders import Targets, examples_from_rows
from orchestrator.datasets.rows import DatasetError, RawRow
from workers.examples import Example

_SLICE = re.compile(r"^([A-Za-z0-9_.\-]+)(?:\[(-?\d*):(-?\d*)\])?$")
_BUILDERS = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".jsonl": "json",
             ".json": "json", ".csv": "csv"}  # fmt: skip


def _split_spec(path: str, spec: str) -> tuple[str, slice]:
    m = _SLICE.match(spec.strip())
    if m is None:
        raise DatasetError(path, "", None, f"split {spec!r} is not NAME or NAME[a:b]")
    lo, hi = (int(x) if x else None for x in (m.group(2), m.group(3)))
    return m.group(1), slice(lo, hi)


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise DatasetError(
            "task.hf", "", None,
            "needs the `datasets` library, which is not installed: pip install 'datasets>=2.19' "
            "(or this project with its hf extra: pip install -e '.[hf]')",
        ) from None  # fmt: skip
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    return datasets


def _is_saved_folder(path: Path) -> bool:
    return path.is_dir() and any(
        (path / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


def _load_split(src: Any, split: str) -> Any:
    """One split of the data set, whole (slices are applied by the caller)."""
    ds = _import_datasets()
    where = os.path.expanduser(src.path)
    local = Path(where)
    if _is_saved_folder(local):
        try:
            loaded = ds.load_from_disk(where)
        except Exception as exc:  # noqa: BLE001 - any failure means an unreadable folder
            raise DatasetError(
                src.path, "", None, f"not a readable saved data set ({exc})"
            ) from None
        if isinstance(loaded, ds.DatasetDict):
            if split not in loaded:
                raise DatasetError(
                    src.path, "", None,
                    f"has no split {split!r}; its splits: {', '.join(sorted(loaded.keys()))}",
                )  # fmt: skip
            return loaded[split]
        if split != "train":
            raise DatasetError(
                src.path, "", None,
                f"is a single data set (no splits); name its split 'train', not {split!r}",
            )  # fmt: skip
        return loaded
    builder = _BUILDERS.get(local.suffix.lower())
    if builder is not None or local.exists():
        if builder is None or not local.is_file():
            raise DatasetError(
                src.path, "", None,
                "is neither a saved data set folder (save_to_disk) nor a .parquet, .arrow, "
                ".jsonl or .csv file",
            )  # fmt: skip
        if split != "train":
            raise DatasetError(src.path, "", None, f"a local file has one split, 'train', not {split!r}")  # fmt: skip
        try:
            return ds.load_dataset(builder, data_files=where, split="train")
        except Exception as exc:  # noqa: BLE001 - the builder's error, located
            raise DatasetError(
                src.path, "", None, f"could not be read as {builder} ({exc})"
            ) from None
    return _load_hub(ds, src, split)


def _load_hub(ds: Any, src: Any, split: str) -> Any:
    offline = ds.config.HF_DATASETS_OFFLINE
    try:
        return ds.load_dataset(src.path, src.name, split=split, revision=src.revision)
    except ValueError as exc:
        text = str(exc)
        if "split" in text.lower():
            raise DatasetError(src.path, "", None, f"has no split {split!r} ({text})") from None
        raise DatasetError(src.path, "", None, text) from None
    except Exception as exc:  # noqa: BLE001 - connection, missing repo, cache miss
        cache = ds.config.HF_DATASETS_CACHE
        if offline:
            raise DatasetError(
                src.path, "", None,
                f"is not in the local data set cache {cache} and HF_DATASETS_OFFLINE is set, "
                "so it cannot be downloaded; download it once with network access (or copy "
                "the cache), or point hf.path at a save_to_disk folder",
            ) from None  # fmt: skip
        raise DatasetError(
            src.path, "", None,
            f"could not be loaded from the hub ({type(exc).__name__}: {exc}); the local cache "
            f"is {cache}",
        ) from None  # fmt: skip


def _keep(row: Mapping[str, Any], rules: Mapping[str, Any]) -> bool:
    for column, wanted in rules.items():
        values = wanted if isinstance(wanted, list) else [wanted]
        if row.get(column) not in values:
            return False
    return True


def _rows(data: Any, part: slice, rules: Mapping[str, Any], source: str) -> Iterator[RawRow]:
    columns = set(data.column_names)
    missing = sorted(set(rules) - columns)
    if missing:
        raise DatasetError(
            source, "", "filter",
            f"names column(s) {missing} the data set does not have; its columns: "
            f"{', '.join(sorted(columns))}",
        )  # fmt: skip
    for i in range(len(data))[part]:
        row = data[i]
        if _keep(row, rules):
            yield RawRow(f"row {i}", i, dict(row))


def load_hf_examples(
    src: Any,
    mapping: Mapping[str, str] | None,
    rules: Mapping[str, Any],
    default_targets: Targets = ((), ()),
) -> list[Example]:
    """The examples of a ``task.hf`` source (an ``HFSource``); see the module
    docstring. A row with no targets of its own takes ``default_targets``.

    Raises:
        DatasetError: the data set, a split, a column or a row is wrong; the
            message names the path, the split and the row.
    """
    out: list[Example] = []
    splits = dict(src.splits)
    for ours, spec in splits.items():
        name, part = _split_spec(src.path, spec)
        data = _load_split(src, name)
        source = f"{src.path}[{spec}]"
        default = ours if len(splits) > 1 or "split" not in (mapping or {}) else None
        stem = re.sub(r"[^A-Za-z0-9_.\-]+", "-", Path(src.path).name or src.path)
        out += examples_from_rows(
            _rows(data, part, rules, source),
            source,
            mapping,
            default_split=default,
            id_prefix=f"{stem}-{name}",
            default_targets=default_targets,
        )
    ids = [e.id for e in out]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise DatasetError(
            src.path, "", "id",
            f"ids {dup} appear in two splits; map an id column that is unique across them",
        )  # fmt: skip
    return out
