"""FedCoLLM rounds that lose clients, refuse replays and aggregate securely (SecAgg+).

Most tests drive the real ClientApp (its mods included) through `LocalGrid`, an in-process
grid with three nodes: no Ray, a few seconds each. One Flower simulation (Ray, three clients,
two rounds, SecAgg+, one client failing mid-round) checks the same over the real transport.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from uuid import uuid4

import numpy as np
import pytest
import torch
from flwr.app import Context, Error, Message, Metadata, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import bytes_to_ndarray
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage
from flwr.supercore.task_identity import TaskIdentity
from transformers import PreTrainedTokenizerFast

from conftest import Recorder, build_tiny_llama
from fedkt.algorithms.fedcollm import (
    FedCoLLMSettings,
    aggregate_adapters,
    client_training,
    client_update,
)
from fedkt.data import Example
from fedkt.errors import FedktError
from fedkt.federation import fedcollm, keys
from fedkt.federation.checkpoint import read_checkpoint
from fedkt.federation.fedcollm import (
    FederationResult,
    FederationSpec,
    FlowerExchange,
    RoundPolicy,
    make_client_app,
    run_server,
    simulate_fedcollm,
)
from fedkt.federation.messaging import ShortRound
from fedkt.federation.secagg import SECAGG, SecAggSettings
from fedkt.models import adapter_state, add_lora, load_model_and_tokenizer
from fedkt.training import TrainSettings

SETTINGS = FedCoLLMSettings(
    rounds=2,
    distil=False,  # FedAvg: aggregation is what these tests are about
    client=TrainSettings(epochs=1, lr=1e-2, batch_size=2, warmup_ratio=0.0, max_length=64),
)
SECURE = RoundPolicy(min_clients=2, secure_aggregation=SecAggSettings())
QUANTUM = 2 * 8.0 / 2**22  # one quantisation step of the default SecAggSettings


def _rows(tag: str) -> tuple[Example, ...]:
    rows = [("Which gas do plants absorb?", ("carbon dioxide", "helium"), 0)] * 2
    return tuple(
        Example(id=f"{tag}{i}", context=f"Question: {q} {tag}\nAnswer:", choices=c, gold=g)
        for i, (q, c, g) in enumerate(rows)
    )


@pytest.fixture(scope="module")
def spec(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerFast
) -> FederationSpec:
    root = tmp_path_factory.mktemp("models")
    build_tiny_llama(len(tiny_tokenizer), n_layers=2).save_pretrained(root / "slm")
    tiny_tokenizer.save_pretrained(root / "slm")
    return FederationSpec(
        llm="",
        slm=str(root / "slm"),
        client_data=(_rows("a"), _rows("b"), _rows("c")),
        public_data=(),
        settings=SETTINGS,
        dtype="float32",
        device="cpu",
        client_cpus=os.cpu_count() or 1,
        policy=SECURE,
    )


# ---- an in-process grid and misbehaving clients ----------------------------------------------


@pytest.fixture
def server_identity() -> Iterator[None]:
    """Flower stamps a server's messages with the run it serves: outside a running ServerApp
    `LocalGrid`'s caller plays run 1 (restored afterwards, for the simulation)."""
    kept = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = kept


class LocalGrid:
    """Three nodes answering through one ClientApp in this process, each with its own
    Context (SecAgg+ keeps its state there); messages are copied as a wire would."""

    def __init__(self, app: ClientApp, clients: int) -> None:
        self.app, self.nodes = app, [101 + k for k in range(clients)]
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config={"partition-id": k, "num-partitions": clients},
                state=RecordDict(),
                run_config={},
            )
            for k, node in enumerate(self.nodes)
        }
        self.received: list[RecordDict] = []
        self.replies: dict[str, Message] = {}  # by the id of the message answered

    def get_node_ids(self) -> list[int]:
        return self.nodes

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def push_messages(self, messages: list[Message]) -> list[str]:
        """Each message is answered at once; `pull_messages` hands the replies out."""
        pushed = []
        for message in messages:
            node = message.metadata.dst_node_id
            metadata = Metadata(
                1,
                uuid4().hex,
                0,
                node,
                "",
                message.metadata.group_id,
                time.time(),
                60.0,
                message.metadata.message_type,
            )
            incoming = Message(copy.deepcopy(message.content), metadata=metadata)
            pushed.append(metadata.message_id)
            try:
                reply = self.app(incoming, self.contexts[node])
            except TimeoutError:
                continue  # never answers
            except Exception as err:  # as Flower's runtime turns a raising app into an error
                reply = Message(
                    Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, repr(err)), reply_to=incoming
                )
            self.received.append(
                copy.deepcopy(reply.content) if reply.has_content() else RecordDict()
            )
            self.replies[metadata.message_id] = reply
        return pushed


