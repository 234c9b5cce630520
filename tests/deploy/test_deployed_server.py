"""The deployed FedCoLLM apps called in this process (no SuperLink, no SuperNodes): the
server's progress line and a client whose SLM is not the server's."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from flwr.app import Context, Message, Metadata, RecordDict
from transformers import PreTrainedTokenizerFast

from conftest import build_tiny_llama
from fedkt.config import load_config
from fedkt.data import Example
from fedkt.deploy import apps, clientapp
from fedkt.deploy.rows import write_rows
from fedkt.errors import FedktError
from fedkt.federation import fedcollm, keys
from fedkt.models import adapter_state, add_lora, load_model

ROWS = [
    Example(id=f"r{i}", context=f"Question: q{i}?\nAnswer:", choices=("yes", "no"), gold=i % 2)
    for i in range(2)
]


def _config(root: Path, slm: Path, clients: int = 2) -> Path:
    path = root / f"config-{slm.name}.toml"
    path.write_text(
        f'output_dir = "{root / "out"}"\n'
        '[model]\ndtype = "float32"\ndevice = "cpu"\n'
        '[data]\ntasks = ["arc_easy"]\n'
        f'[federation]\nllm = "{slm}"\nslm = "{slm}"\nclients = {clients}\n'
        "[fedcollm]\nrounds = 1\n"
        "[train]\nbatch_size = 2\nmax_length = 64\nwarmup_ratio = 0.0\n"
        "[lora]\nr = 4\nalpha = 8\ndropout = 0.0\n",
        encoding="utf-8",
    )
    return path


def test_the_round_line_counts_clients_not_stand_in_rows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_rows(tmp_path / "public.jsonl", ROWS)
    config = load_config(_config(tmp_path, tmp_path / "slm", clients=3))
    spec = apps.server_spec(config, "arc_easy", str(tmp_path / "public.jsonl"))
    with caplog.at_level(logging.INFO, logger=fedcollm.__name__):
        with apps.client_count_line():
            fedcollm._log_round(spec, 0, 1.0, aux_rows=2)
        fedcollm._log_round(spec, 0, 1.0, aux_rows=2)  # the filter is gone again
    deployed, simulated = [r.getMessage() for r in caplog.records]
    assert "round 1/1: 3 clients, distil on 2 public rows" in deployed
    assert "rows," not in deployed.split("distil")[0]
    assert "3 clients x 1 rows" in simulated  # what the stand-ins alone would say


@pytest.fixture
def two_slms(tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast) -> tuple[Path, Path]:
    """The server's SLM (2 layers) and another one (3 layers) a misconfigured client uses."""
    paths = []
    for name, layers in (("slm", 2), ("other-slm", 3)):
        build_tiny_llama(len(tiny_tokenizer), n_layers=layers).save_pretrained(tmp_path / name)
        tiny_tokenizer.save_pretrained(tmp_path / name)
        paths.append(tmp_path / name)
    return paths[0], paths[1]


def test_a_client_with_another_slm_fails_the_round_in_one_clear_line(
    tmp_path: Path, two_slms: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The client refuses theta (its adapters do not match) with an error reply that quotes
    no data; the server stops with one line naming the node, partition and error type, and
    the client's own log says what is wrong."""
    server_slm, client_slm = two_slms
    lora = load_config(_config(tmp_path, server_slm)).lora
    theta = adapter_state(add_lora(load_model(str(server_slm), dtype="float32"), lora))
    write_rows(tmp_path / "client1.jsonl", ROWS)
    node_config = {
        "config": str(_config(tmp_path, client_slm)),
        "data": str(tmp_path / "client1.jsonl"),
        "partition-id": 1,
        "output-dir": str(tmp_path / "client1-out"),
    }
    context = Context(
        run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={}
    )
    metadata = Metadata(1, "m1", 0, 7, "", "0", time.time(), 60.0, keys.TRAIN)
    msg = Message(fedcollm.broadcast_content(theta, 0), metadata=metadata)
    with caplog.at_level(logging.ERROR):
        reply = clientapp._client_train(msg, context)
    assert reply.has_error() and not reply.has_content()
    assert "adapter state does not match the model's LoRA adapters" in caplog.text
    assert "same base model" in caplog.text
    with pytest.raises(FedktError) as caught:
        fedcollm.read_replies([reply], limit=keys.DEFAULT_MAX_MESSAGE_BYTES)
    line = str(caught.value)
    assert "\n" not in line
    assert line.startswith("1 of 1 FedCoLLM clients failed: node 7: ModelError in the FedCoLLM")
    assert "partition 1" in line and "Question" not in line
