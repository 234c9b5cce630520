"""FedCoLLM across processes on Flower's deployment engine, on loopback: `fedkt server`
(a SuperLink with TLS and SuperNode authentication, the ServerApp) and two `fedkt client`
SuperNodes, each a separate process group reading only its own rows file. Two rounds with
tiny random models must give the adapters of the in-process protocol, each client's worker
having loaded its SLM once; one round under SecAgg+ (its mod in Flower's per-message
ClientApp process, the training in the worker) must give plain FedAvg within SecAgg+'s
quantisation; a SuperNode that does not trust the SuperLink's certificate, or whose key is
not registered, is refused.

Every process is bounded (timeouts) and its whole group killed in `finally`.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch
from loopback import Federation, deployment_section, examples, make_federation, run_deployed
from loopback import start as _start
from loopback import tail as _tail
from transformers import PreTrainedTokenizerFast

from fedkt.algorithms.fedcollm import LocalClient, aggregate_adapters, local_exchange, run_round
from fedkt.certs import make_certs, make_node_keys
from fedkt.config import load_config
from fedkt.deploy import launch
from fedkt.deploy.apps import METHOD, RESULT, server_spec
from fedkt.deploy.rows import read_rows, write_rows
from fedkt.deploy.worker import KEY, SOCKET, STATS
from fedkt.federation.checkpoint import read_checkpoint
from fedkt.models import adapter_state, add_lora, load_model
from fedkt.report import read_json

PUBLIC_ROWS = [("Which rock is soil made of?", ("weathered rock", "sunlight"), 0)] * 2


@pytest.fixture(scope="module")
def federation(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerFast
) -> Federation:
    root = tmp_path_factory.mktemp("deploy")
    write_rows(root / "public.jsonl", examples(PUBLIC_ROWS, "p"))
    return make_federation(root, tiny_tokenizer, _config_text)


def _config_text(
    root: Path,
    port: int,
    *,
    rounds: int = 2,
    kd_steps: int = 2,
    slm_lr: float = 1e-2,
    secure_aggregation: bool = False,
) -> str:
    return f"""
