"""A server's checkpoint: named adapters and a JSON state in one file, replaced atomically.

One safetensors file holds every tensor (keys ``<name>/<adapter key>``) and, in its header
metadata, the JSON state (round index, per-round records, the caller's results so far and a
schema version). It is written to a temporary file and renamed over the old one, so a run
killed at any instant leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fedkt.errors import FedktError

SCHEMA = 1
"""Bumped when the layout changes; an older or newer checkpoint is refused, not misread."""

_STATE_KEY = "fedkt-state"

Adapters = dict[str, dict[str, torch.Tensor]]


def write_checkpoint(path: Path, adapters: Adapters, state: dict[str, Any]) -> Path:
    """Write ``adapters`` (name -> state dict) and ``state`` (JSON-able) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"{name}/{key}": tensor.detach().to("cpu").contiguous()
        for name, adapter in adapters.items()
        for key, tensor in adapter.items()
    }
    metadata = {_STATE_KEY: json.dumps({"schema": SCHEMA, **state}, allow_nan=False)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_checkpoint(path: Path) -> tuple[Adapters, dict[str, Any]]:
    """(adapters, state) as written by `write_checkpoint`; a missing, damaged or foreign
    file is one `FedktError` naming it and what to do."""
    advice = f"delete {path} to start that method again, or run without --resume"
    if not path.is_file():
        raise FedktError(f"checkpoint {path} not found; {advice}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
        state = json.loads(metadata[_STATE_KEY])
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        raise FedktError(f"checkpoint {path} is damaged ({type(err).__name__}); {advice}") from err
    if state.get("schema") != SCHEMA:
        raise FedktError(
            f"checkpoint {path} has schema {state.get('schema')!r}, this fedkt reads "
            f"{SCHEMA}; {advice}"
        )
    adapters: Adapters = {}
    for key, tensor in tensors.items():
        name, _, inner = key.partition("/")
        adapters.setdefault(name, {})[inner] = tensor
    return adapters, state