def _stage(msg: Message) -> str:
    record = msg.content.config_records.get(SECAGG)
    return str(record.get(Key.STAGE, Stage.COLLECT_MASKED_VECTORS)) if record else "plain"


@dataclass
class Misbehave:
    """A client mod: partition ``partition`` fails (``how`` = "raise" or "silent") or
    replays its previous round's reply ("replay") in round ``round`` at stage ``stage``
    ("plain" without SecAgg+); replies are kept on disk (Ray runs clients elsewhere)."""

    directory: Path
    partition: int
    round: int
    how: str
    stage: str = Stage.COLLECT_MASKED_VECTORS

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        t = int(msg.content.config_records[keys.CONFIG][keys.ROUND])  # type: ignore[arg-type]
        mine = int(context.node_config["partition-id"]) == self.partition
        stage = _stage(msg)
        if mine and t == self.round and stage == self.stage:
            if self.how == "raise":
                raise RuntimeError("this client died mid-round")
            if self.how == "silent":
                raise TimeoutError
        reply = call_next(msg, context)
        saved = self.directory / f"{self.partition}-{stage}-{t}.pkl"
        if mine and self.how == "replay":
            if t == self.round and stage == self.stage:
                import pickle

                old = pickle.loads(
                    (self.directory / f"{self.partition}-{stage}-{t - 1}.pkl").read_bytes()
                )
                return Message(old, reply_to=msg)
            import pickle

            saved.write_bytes(pickle.dumps(reply.content))
        return reply


def _truth(
    spec: FederationSpec, theta: dict[str, torch.Tensor], t: int, partitions: list[int]
) -> dict[str, torch.Tensor]:
    """The plain FedAvg of ``partitions``'s updates from theta in round t (uniform)."""
    model, tokenizer = load_model_and_tokenizer(spec.slm, dtype="float32", device="cpu")
    slm = add_lora(model, spec.settings.lora)
    updates = [
        client_update(
            slm, tokenizer, theta, spec.client_data[k], client_training(spec.settings.client, k, t)
        ).adapter
        for k in partitions
    ]
    return {key: sum(u[key] for u in updates) / len(updates) for key in theta}


def _theta(spec: FederationSpec) -> dict[str, torch.Tensor]:
    return adapter_state(spec.load_server_models().slm)


# ---- in-process rounds ------------------------------------------------------------------------


@pytest.mark.usefixtures("server_identity")
def test_secure_round_is_plain_fedavg_within_quantisation_and_hides_each_update(
    spec: FederationSpec,
) -> None:
    grid = LocalGrid(make_client_app(spec.client_setup()), 3)
    theta = _theta(spec)
    updates = FlowerExchange(grid, grid.nodes, spec)(theta, 0)  # type: ignore[arg-type]
    mean = updates[0].adapter
    assert sorted(updates) == [0, 1, 2] and all(u.adapter is mean for u in updates.values())
    truth = _truth(spec, theta, 0, [0, 1, 2])
    for key in theta:
        torch.testing.assert_close(mean[key], truth[key], atol=QUANTUM, rtol=0)
    masked = [r for r in grid.received if Key.MASKED_PARAMETERS in r.config_records.get(SECAGG, {})]
    assert len(masked) == 3
    for content in grid.received:  # no fedkt adapter and no Flower arrays ever reached the server
        assert keys.ADAPTER not in content.array_records
        assert all(len(record) == 0 for record in content.array_records.values())
    flat_truth = np.concatenate([t.numpy().ravel() for t in truth.values()])
    for content in masked:
        vector = [
            bytes_to_ndarray(b) for b in content.config_records[SECAGG][Key.MASKED_PARAMETERS]
        ]
        values = np.concatenate([v.ravel() for v in vector[1:]]).astype(np.float64)
        as_floats = values * QUANTUM - 8.0  # what an unmasked upload would decode to
        assert np.abs(as_floats - flat_truth).mean() > 1.0  # uniform masks, not the update
    _log_overhead(spec, grid, theta)