output_dir = "{root / "server-out"}"
[model]
dtype = "float32"
device = "cpu"
[data]
tasks = ["arc_easy"]
[federation]
llm = "{root / "llm"}"
slm = "{root / "slm"}"
clients = 2
[fedcollm]
rounds = {rounds}
kd_steps = {kd_steps}
kd_batch_size = 2
llm_lr = 1e-2
slm_lr = {slm_lr:g}
secure_aggregation = {str(secure_aggregation).lower()}
[train]
epochs = 1
lr = 1e-2
batch_size = 2
warmup_ratio = 0.0
max_length = 64
[lora]
r = 4
alpha = 8
dropout = 0.0
{deployment_section(root, port)}"""


@pytest.fixture(scope="module")
def deployed(federation: Federation) -> Path:
    """`fedkt server` and two `fedkt client`s, as the README runs them; the outcome folder.
    Every process is gone before the tests look at the outcome."""
    run_deployed(federation, ["--public", str(federation.root / "public.jsonl")])
    return federation.root / "server-out" / "arc_easy" / METHOD


def test_two_deployed_rounds_equal_the_in_process_protocol(
    federation: Federation, deployed: Path
) -> None:
    adapters, state = read_checkpoint(deployed / RESULT)
    config = load_config(federation.config)
    spec = server_spec(config, "arc_easy", str(federation.root / "public.jsonl"))
    models = spec.load_server_models()
    slm = add_lora(load_model(spec.slm, dtype="float32", device="cpu"), spec.settings.lora)
    clients = [LocalClient(slm, read_rows(federation.root / f"client{k}.jsonl")) for k in range(2)]
    for t in range(2):
        reference = run_round(models, clients, spec.public_data, spec.settings, round_index=t)
    assert adapters["slm"].keys() == reference.adapter.keys()
    for key, tensor in reference.adapter.items():
        torch.testing.assert_close(adapters["slm"][key], tensor, msg=key)
    assert "llm" in adapters
    assert [r["round"] for r in state["rounds"]] == [0, 1]
    for record in state["rounds"]:
        assert record["metrics"]["clients"] == 2 and record["metrics"]["client_examples"] == 4
        assert set(record["bytes_up"]) == {"0", "1"}  # JSON keys: partition ids


def test_the_deployed_outcome_exports_as_a_simulated_run_does(
    deployed: Path, tmp_path: Path
) -> None:
    """The README's last step: ``fedkt export`` merges the deployed SLM adapter (the one in
    result.safetensors) into a plain transformers folder."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from fedkt.cli import main

    adapters, _ = read_checkpoint(deployed / RESULT)
    assert read_json(deployed / "run.json")["method"] == METHOD
    slm_base = read_json(deployed / "run.json")["base_models"]["slm"]
    saved = PeftModel.from_pretrained(load_model(slm_base, dtype="float32", device="cpu"),
                                      str(deployed / "slm"))  # fmt: skip
    for key, tensor in adapter_state(saved).items():
        torch.testing.assert_close(tensor, adapters["slm"][key], msg=key)
    out = tmp_path / "deployed-slm"
    assert main(["export", str(deployed), "--which", "slm", "--out", str(out)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(out).state_dict()
    base = load_model(slm_base, dtype="float32", device="cpu").state_dict()
    changed = [k for k, w in merged.items() if not torch.equal(w, base[k])]
    lora_layers = {k.split(".lora_")[0].removeprefix("base_model.model.") for k in adapters["slm"]}
    assert changed and {k.removesuffix(".weight") for k in changed} <= lora_layers
    assert (out / "README.md").is_file()


def test_each_client_worker_loaded_its_slm_once(federation: Federation, deployed: Path) -> None:
    """Flower starts a process per message; the worker beside each SuperNode answered both
    rounds with the SLM it loaded in the first, and removed its socket and key on exit."""
    for k in range(2):
        folder = federation.root / f"client{k}-out" / f"client-worker-{k}"
        stats = read_json(folder / STATS)
        assert stats["messages"] == 2 and stats["model_loads"] == 1, stats
        assert [s["model_loads"] for s in stats["served"]] == [1, 0]
        assert not (folder / SOCKET).exists() and not (folder / KEY).exists()


def test_each_client_reads_only_its_own_rows(federation: Federation, deployed: Path) -> None:
    """Each SuperNode's node config names its own rows file and nothing else's."""
    for k in range(2):
        log = (federation.root / f"client{k}.log").read_text(errors="replace")
        assert f"client{k}.jsonl" in log and f"client{1 - k}.jsonl" not in log


@pytest.fixture(scope="module")
def secure_federation(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerFast
) -> Federation:
    """One round under SecAgg+. The server still distils after aggregating (the deployed
    config always does), so its SLM learns at 1e-12 there: one AdamW step moves an entry by
    at most about that, far below SecAgg+'s quantum, and the outcome's SLM adapter is the
    round's aggregate."""
    root = tmp_path_factory.mktemp("deploy-secagg")
    write_rows(root / "public.jsonl", examples(PUBLIC_ROWS, "p"))
    text = partial(_config_text, rounds=1, kd_steps=1, slm_lr=1e-12, secure_aggregation=True)
    return make_federation(root, tiny_tokenizer, text)


@pytest.fixture(scope="module")
def secure_deployed(secure_federation: Federation) -> Path:
    run_deployed(secure_federation, ["--public", str(secure_federation.root / "public.jsonl")])
    return secure_federation.root / "server-out" / "arc_easy" / METHOD


def test_a_deployed_secure_round_through_the_workers_is_fedavg_within_quantisation(
    secure_federation: Federation, secure_deployed: Path
) -> None:
    """SecAgg+'s four stages through real SuperNodes: its mod keeps its keys in
    ``context.state`` across Flower's per-message ClientApp processes and hands the third
    stage's training to the worker. The server's SLM adapter is the plain FedAvg of the same
    round (clients trained in this process) within one quantisation step 2 c / levels, the
    simulated SecAgg+ test's tolerance (tests/federation/test_round_policy.py): stochastic
    rounding (of fp32 values on a grid of that step) moves each client's entry, hence their
    mean, by less than one step."""
    adapters, state = read_checkpoint(secure_deployed / RESULT)
    config = load_config(secure_federation.config)
    spec = server_spec(config, "arc_easy", str(secure_federation.root / "public.jsonl"))
    secure = spec.policy.secure_aggregation
    assert secure is not None
    quantum = 2 * secure.clipping_range / secure.quantization_range  # 2 c / levels: ~3.8e-6
    models = spec.load_server_models()
    theta = adapter_state(models.slm)
    slm = add_lora(load_model(spec.slm, dtype="float32", device="cpu"), spec.settings.lora)
    rows = [read_rows(secure_federation.root / f"client{k}.jsonl") for k in range(2)]
    exchange = local_exchange([LocalClient(slm, r) for r in rows], models.tokenizer, spec.settings)
    updates = exchange(theta, 0)
    fedavg = aggregate_adapters([updates[k] for k in sorted(updates)], spec.settings.aggregation)
    assert adapters["slm"].keys() == fedavg.keys()
    for key, tensor in fedavg.items():
        torch.testing.assert_close(adapters["slm"][key], tensor, atol=quantum, rtol=0, msg=key)
    assert [r["round"] for r in state["rounds"]] == [0]
    assert state["rounds"][0]["metrics"]["clients"] == 2
    assert state["rounds"][0]["missing"] == []
    for k in range(2):  # the third stage's training message, answered by the worker
        stats = read_json(secure_federation.root / f"client{k}-out" / f"client-worker-{k}" / STATS)
        assert stats["messages"] == 1 and stats["model_loads"] == 1, stats


def test_a_supernode_that_does_not_trust_the_certificate_or_is_unknown_is_refused(
    federation: Federation, tmp_path: Path
) -> None:
    """Against a SuperLink with TLS and node authentication (client0's key registered): a
    client trusting another CA fails the TLS handshake; a client with an unregistered key is
    not activated. Both SuperNodes exit with an error."""
    original = load_config(federation.config).deployment
    deployment = replace(original, superlink=f"127.0.0.1:{launch.free_port()}")
    text = federation.config.read_text().replace(original.superlink, deployment.superlink)
    right_ca, wrong_ca = tmp_path / "right-ca.toml", tmp_path / "wrong-ca.toml"
    right_ca.write_text(text)
    other_ca = make_certs(tmp_path / "other", clients=0).ca_cert
    wrong_ca.write_text(text.replace(str(federation.certs / "ca.crt"), str(other_ca)))
    stranger, _ = make_node_keys(tmp_path / "stranger")
    env = {**federation.env, "FLWR_HOME": str(tmp_path / "flwr-home")}
    launch.write_connection(tmp_path / "flwr-home", deployment, insecure=False)
    log = tmp_path / "superlink.log"
    with open(log, "wb") as handle:
        superlink = launch.start(launch.superlink_command(deployment, insecure=False), handle, env)
    try:
        launch.wait_for_port(deployment.superlink, superlink, timeout=60)
        launch.register_nodes(replace(deployment, node_keys=original.node_keys[:1]), env)
        attempts = {
            "wrong CA": federation.client_command(
                0, key=federation.certs / "client0.key", config=wrong_ca
            ),
            "unregistered key": federation.client_command(1, key=stranger, config=right_ca),
        }
        for name, command in attempts.items():
            # Output to a file, not a pipe: the SuperNode's SuperExec child would hold a pipe
            # open (and wait for its unreaped parent) after the SuperNode exits.
            node = _start(command, tmp_path / f"{name}.log", env)
            try:
                code = node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                launch.stop(node, grace=5.0)
            assert code not in (0, None), f"{name}: let in\n{_tail(tmp_path / f'{name}.log')}"
        assert "Activated node_id" not in log.read_text(errors="replace")
    finally:
        launch.stop(superlink, grace=5.0)


def test_insecure_needs_to_be_asked_for(federation: Federation) -> None:
    """TLS is the default; `--insecure` drops it (and node authentication) and says so."""
    deployment = load_config(federation.config).deployment
    secure = launch.superlink_command(deployment, insecure=False)
    assert "--ssl-certfile" in secure and "--enable-supernode-auth" in secure
    assert "--disable-runtime-dependency-installation" in secure
    insecure = launch.superlink_command(deployment, insecure=True)
    assert "--insecure" in insecure and "--enable-supernode-auth" not in insecure
    assert os.stat(federation.certs / "server.key").st_mode & 0o777 == 0o600
    assert os.stat(federation.certs / "client0.key").st_mode & 0o777 == 0o600
