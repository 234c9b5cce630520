"""A client's private rows on its own disk: one `Example` per JSON line.

In a deployment each SuperNode reads only its own file (``--data``); `fedkt partition` writes
the files of a simulation's split, so both paths can train on the same rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from fedkt.data import Example
from fedkt.errors import DataError
from fedkt.report import read_jsonl, write_jsonl


def write_rows(path: str | Path, examples: Iterable[Example]) -> Path:
    """Write ``examples`` to ``path`` (JSON lines, `Example`'s fields)."""
    return write_jsonl(Path(path), (dataclasses.asdict(example) for example in examples))


def read_rows(path: str | Path) -> tuple[Example, ...]:
    """The examples of ``path``; a missing, empty or malformed file is a DataError that names
    the file and line, never a row's text (the error may travel in a log)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"client data file {path} does not exist")
    rows = []
    for line, raw in enumerate(read_jsonl(path), start=1):
        try:
            rows.append(Example(**{**raw, "choices": tuple(raw.get("choices", ()))}))
        except (TypeError, DataError) as err:
            # from None: the original message may quote the row
            raise DataError(
                f"{path} line {line} is not an Example row ({type(err).__name__})"
            ) from None
    if not rows:
        raise DataError(f"client data file {path} has no rows")
    return tuple(rows)