def _log_overhead(spec: FederationSpec, grid: LocalGrid, theta: dict[str, torch.Tensor]) -> None:
    """One warm round each way (clients in this process, so the time is all compute)."""
    plain = replace(spec, policy=RoundPolicy())
    start = time.perf_counter()
    plain_exchange = FlowerExchange(grid, grid.nodes, plain)  # type: ignore[arg-type]
    plain_exchange(theta, 0)
    plain_seconds = time.perf_counter() - start
    start = time.perf_counter()
    secure = FlowerExchange(grid, grid.nodes, spec)  # type: ignore[arg-type]
    secure(theta, 0)
    secure_seconds = time.perf_counter() - start
    logging.getLogger(__name__).warning(
        "one round, 3 clients, %d adapter values: plain %.2f s, %d B up, %d B down; "
        "SecAgg+ %.2f s, %d B up, %d B down",
        sum(t.numel() for t in theta.values()),
        plain_seconds,
        sum(plain_exchange.bytes_up.values()),
        sum(plain_exchange.bytes_down.values()),
        secure_seconds,
        sum(secure.bytes_up.values()),
        sum(secure.bytes_down.values()),
    )


@pytest.mark.usefixtures("server_identity")
@pytest.mark.parametrize("how", ["raise", "silent"])
def test_secure_round_unmasks_without_a_client_that_dies_after_sharing_keys(
    spec: FederationSpec, tmp_path: Path, how: str
) -> None:
    grid = LocalGrid(make_client_app(spec.client_setup(), [Misbehave(tmp_path, 2, 0, how)]), 3)
    theta = _theta(spec)
    waits = replace(spec, policy=replace(SECURE, reply_timeout=1.0))  # a silent node: 1 s
    exchange = FlowerExchange(grid, grid.nodes, waits)  # type: ignore[arg-type]
    updates = exchange(theta, 0)
    assert sorted(updates) == [0, 1]
    truth = _truth(spec, theta, 0, [0, 1])
    for key in theta:
        torch.testing.assert_close(updates[0].adapter[key], truth[key], atol=QUANTUM, rtol=0)
    assert len(exchange.missing_labels()) == 1
    assert exchange.missing_labels()[0].startswith("node 103: ")


