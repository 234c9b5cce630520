"""The FedCoLLM apps: the client handler called directly, then one real Flower simulation
(Ray, two clients, two rounds) shared by the end-to-end, equivalence and privacy tests."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from conftest import Recorder, find_leaks, save_tiny_pair
from fedkt.algorithms.fedcollm import FedCoLLMSettings, LocalClient, run_round
from fedkt.data import Example
from fedkt.errors import FedktError
from fedkt.federation import fedcollm as client_app
from fedkt.federation import keys
from fedkt.federation.codec import adapter_to_record, payload_bytes, record_to_adapter
from fedkt.federation.fedcollm import (
    FederationResult,
    FederationSpec,
    broadcast_content,
    read_replies,
    simulate_fedcollm,
)
from fedkt.models import LoraSettings, adapter_state, add_lora, load_model, vocabulary_fingerprint
from fedkt.training import TrainSettings

SETTINGS = FedCoLLMSettings(
    rounds=2,
    kd_steps=2,
    kd_batch_size=2,
    llm_lr=1e-2,
    slm_lr=1e-2,
    client=TrainSettings(epochs=1, lr=1e-2, batch_size=2, warmup_ratio=0.0, max_length=64),
    lora=LoraSettings(r=4, alpha=8, dropout=0.0),
)
PRIVATE = [  # (question, choices, gold): the text that must never leave a client
    ("Which gas do plants absorb from the air?", ("carbon dioxide", "helium balloons"), 0),
    ("What do green plants need to grow?", ("volcanic rock", "bright sunlight"), 1),
    ("What is the boiling point of water at sea level?", ("100 degrees Celsius", "frozen"), 0),
    ("Which gas do we breathe in to live?", ("nitrogen only", "fresh oxygen"), 1),
]
PUBLIC = [("Which rock is soil made of?", ("weathered rock", "sunlight"), 0)] * 2


def _examples(rows: list[tuple[str, tuple[str, ...], int]], tag: str) -> tuple[Example, ...]:
    return tuple(
        Example(id=f"{tag}{i}", context=f"Question: {q}\nAnswer:", choices=c, gold=g)
        for i, (q, c, g) in enumerate(rows)
    )


CLIENT_DATA = (_examples(PRIVATE[:2], "a"), _examples(PRIVATE[2:], "b"))


@pytest.fixture(scope="module")
def spec(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerFast
) -> FederationSpec:
    """Tiny LLM (3 layers) and SLM (2 layers) saved to disk: Ray's client processes load them
    by path, as they would a real checkpoint."""
    root = tmp_path_factory.mktemp("models")
    save_tiny_pair(root, tiny_tokenizer)
    return FederationSpec(
        llm=str(root / "llm"),
        slm=str(root / "slm"),
        client_data=CLIENT_DATA,
        public_data=_examples(PUBLIC, "p"),
        settings=SETTINGS,
        dtype="float32",
        device="cpu",
        # One Ray actor takes all cores: one process pays the torch/peft import (~6 s on 2
        # busy cores) and serves both partitions through its shared SLM.
        client_cpus=os.cpu_count() or 1,
    )


# -- the client handler, called in this process ----------------------------------------------


def _train_message(
    spec: FederationSpec, partition: int, theta: dict[str, torch.Tensor], vocabulary: str = ""
) -> tuple[Message, Context]:
    # Built from metadata: outside a running ServerApp, Flower has no run id to stamp.
    metadata = Metadata(1, "m1", 0, 7, "", "0", time.time(), 60.0, keys.TRAIN)
    msg = Message(broadcast_content(theta, 0, vocabulary), metadata=metadata)
    node_config = {"partition-id": partition, "num-partitions": spec.num_clients}
    return msg, Context(
        run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={}
    )


def _initial_theta(spec: FederationSpec) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return adapter_state(
        add_lora(load_model(spec.slm, dtype="float32", device="cpu"), SETTINGS.lora)
    )


def test_a_client_refuses_a_server_of_another_vocabulary(
    spec: FederationSpec, tiny_tokenizer: PreTrainedTokenizerBase, caplog: pytest.LogCaptureFixture
) -> None:
    """Adapters of two vocabularies can share every shape and would average silently: the
    server sends its vocabulary's fingerprint and a client with another one refuses."""
    theta = _initial_theta(spec)
    own = vocabulary_fingerprint(tiny_tokenizer)
    same = client_app.train(spec.client_setup(), *_train_message(spec, 0, theta, own))
    assert not same.has_error()
    with caplog.at_level(logging.ERROR):
        other = client_app.train(spec.client_setup(), *_train_message(spec, 0, theta, "f" * 64))
    assert other.has_error() and "ModelError" in other.error.reason
    assert "another vocabulary than the server's" in caplog.text  # the details stay local


