"""Server checkpoints: one file, replaced atomically; damaged or foreign files are one clear
error naming the file and what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fedkt.errors import FedktError
from fedkt.federation.checkpoint import read_checkpoint, write_checkpoint


def _adapters() -> dict[str, dict[str, torch.Tensor]]:
    return {
        "llm": {"a.lora_A.weight": torch.randn(2, 3)},
        "slm": {"b.lora_B.weight": torch.ones(4)},
    }


def test_round_trip_is_exact_and_replaces_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "run" / "checkpoint.safetensors"
    write_checkpoint(path, _adapters(), {"rounds_done": 1})
    adapters = _adapters()
    write_checkpoint(path, adapters, {"rounds_done": 2, "records": [{"round": 1}]})
    read, state = read_checkpoint(path)
    assert state == {"schema": 1, "rounds_done": 2, "records": [{"round": 1}]}
    assert all(torch.equal(read[n][k], t) for n, a in adapters.items() for k, t in a.items())
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


@pytest.mark.parametrize("damage", ["missing", "truncated", "foreign", "schema"])
def test_a_missing_or_damaged_checkpoint_is_one_clear_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "checkpoint.safetensors"
    if damage != "missing":
        write_checkpoint(path, _adapters(), {"rounds_done": 1})
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif damage == "foreign":
        save_file({"x": torch.zeros(1)}, str(path))  # a safetensors file without fedkt's state
    elif damage == "schema":
        save_file(
            {"x": torch.zeros(1)}, str(path), metadata={"fedkt-state": json.dumps({"schema": 99})}
        )
    with pytest.raises(FedktError, match=rf"checkpoint {path}.*(delete|without --resume)"):
        read_checkpoint(path)
