"""The deployed FedCoT and FDKT specs built in this process (no SuperLink, no SuperNodes, no
model): a client's spec from its node config holds its own rows at its own index and nothing
else; the server's holds none; a missing rows file is refused with one clear error (and,
through the client app, an error reply that quotes no data); a sweep is refused."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import pytest
from flwr.app import Context, Message, Metadata, RecordDict
from loopback import CLIENT_ROWS, EVAL_ROWS, examples, task_section

from fedkt.algorithms.fedcot import FedCoTSettings
from fedkt.config import load_config
from fedkt.deploy import apps, clientapp
from fedkt.deploy import fdkt as deployed_fdkt
from fedkt.deploy import fedcot as deployed_fedcot
from fedkt.deploy.common import NodeSetup
from fedkt.deploy.rows import write_rows
from fedkt.errors import ConfigError, DataError
from fedkt.federation import keys
from fedkt.federation.fedcot import FedCoTSpec
from fedkt.models import LoraSettings


def _config(root: Path, algorithm: str, sweep: str = "[8.0]") -> Path:
    path = root / f"{algorithm}.toml"
    path.write_text(
        f'algorithm = "{algorithm}"\noutput_dir = "{root / "server-out"}"\n'
        '[model]\ndtype = "float32"\ndevice = "cpu"\n'
        f"{task_section(root)}"
        f'[federation]\nllm = "{root / "llm"}"\nslm = "{root / "slm"}"\nclients = 2\n'
        f'[fedcot]\nstrategies = ["em"]\neps = {sweep}\n'
        f"[fdkt]\neps = {sweep}\n",
        encoding="utf-8",
    )
    return path


def _node_config(root: Path, config: Path, k: int = 1) -> dict[str, str | int]:
    return {
        "config": str(config),
        "data": str(root / f"client{k}.jsonl"),
        "partition-id": k,
        "num-partitions": 2,
        "output-dir": str(root / f"client{k}-out"),
    }


MODULES = {"fedcot": deployed_fedcot, "fdkt": deployed_fdkt}


@pytest.mark.parametrize("algorithm", sorted(MODULES))
def test_a_client_spec_holds_its_own_rows_at_its_own_index(tmp_path: Path, algorithm: str) -> None:
    rows = examples(CLIENT_ROWS[1], "c1-", with_question=True)
    write_rows(tmp_path / "client1.jsonl", rows)
    config_path = _config(tmp_path, algorithm)
    config = load_config(config_path)
    node = NodeSetup.of(_node_config(tmp_path, config_path))
    spec = MODULES[algorithm].client_spec(config, node)
    assert spec.deployed and spec.num_clients == 2
    assert spec.client_data == ((), tuple(rows))  # nothing of client 0
    assert [row.question for row in spec.eval_data] == [r["question"] for r in EVAL_ROWS]
    own = tmp_path / "client1-out"
    assert spec.reports_dir == str(own / "client-reports")
    assert spec.predictions_dir == str(own / "predictions") and spec.artefacts_dir == str(own)
    server = MODULES[algorithm].server_spec(config, tmp_path / "server-out")
    assert server.client_data == ((), ()) and server.num_clients == 2
    assert server.response_store == str(tmp_path / "server-out" / "responses.jsonl")
    assert server.settings == spec.settings  # both sides run the same point


def test_the_fdkt_client_runs_the_configs_one_eps(tmp_path: Path) -> None:
    write_rows(tmp_path / "client1.jsonl", examples(CLIENT_ROWS[1], "c1-"))
    config_path = _config(tmp_path, "fdkt")
    spec = deployed_fdkt.client_spec(
        load_config(config_path), NodeSetup.of(_node_config(tmp_path, config_path))
    )
    assert spec.settings.dp.target_epsilon == 8.0 and spec.settings.uses_llm
    assert spec.n_choices == 2  # read off the public evaluation rows


@pytest.mark.parametrize("algorithm", sorted(MODULES))
def test_a_missing_rows_file_is_refused_in_one_clear_error(
    tmp_path: Path, algorithm: str, caplog: pytest.LogCaptureFixture
) -> None:
    config_path = _config(tmp_path, algorithm)
    node_config = _node_config(tmp_path, config_path)  # client1.jsonl was never written
    with pytest.raises(DataError, match=r"client data file .*client1\.jsonl does not exist"):
        MODULES[algorithm].client_spec(load_config(config_path), NodeSetup.of(node_config))
    context = Context(
        run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={}
    )
    metadata = Metadata(1, "m1", 0, 7, "", "0", time.time(), 60.0, keys.QUERY)
    msg = Message(RecordDict(), metadata=metadata)
    with caplog.at_level(logging.ERROR):
        reply = clientapp._client_query(msg, context)
    assert reply.has_error() and not reply.has_content()
    name = {"fedcot": "FedCoT", "fdkt": "FDKT"}[algorithm]
    assert reply.error.reason.startswith(f"DataError in the {name} client of partition 1")
    assert "client1.jsonl does not exist" in caplog.text  # the details: the client's log only


def test_a_node_config_without_rows_names_the_missing_key(tmp_path: Path) -> None:
    node_config = _node_config(tmp_path, _config(tmp_path, "fdkt"))
    del node_config["data"]
    with pytest.raises(ConfigError, match=r"lacks 'data'.*fedkt client"):
        NodeSetup.of(node_config)


@pytest.mark.parametrize("algorithm", sorted(MODULES))
def test_a_deployment_runs_one_point_of_a_sweep(tmp_path: Path, algorithm: str) -> None:
    config = load_config(_config(tmp_path, algorithm, sweep="[1.0, 8.0]"))
    with pytest.raises(ConfigError, match="a deployment runs one point"):
        apps.preflight(config)


def test_a_deployed_spec_holds_at_most_one_clients_rows() -> None:
    rows = tuple(examples(CLIENT_ROWS[0], "c0-", with_question=True))
    spec = FedCoTSpec(
        llm="llm", slm="slm", decoder="llm", client_data=((), rows), eval_data=rows,
        public_texts=(), settings=FedCoTSettings(), lora=LoraSettings(), deployed=True,
    )  # fmt: skip
    assert spec.num_clients == 2
    with pytest.raises(ConfigError, match="at most one client's rows"):
        dataclasses.replace(spec, client_data=(rows, rows))
    with pytest.raises(ConfigError, match="no empty partition"):
        dataclasses.replace(spec, deployed=False)  # a simulation holds every partition