def test_client_replies_only_its_adapter_and_count_and_loads_the_slm_once(
    spec: FederationSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []
    real_load = client_app.load_model_and_tokenizer
    monkeypatch.setattr(client_app, "_SLMS", {})

    def counting_load(name: str, **kwargs: Any) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        loads.append(name)
        return real_load(name, **kwargs)

    monkeypatch.setattr(client_app, "load_model_and_tokenizer", counting_load)
    theta = _initial_theta(spec)
    for partition in (0, 1, 0):
        reply = client_app.train(spec.client_setup(), *_train_message(spec, partition, theta))
        assert not reply.has_error()
        assert set(reply.content) == {keys.ADAPTER, keys.COUNTS}
        counts = dict(reply.content.metric_records[keys.COUNTS])
        assert counts == {keys.N_EXAMPLES: 2, keys.PARTITION: partition, keys.ROUND: 0}
        update = record_to_adapter(reply.content.array_records[keys.ADAPTER])
        assert update.keys() == theta.keys()
        assert any(not torch.equal(update[k], theta[k]) for k in theta)
    assert loads == [spec.slm]  # one load served three messages and two partitions


def test_client_failure_replies_an_error_without_details(
    spec: FederationSpec, caplog: pytest.LogCaptureFixture
) -> None:
    oversized = replace(spec, max_message_bytes=100)
    with caplog.at_level(logging.ERROR, logger=client_app.__name__):
        reply = client_app.train(
            oversized.client_setup(), *_train_message(spec, 1, _initial_theta(spec))
        )
    assert reply.has_error()
    assert reply.error.reason.startswith("FedktError in the FedCoLLM client of partition 1;")
    assert "bytes" not in reply.error.reason  # the detail stays in the client's log
    assert "over the limit of 100 bytes" in caplog.text


def test_a_client_without_dp_aux_settings_answers_a_query_with_an_error_only(
    spec: FederationSpec,
) -> None:
    """With public data the clients are never queried; a query anyway gets no samples."""
    _, context = _train_message(spec, 0, {})
    metadata = Metadata(1, "m3", 0, 7, "", "0", time.time(), 60.0, keys.QUERY)
    query = Message(RecordDict(), metadata=metadata)
    reply = client_app.query(spec.client_setup(), query, context)
    assert reply.has_error() and not reply.has_content()
    assert reply.error.reason.startswith("FedktError in the FedCoLLM client of partition 0;")


def _reply(node: int, content: RecordDict | None = None, error: Error | None = None) -> Message:
    metadata = Metadata(1, f"r{node}", node, 0, "m1", "0", time.time(), 60.0, keys.TRAIN)
    return Message(content=content, error=error, metadata=metadata)


def _good(partition: int) -> RecordDict:
    counts = {keys.N_EXAMPLES: 3, keys.PARTITION: partition}
    theta = {"w": torch.ones(64)}
    return RecordDict({keys.ADAPTER: adapter_to_record(theta), keys.COUNTS: MetricRecord(counts)})


def test_server_reads_replies_by_partition_and_refuses_failed_or_oversized_ones() -> None:
    updates, sizes = read_replies([_reply(9, _good(0)), _reply(4, _good(1))], limit=10_000)
    assert list(updates) == [1, 0] and updates[0].n_examples == 3  # node 4 holds partition 1
    assert sizes == {0: payload_bytes(_good(0)), 1: payload_bytes(_good(1))}
    failed = _reply(5, error=Error(code=0, reason="ModelError in the client of partition 1"))
    with pytest.raises(FedktError, match=r"1 of 2 FedCoLLM clients failed.*node 5: ModelError"):
        read_replies([_reply(4, _good(0)), failed], limit=10_000)
    with pytest.raises(FedktError, match=r"reply of node 4: .* over the limit of 100 bytes"):
        read_replies([_reply(4, _good(0))], limit=100)
    with pytest.raises(FedktError, match=r"two FedCoLLM replies claim partition 0"):
        read_replies([_reply(4, _good(0)), _reply(5, _good(0))], limit=10_000)


# -- one simulated federation ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulated(
    spec: FederationSpec, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FederationResult, list[Message]]]:
    sent = tmp_path_factory.mktemp("sent")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FLWR_HOME", str(tmp_path_factory.mktemp("flwr-home")))
        env.setenv("FLWR_TELEMETRY_ENABLED", "0")
        env.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
        recorder = Recorder(sent)
        result = simulate_fedcollm(spec, client_mods=[recorder])
    yield result, recorder.messages()


