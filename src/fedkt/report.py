"""Results on disk and in the terminal: JSON written atomically, and a plain text table.

Writing to a temporary file and renaming it means an interrupted run never leaves a truncated
``results.json`` behind, and never clobbers the previous one with half a file.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write `payload` (plus the machine description) to `path` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {**payload, "machine": machine_description()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(body, handle, indent=2, default=str)
        handle.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes it private; results are meant to be shared
    os.replace(tmp, path)
    return path


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A left-aligned text table (callers format their numbers)."""
    cells = [[str(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)
