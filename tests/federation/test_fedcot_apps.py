"""FedCoT over Flower: one real simulation (Ray, two clients) with tiny models, every message a
client sends captured and searched for its private text (as strings and as token ids) and for
any number beyond the bare acknowledgement; the query handler called twice for its noise."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from transformers import PreTrainedTokenizerFast

from conftest import Recorder, find_leaks, save_tiny_pair
from fedkt.algorithms.fedcot import FedCoTSettings
from fedkt.data import Example
from fedkt.data.cot import render_question
from fedkt.federation import keys
from fedkt.federation.fedcot import (
    FedCoTResult,
    FedCoTSpec,
    _answer_query,
    simulate_fedcot,
)
from fedkt.federation.reports import read_report
from fedkt.generation import GenerationSettings
from fedkt.models import LoraSettings
from fedkt.training import TrainSettings

PRIVATE = [  # (question, choices, gold): the text that must never leave a client
    ("Which gas do plants absorb from the air?", ("carbon dioxide", "helium balloons"), 0),
    ("What do green plants need to grow?", ("volcanic rock", "bright sunlight"), 1),
    ("What is the boiling point of water at sea level?", ("100 degrees Celsius", "frozen"), 0),
    ("Which gas do we breathe in to live?", ("nitrogen only", "fresh oxygen"), 1),
]
EVAL = [("Which rock is soil made of?", ("weathered rock", "sunlight"), 0)]
SETTINGS = FedCoTSettings(
    strategy="em",
    eps=1.0,
    rationale=GenerationSettings(max_new_tokens=12, batch_size=4),
    recovery=GenerationSettings(max_new_tokens=12, batch_size=4),
    min_rationale_words=1,
    train=TrainSettings(epochs=1, lr=1e-2, batch_size=2, warmup_ratio=0.0, max_length=96),
)


def _examples(rows: list[tuple[str, tuple[str, ...], int]], tag: str) -> tuple[Example, ...]:
    return tuple(
        Example(
            id=f"private-row-{tag}{i}",
            context=f"Question: {q}\nAnswer:",
            choices=c,
            gold=g,
            question=q,
        )
        for i, (q, c, g) in enumerate(rows)
    )


CLIENT_DATA = (_examples(PRIVATE[:2], "a"), _examples(PRIVATE[2:], "b"))


@pytest.fixture(scope="module")
def models_root(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerFast
) -> Path:
    root = tmp_path_factory.mktemp("models")
    save_tiny_pair(root, tiny_tokenizer)
    return root


def _spec(root: Path, tmp: pytest.TempPathFactory, **changes: Any) -> FedCoTSpec:
    spec = FedCoTSpec(
        llm=str(root / "llm"),
        slm=str(root / "slm"),
        decoder=str(root / "llm"),
        client_data=CLIENT_DATA,
        eval_data=_examples(EVAL, "e"),
        public_texts=("Rocks break down into soil over many years.",),
        settings=SETTINGS,
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
        dtype="float32",
        device="cpu",
        client_cpus=os.cpu_count() or 1,
        response_store=str(tmp.mktemp("store") / "answers.jsonl"),
        reports_dir=str(tmp.mktemp("reports")),
        pattern_reference=_examples(PRIVATE + EVAL, "r"),
    )
    return dataclasses.replace(spec, **changes)


def _simulate_recorded(
    spec: FedCoTSpec, tmp_path_factory: pytest.TempPathFactory, name: str
) -> tuple[FedCoTResult, list[Message]]:
    """One simulated FedCoT run (Flower isolated in a fresh home) and every message the
    clients sent."""
    recorder = Recorder(tmp_path_factory.mktemp(name))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FLWR_HOME", str(tmp_path_factory.mktemp("flwr-home")))
        env.setenv("FLWR_TELEMETRY_ENABLED", "0")
        env.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
        result = simulate_fedcot(spec, client_mods=[recorder])
    return result, recorder.messages()


@pytest.fixture(scope="module")
def simulated(
    tmp_path_factory: pytest.TempPathFactory, models_root: Path
) -> Iterator[tuple[FedCoTSpec, FedCoTResult, list[Message]]]:
    spec = _spec(models_root, tmp_path_factory)
    yield (spec, *_simulate_recorded(spec, tmp_path_factory, "sent"))


def test_one_round_trip_runs_end_to_end(
    simulated: tuple[FedCoTSpec, FedCoTResult, list[Message]],
) -> None:
    spec, result, _ = simulated
    assert result.requests == result.acknowledged == (2, 2)  # all the server learns
    for k in range(spec.num_clients):
        report = read_report(Path(str(spec.reports_dir)) / f"client{k}.json")
        outcome, privacy = report["train"], report["privacy"]  # on the client's own disk
        utility = report["utility"]  # its rationales graded with its own labels, also kept
        assert utility["prompts"] == 2 and utility["rationales_kept"] == outcome["rationales"]
        for name in ("server_rationale", "recovered_rationale"):
            assert 0.0 <= utility[f"{name}_acc"] <= 1.0
            assert utility[f"{name}_correct"] == round(2 * utility[f"{name}_acc"])
        dropped = ("server_missing", "server_degenerate", "recovery_failed", "inconsistent_dropped")
        assert utility["rationales_kept"] + sum(utility[key] for key in dropped) == 2
        assert "sum" in privacy["composition"]  # a sweep or a repeat pays again
        assert outcome["n"] == 1 and 0.0 <= outcome["acc"] <= 1.0
        assert outcome["train_steps"] >= 1 and math.isfinite(outcome["last_loss"])
        assert outcome["rationales"] + outcome["missing"] + outcome["rejected"] == 2
        assert privacy["prompts"] == 2 and privacy["tokens_perturbed"] > 0
        assert privacy["eps_per_token_max"] == pytest.approx(1.0)
        assert 0.0 <= privacy["protected_recovered"] <= 1.0
        assert 0.0 <= privacy["prior_only_recovered"] <= 1.0
        assert privacy["noise"] == "secrets"  # no noise seed: fresh bits from the OS
        assert privacy["released_in_clear"] and privacy["pattern_reference_rows"] == 5
        assert 0.0 <= privacy["pattern_unique_rate"] <= 1.0
    assert set(result.bytes_up) == set(result.bytes_down) and len(result.bytes_up) == 2
    assert all(size > 0 for size in [*result.bytes_up.values(), *result.bytes_down.values()])
    answered = Path(spec.response_store or "").read_text().splitlines()
    assert len(answered) == 4  # one rationale per distinct prompt, kept for a resume


def _needles() -> list[str]:
    needles = []
    for examples in CLIENT_DATA:
        for ex in examples:
            needles += [ex.question, "; ".join(ex.choices), " ".join(ex.choices)]
            needles += [ex.choices[ex.gold], ex.id]
    return needles


def _private_ids(tokenizer: PreTrainedTokenizerFast) -> list[list[int]]:
    """The token id sequences of every private text (as the clients' tokenizer reads it)."""
    texts = []
    for examples in CLIENT_DATA:
        for ex in examples:
            texts += [ex.question, *ex.choices, render_question(ex)]
    texts += [f" {text}" for text in texts]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def _numbers(msg: Message) -> list[tuple[str, list[float]]]:
    """Every number a message carries, as (where, values): metric records, numbers in config
    records (bare or in lists) and the values of every array."""
    found: list[tuple[str, list[float]]] = []
    for name, record in [*msg.content.metric_records.items(), *msg.content.config_records.items()]:
        for key, value in record.items():
            items = value if isinstance(value, list) else [value]
            numbers = [float(v) for v in items if isinstance(v, int | float)]
            if numbers:
                found.append((f"{name}.{key}", numbers))
    for name, arrays in msg.content.array_records.items():
        for key, array in arrays.items():
            found.append((f"{name}.{key}", np.asarray(array.numpy(), dtype=float).ravel().tolist()))
    return found


def _holds(values: Sequence[float], sequence: Sequence[int]) -> bool:
    n = len(sequence)
    return any(list(values[i : i + n]) == list(sequence) for i in range(len(values) - n + 1))


def _id_leaks(msg: Message, sequences: Sequence[Sequence[int]]) -> list[Sequence[int]]:
    """The private token id sequences (3 ids or more) found in the message's numbers or, as
    int32/int64 in either byte order, anywhere in the message as Flower serializes it."""
    numbers = [values for _, values in _numbers(msg)]
    wire = b"".join(obj.deflate() for obj in get_all_nested_objects(msg).values())
    leaks = []
    for seq in (s for s in sequences if len(s) >= 3):
        encoded = [np.asarray(seq, dtype=dtype).tobytes() for dtype in ("<i4", ">i4", "<i8", ">i8")]
        if any(_holds(values, seq) for values in numbers) or any(e in wire for e in encoded):
            leaks.append(seq)
    return leaks


def _statistics(msg: Message, acknowledged: int) -> list[str]:
    """Every number but the one allowed: the TRAIN reply's count of rationales received,
    which the server knows (it sent them)."""
    allowed = (f"{keys.RECEIVED}.{keys.RECEIVED}", [float(acknowledged)])
    return [where for where, values in _numbers(msg) if (where, values) != allowed]


def test_the_capture_checks_find_statistics_and_token_ids(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    ids = _private_ids(tiny_tokenizer)
    longest = max(ids, key=len)
    loss = RecordDict({"result": MetricRecord({"last_loss": 2.5})})
    assert _statistics(Message(loss, dst_node_id=1, message_type=keys.TRAIN), 2)
    ack = RecordDict({keys.RECEIVED: MetricRecord({keys.RECEIVED: 2})})
    assert not _statistics(Message(ack, dst_node_id=1, message_type=keys.TRAIN), 2)
    as_list = RecordDict({"x": ConfigRecord({"ids": [7, *longest, 9]})})
    as_array = RecordDict({"x": ArrayRecord({"a": Array(np.asarray(longest, dtype=np.int32))})})
    as_bytes = RecordDict({"x": ConfigRecord({"b": np.asarray(longest, dtype=">i8").tobytes()})})
    for content in (as_list, as_array, as_bytes):
        message = Message(content, dst_node_id=1, message_type=keys.QUERY)
        assert longest in _id_leaks(message, ids)


def test_clients_send_only_perturbed_prompts_and_a_bare_acknowledgement(
    simulated: tuple[FedCoTSpec, FedCoTResult, list[Message]],
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    _, _, sent = simulated
    _check_sent(sent, tiny_tokenizer)


PARAPHRASE_TOKENS = 6


@pytest.fixture(scope="module")
def simulated_paraphrase(
    tmp_path_factory: pytest.TempPathFactory, models_root: Path
) -> Iterator[tuple[FedCoTSpec, FedCoTResult, list[Message]]]:
    settings = dataclasses.replace(
        SETTINGS, strategy="paraphrase", paraphrase_tokens=PARAPHRASE_TOKENS
    )
    predictions = tmp_path_factory.mktemp("predictions-paraphrase")
    spec = _spec(  # a utility sweep's point: graded, never trained
        models_root, tmp_path_factory, settings=settings, train_slm=False,
        predictions_dir=str(predictions), artefacts_dir=str(predictions),
    )  # fmt: skip
    yield (spec, *_simulate_recorded(spec, tmp_path_factory, "sent-paraphrase"))


def test_paraphrasing_clients_send_fixed_length_paraphrases_and_nothing_else(
    simulated_paraphrase: tuple[FedCoTSpec, FedCoTResult, list[Message]],
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    spec, result, sent = simulated_paraphrase
    assert result.requests == result.acknowledged == (2, 2)
    for k in range(spec.num_clients):
        privacy = read_report(Path(str(spec.reports_dir)) / f"client{k}.json")["privacy"]
        # 2 rows x (question + 2 choices), each field exactly PARAPHRASE_TOKENS draws
        assert privacy["tokens_perturbed"] == 2 * 3 * PARAPHRASE_TOKENS
        assert privacy["tokens_passed_through"] == 0
        assert privacy["prompt_eps_max"] == pytest.approx(3 * PARAPHRASE_TOKENS * 1.0)
        assert privacy["guarantee"]["new_tokens"] == PARAPHRASE_TOKENS
        assert privacy["pattern_unique_rate"] == 0.0 and privacy["noise"] == "secrets"
        report = read_report(Path(str(spec.reports_dir)) / f"client{k}.json")
        assert report["utility"]["prompts"] == 2 and "train" not in report  # train_slm false
    assert not list(Path(str(spec.predictions_dir)).iterdir())  # no SLM scored, none saved
    _check_sent(sent, tiny_tokenizer)


def _check_sent(sent: list[Message], tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    """Every captured client message: no private text or ids, no statistic, only strings."""
    ids = _private_ids(tiny_tokenizer)
    for msg in sent:
        assert not msg.has_error()
        assert find_leaks(msg, _needles()) == []
        assert _id_leaks(msg, ids) == []
        # no metric or count derived from private rows: the only number is the ack
        assert _statistics(msg, acknowledged=2) == []
        assert not msg.content.array_records  # no weights travel in FedCoT
        for record in msg.content.config_records.values():
            assert all(isinstance(v, list) and all(isinstance(x, str) for x in v)
                       for v in record.values())  # fmt: skip
    assert len(sent) == 4  # per client: its requests, then its acknowledgement; nothing else
    kinds = sorted(tuple(sorted(m.content)) for m in sent)
    assert kinds == sorted([(keys.REQUESTS,)] * 2 + [(keys.RECEIVED,)] * 2)


def test_each_query_draws_fresh_noise_unless_the_simulation_seeds_it(
    tmp_path_factory: pytest.TempPathFactory, models_root: Path
) -> None:
    def prompts(spec: FedCoTSpec) -> list[str]:
        """The prompts client 0 sends for one QUERY."""
        context = Context(0, 1, {"partition-id": 0, "num-partitions": 2}, RecordDict(), {})
        query = Message(RecordDict(), dst_node_id=1, message_type=keys.QUERY)
        reply = _answer_query(spec, query, context, 0)
        return list(reply.content.config_records[keys.REQUESTS][keys.PROMPTS])

    def noise(spec: FedCoTSpec) -> str:
        """The noise source client 0's own report names."""
        return str(read_report(Path(str(spec.reports_dir)) / "client0.json")["privacy"]["noise"])

    secure = _spec(models_root, tmp_path_factory)
    assert prompts(secure) != prompts(secure)  # the server cannot replay the noise
    assert noise(secure) == "secrets"
    seeded = _spec(
        models_root, tmp_path_factory, settings=dataclasses.replace(SETTINGS, noise_seed=3)
    )
    assert prompts(seeded) == prompts(seeded)  # a simulation may ask for reproducibility
    assert noise(seeded) == "seeded"