def test_every_round_matches_the_in_process_protocol(
    spec: FederationSpec, simulated: tuple[FederationResult, list[Message]]
) -> None:
    """Two Flower rounds (clients in a Ray process, replies in any order) give the adapters
    and losses of two in-process `run_round` calls: one round loop, one aggregation order."""
    result, _ = simulated
    models = spec.load_server_models()  # the same seeded start as the simulation's server
    theta0 = adapter_state(models.slm)
    assert any(not torch.equal(result.slm_adapter[k], theta0[k]) for k in theta0)
    client = add_lora(load_model(spec.slm, dtype="float32", device="cpu"), SETTINGS.lora)
    clients = [LocalClient(client, part) for part in CLIENT_DATA]
    references = [
        run_round(models, clients, spec.public_data, SETTINGS, round_index=t)
        for t in range(SETTINGS.rounds)
    ]
    for key, tensor in references[-1].adapter.items():
        torch.testing.assert_close(result.slm_adapter[key], tensor, msg=key)
    for key, tensor in adapter_state(models.llm).items():
        torch.testing.assert_close(result.llm_adapter[key], tensor, msg=key)
    assert [r.round for r in result.rounds] == [0, 1]
    for record, reference in zip(result.rounds, references, strict=True):
        assert record.metrics["clients"] == 2 and record.metrics["client_examples"] == 4
        assert record.metrics["distil_loss"] == pytest.approx(
            reference.metrics["distil_loss"], rel=1e-4
        )


def test_bytes_are_counted_per_client_and_direction(
    simulated: tuple[FederationResult, list[Message]], tiny_tokenizer: PreTrainedTokenizerBase
) -> None:
    result, sent = simulated
    vocabulary = vocabulary_fingerprint(tiny_tokenizer)  # sent down with theta
    theta_down = payload_bytes(broadcast_content(result.slm_adapter, 0, vocabulary))
    for record in result.rounds:
        assert set(record.bytes_down) == set(record.bytes_up) == {0, 1}  # partition ids
        assert set(record.bytes_down.values()) == {theta_down}  # same shapes as what was sent
        assert record.total_bytes_up == sum(record.bytes_up.values())
        assert record.total_bytes_down == 2 * theta_down
    up = sorted(size for record in result.rounds for size in record.bytes_up.values())
    assert up == sorted(payload_bytes(m.content) for m in sent)


def _needles() -> list[str]:
    needles = []
    for examples in CLIENT_DATA:
        for ex in examples:
            question = ex.context.removeprefix("Question: ").removesuffix("\nAnswer:")
            answer = ex.training_pair()[1]
            needles += [ex.context, question, *ex.choices, " ".join(ex.choices), answer]
    return needles


def _leaks(msg: Message) -> list[str]:
    return find_leaks(msg, _needles())


def test_the_leak_search_finds_text_hidden_in_arrays_or_configs() -> None:
    question, choice = PRIVATE[0][0], PRIVATE[1][1][0]
    planted = RecordDict(
        {
            "adapter": ArrayRecord([np.frombuffer(question.encode(), dtype=np.uint8)]),
            "config": ConfigRecord({"note": f"the answer is {choice}"}),
        }
    )
    msg = Message(planted, metadata=Metadata(1, "m2", 7, 0, "m1", "0", time.time(), 60.0, "train"))
    assert {question, choice} <= set(_leaks(msg))


def test_clients_send_no_question_choice_or_answer_text(
    simulated: tuple[FederationResult, list[Message]],
) -> None:
    _, sent = simulated
    assert len(sent) == 4  # one reply per client and round, and nothing else left a client
    for msg in sent:  # with public data: no query, so no DP synthetic samples either
        assert not msg.has_error()
        assert set(msg.content.array_records) == {keys.ADAPTER}
        assert set(msg.content.metric_records) == {keys.COUNTS}
        assert set(msg.content.metric_records[keys.COUNTS]) == {
            keys.N_EXAMPLES,
            keys.PARTITION,
            keys.ROUND,
        }
        assert not msg.content.config_records
        assert _leaks(msg) == []