@pytest.mark.usefixtures("server_identity")
def test_a_replayed_reply_is_refused_with_one_log_line_and_the_round_goes_on(
    spec: FederationSpec, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Partition 0 answers round 1 with its round-0 reply: plain and under SecAgg+."""
    theta = _theta(spec)
    for policy, stage in (
        (RoundPolicy(min_clients=2), "plain"),
        (SECURE, Stage.COLLECT_MASKED_VECTORS),
    ):
        mod = Misbehave(tmp_path, 0, 1, "replay", stage)
        grid = LocalGrid(make_client_app(spec.client_setup(), [mod]), 3)
        run = replace(spec, policy=policy)
        partitions: dict[int, int] = {}
        FlowerExchange(grid, grid.nodes, run, partitions)(theta, 0)  # type: ignore[arg-type]
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            exchange = FlowerExchange(grid, grid.nodes, run, partitions)  # type: ignore[arg-type]
            updates = exchange(theta, 1)
        refused = [r for r in caplog.records if "refused node 101" in r.getMessage()]
        assert len(refused) == 1 and "answers round 0, not round 1" in refused[0].getMessage()
        assert sorted(updates) == [1, 2]
        assert exchange.missing_labels() == (
            "partition 0 (node 101): it answers round 0, not round 1 (replayed or late)",
        )
        truth = _truth(spec, theta, 1, [1, 2])
        mean = aggregate_adapters([updates[1], updates[2]])  # SecAgg+: both are the mean
        tolerance = QUANTUM if policy.secure_aggregation else 1e-6
        for key in theta:
            torch.testing.assert_close(mean[key], truth[key], atol=tolerance, rtol=0)


@pytest.mark.usefixtures("server_identity")
def test_too_few_clients_retry_the_round_once_then_stop_with_a_resumable_checkpoint(
    spec: FederationSpec, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "checkpoint.safetensors"
    run = replace(spec, policy=RoundPolicy(), checkpoint=str(checkpoint), resume=True)

    def dies(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        t = int(msg.content.config_records[keys.CONFIG][keys.ROUND])  # type: ignore[arg-type]
        if t == 1 and context.node_config["partition-id"] == 1:
            raise RuntimeError("gone")
        return call_next(msg, context)

    grid = LocalGrid(make_client_app(run.client_setup(), [dies]), 3)
    with pytest.raises(
        FedktError,
        match=r"round 2 failed twice: 2 of 3 clients answered .*"
        r"partition 1 \(node 102\): error reply.*checkpoint .* holds the 1 rounds",
    ):
        run_server(grid, run, run.load_server_models())  # type: ignore[arg-type]
    _, state = read_checkpoint(checkpoint)
    assert state["rounds_done"] == 1
    healthy = LocalGrid(make_client_app(run.client_setup()), 3)
    result = run_server(healthy, run, run.load_server_models())  # type: ignore[arg-type]
    assert [r.round for r in result.rounds] == [0, 1]  # resumed after round 1
    assert all(r.missing == () for r in result.rounds)


@pytest.mark.usefixtures("server_identity")
def test_min_clients_lets_a_round_aggregate_the_others_and_records_who_was_missing(
    spec: FederationSpec, tmp_path: Path
) -> None:
    run = replace(spec, policy=RoundPolicy(min_clients=2))
    grid = LocalGrid(
        make_client_app(run.client_setup(), [Misbehave(tmp_path, 2, 1, "raise", "plain")]), 3
    )
    result = run_server(grid, run, run.load_server_models())  # type: ignore[arg-type]
    assert [r.metrics["clients"] for r in result.rounds] == [3.0, 2.0]
    assert result.rounds[0].missing == ()
    (label,) = result.rounds[1].missing
    assert (
        label.startswith("partition 2 (node 103): error reply")
        and result.rounds[1].metrics["clients_missing"] == 1
    )
    with pytest.raises(ShortRound):
        FlowerExchange(grid, grid.nodes, replace(run, policy=RoundPolicy(min_clients=3)))(  # type: ignore[arg-type]
            _theta(spec), 1
        )


# ---- one Flower simulation: SecAgg+ with a client dying mid-round -------------------------------


@pytest.fixture(scope="module")
def simulated(
    spec: FederationSpec, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FederationResult, list[dict[str, torch.Tensor]], list[Message]]]:
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    sent, scratch = tmp_path_factory.mktemp("sent"), tmp_path_factory.mktemp("scratch")
    thetas: list[dict[str, torch.Tensor]] = [_theta(spec)]

    def keep(t: int, models: fedcollm.ServerModels) -> None:
        thetas.append(adapter_state(models.slm))

    with pytest.MonkeyPatch.context() as env:
        env.setenv("FLWR_HOME", str(tmp_path_factory.mktemp("flwr-home")))
        env.setenv("FLWR_TELEMETRY_ENABLED", "0")
        env.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
        recorder = Recorder(sent)
        mods = [recorder, Misbehave(scratch, 2, 1, "raise")]
        result = simulate_fedcollm(spec, client_mods=mods, after_round=keep)
    yield result, thetas, recorder.messages()


def test_simulated_secure_rounds_equal_fedavg_and_survive_a_dropout(
    spec: FederationSpec,
    simulated: tuple[FederationResult, list[dict[str, torch.Tensor]], list[Message]],
) -> None:
    result, thetas, sent = simulated
    assert [r.metrics["clients"] for r in result.rounds] == [3.0, 2.0]
    assert result.rounds[1].missing[0].startswith("partition 2 (node ")
    for t, partitions in ((0, [0, 1, 2]), (1, [0, 1])):
        truth = _truth(spec, thetas[t], t, partitions)
        for key, tensor in truth.items():
            torch.testing.assert_close(thetas[t + 1][key], tensor, atol=QUANTUM, rtol=0)
    uploads = [m for m in sent if not m.has_error()]
    assert uploads and all(keys.ADAPTER not in m.content.array_records for m in uploads)
    assert all(len(r) == 0 for m in uploads for r in m.content.array_records.values())
