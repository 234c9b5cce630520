"""Rows from the Hugging Face Hub or from local JSONL files in the hub row schema.

Local layout: ``<data_dir>/<hub id with "/" -> "__">/<config or "default">/<split>.jsonl``.
Local files are parsed here line by line rather than through ``datasets``: it is faster for a
few thousand rows and lets every error name the exact file and line.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedkt.data.example import Example
from fedkt.data.tasks import RowError, TaskSpec, get_task
from fedkt.errors import DataError

DATA_DIR_ENV = "FEDKT_DATA_DIR"

Located = tuple[str, dict[str, Any]]
"""A row and where it came from ("file.jsonl line 7" or "hub ... row 6"), for error messages."""


def resolve_data_dir(explicit: str | Path | None = None) -> Path | None:
    """`explicit` > ``$FEDKT_DATA_DIR`` > None, where None means "load from the hub"."""
    chosen = explicit if explicit is not None else os.environ.get(DATA_DIR_ENV) or None
    return None if chosen is None else Path(chosen).expanduser()


def local_path(spec: TaskSpec, split: str, data_dir: Path) -> Path:
    """Where `split` of `spec` lives under `data_dir` (see the module docstring)."""
    return (
        data_dir
        / spec.hub_id.replace("/", "__")
        / (spec.hub_config or "default")
        / f"{split}.jsonl"
    )


def load_rows(
    task: str | TaskSpec, split: str, data_dir: str | Path | None = None
) -> list[dict[str, Any]]:
    """The raw rows of one split, each checked to have the task's fields."""
    return [row for _, row in _located_rows(_spec(task), split, data_dir)]


def load_examples(
    task: str | TaskSpec,
    split: str,
    data_dir: str | Path | None = None,
    limit: int | None = None,
) -> list[Example]:
    """The first `limit` rows (all when None) of one split as `Example`s.

    ``split`` may carry a row slice as the hub writes it, e.g. ``"train[-200:]"`` (the last
    200 train rows: a held-out set for a task with no validation split, such as GSM8K).
    Rows without an ``id`` field get ``f"{task}-{name}-{row index}"``: the index is the row's
    position in the whole split, the same on the hub and in the local files, sliced or not.
    """
    spec = _spec(task)
    name, rows = split_slice(split)
    located = _located_rows(spec, name, data_dir)
    positions = range(len(located))[rows]
    if not positions and located:
        raise DataError(
            f"split {split!r} of task {spec.name} selects no rows (the split has "
            f"{len(located)}): choose a slice inside them, e.g. '{name}[:{len(located)}]'"
        )
    examples: list[Example] = []
    for index in positions[:limit]:
        where, row = located[index]
        try:
            example = spec.to_example(row)
        except RowError as err:
            raise DataError(f"{where}: {err}; fix or remove this row") from err
        examples.append(
            example if example.id else replace(example, id=f"{spec.name}-{name}-{index}")
        )
    return examples


_SLICE = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)(?:\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")


def split_slice(split: str) -> tuple[str, slice]:
    """``"train[-200:]"`` -> ``("train", slice(-200, None))``; a plain name takes every row."""
    match = _SLICE.match(split.strip())
    if match is None:
        raise DataError(
            f"split {split!r} is not a split name or a row slice; write e.g. 'validation', "
            "'train[:1000]' or 'train[-200:]' (row numbers, not percentages)"
        )
    start, stop = (int(v) if v else None for v in match.group("start", "stop"))
    return match.group("name"), slice(start, stop)


def _spec(task: str | TaskSpec) -> TaskSpec:
    return task if isinstance(task, TaskSpec) else get_task(task)


def _located_rows(spec: TaskSpec, split: str, data_dir: str | Path | None) -> list[Located]:
    root = resolve_data_dir(data_dir)
    if spec.rows is not None:
        located = spec.rows(split)
    elif root is None:
        located = _hub_rows(spec, split)
    else:
        path = _existing_file(spec, split, root, explicit=data_dir is not None)
        located = _read_jsonl(path)
        if not located:
            raise DataError(empty_file_message(spec, path))
    for where, row in located:
        missing = [field for field in spec.fields if field not in row]
        if missing:
            raise DataError(
                f"{where}: row has no field {missing[0]!r} (task {spec.name} needs "
                f"{', '.join(spec.fields)}; the row has {', '.join(row) or 'none'})"
            )
    return located


def empty_file_message(spec: TaskSpec, path: Path) -> str:
    """What to say about a local split file without a single row."""
    return (
        f"{path} holds no rows (it is empty or only blank lines): write one JSON object per "
        f"line with the fields of task {spec.name} ({', '.join(spec.fields)}), or delete the "
        f"file and point the data directory ({DATA_DIR_ENV} or data.dir) at a complete copy"
    )


def check_local_split(spec: TaskSpec, split: str, root: Path, *, explicit: bool) -> Path:
    """The local file of `split` (a plain split name) of built-in task `spec` under `root`,
    checked to exist and hold a row without reading past its first non-blank line; `explicit`:
    the folder was given (data.dir, --data-dir), not taken from ``$FEDKT_DATA_DIR``."""
    path = _existing_file(spec, split, root, explicit=explicit)
    with path.open("rb") as lines:
        if not any(line.strip() for line in lines):
            raise DataError(empty_file_message(spec, path))
    return path


def _existing_file(spec: TaskSpec, split: str, root: Path, *, explicit: bool) -> Path:
    path = local_path(spec, split, root)
    if path.is_file():
        return path
    present = sorted(p.stem for p in path.parent.glob("*.jsonl"))
    layout = "<dir>/<hub id with '/' -> '__'>/<config or 'default'>/<split>.jsonl"
    if explicit:
        fix = (
            f"pass a data_dir laid out as {layout}, or None (with {DATA_DIR_ENV} unset) for the hub"
        )
    else:
        fix = (
            f"{DATA_DIR_ENV}={root} chose this folder: point it at {layout} or unset it for the hub"
        )
    raise DataError(
        f"no file {path} for split {split!r} of task {spec.name} "
        f"(splits there: {', '.join(present) or 'none'}); {fix}"
    )


def _read_jsonl(path: Path) -> list[Located]:
    """Parse one JSON object per line; blank lines are skipped, line numbers stay true."""
    located: list[Located] = []
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    located.append(_parse_line(path, number, line))
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 ({err}); re-save it as UTF-8 JSON Lines") from err
    return located


def _parse_line(path: Path, number: int, line: str) -> Located:
    where = f"{path} line {number}"
    try:
        row = json.loads(line.rstrip("\n"))  # keeps the error column on this line
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from err
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected one JSON object per line, got {type(row).__name__}")
    return where, row


def _hub_rows(spec: TaskSpec, split: str) -> list[Located]:
    import datasets  # deferred: importing datasets costs ~1 s that local loading never needs

    name = f"{spec.hub_id} ({spec.hub_config or 'default'}) split {split!r}"
    try:
        rows = datasets.load_dataset(spec.hub_id, spec.hub_config, split=split).to_list()
    # datasets raises many unrelated types here (offline, unknown split, auth, ...); all of
    # them get the same advice.
    except Exception as err:
        raise DataError(
            f"could not load {name} from the Hugging Face Hub: {err}. To use local files, set "
            f"{DATA_DIR_ENV} (or pass data_dir) to a folder holding "
            f"{local_path(spec, split, Path('<dir>'))}"
        ) from err
    if not rows:
        raise DataError(f"{name} on the Hugging Face Hub holds no rows: choose another split")
    return [(f"hub {name} row {index}", row) for index, row in enumerate(rows)]
