"""Results on disk and in the terminal: JSON written atomically, and a plain text table.

Writing to a temporary file and renaming it means an interrupted run never leaves a truncated
``results.json`` behind, and never clobbers the previous one with half a file.

Files are strict JSON, readable by any parser: a non-finite float is written as the string
``"inf"`` / ``"-inf"`` (an unbounded privacy budget, say) or as ``null`` (NaN: no value), and
anything that slips through raises instead of writing ``Infinity`` or ``NaN``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch


def machine_description() -> dict[str, Any]:
    """What the numbers were measured on, stored next to every result."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
    }


def to_strict_json(value: Any) -> Any:
    """`value` with every non-finite float replaced, ready for ``json.dump(allow_nan=False)``.

    Recurses into dicts, lists, tuples (written as lists) and dataclass instances (written as
    dicts of their fields, as ``dataclasses.asdict``); numpy scalars and arrays become Python
    numbers and lists. ``inf`` / ``-inf`` become the strings ``"inf"`` / ``"-inf"`` and NaN
    becomes None (``null``); a non-finite dict key becomes ``"inf"``, ``"-inf"`` or ``"nan"``.
    The input is not modified. Anything else is returned as is (`write_json` stringifies
    what JSON cannot hold).
    """
    if isinstance(value, float | np.floating):
        number = float(value)
        if math.isnan(number):
            return None
        if math.isinf(number):
            return "inf" if number > 0 else "-inf"
        return number
    if isinstance(value, np.generic | np.ndarray):
        return to_strict_json(value.tolist())
    if isinstance(value, dict):
        return {_strict_key(key): to_strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_strict_json(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: to_strict_json(getattr(value, field.name))
            for field in dataclasses.fields(value)
        }
    return value


def _strict_key(key: Any) -> Any:
    if isinstance(key, float | np.floating) and not math.isfinite(key):
        return str(float(key))  # "inf", "-inf", "nan"
    return key


def dumps_strict(value: Any, *, indent: int | None = None) -> str:
    """Strict JSON text of `value` (`to_strict_json`; other objects as ``str``)."""
    return json.dumps(to_strict_json(value), indent=indent, default=str, allow_nan=False)


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write `payload` (plus the machine description) to `path` atomically, as strict JSON."""
    text = dumps_strict({**payload, "machine": machine_description()}, indent=2)
    with _atomic_writer(path) as handle:
        handle.write(text + "\n")
    return path


def read_json(path: Path) -> Any:
    """Parse the strict JSON file at `path`; ``NaN`` / ``Infinity`` in it raise ValueError."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle, parse_constant=_reject_constant)


def write_jsonl(path: Path, rows: Iterable[Any]) -> Path:
    """Write `rows` to `path` atomically, one strict JSON value per line (JSON Lines)."""
    lines = [dumps_strict(row) + "\n" for row in rows]
    with _atomic_writer(path) as handle:
        handle.writelines(lines)
    return path


def read_jsonl(path: Path) -> list[Any]:
    """The values of a JSON Lines file, strictly parsed, skipping blank lines."""
    with open(path, encoding="utf-8") as handle:
        return [
            json.loads(line, parse_constant=_reject_constant) for line in handle if line.strip()
        ]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"not strict JSON: {name} is not a JSON value")


@contextmanager
def _atomic_writer(path: Path) -> Iterator[IO[str]]:
    """A text handle on a temporary file beside `path`, renamed onto it only on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A left-aligned text table (callers format their numbers)."""
    cells = [[str(v) for v in row] for row in rows]
    widths = [max([len(str(h)), *(len(r[i]) for r in cells)]) for i, h in enumerate(header)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)
