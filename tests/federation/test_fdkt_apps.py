"""FDKT over Flower: real simulations (Ray, two clients) with tiny models, every message a
client sends captured and searched for private text, a canary and private numbers; one on AG
News-style classification rows, one on real ARC-Easy rows (whole multiple-choice items)."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message
from transformers import PreTrainedTokenizerFast

from conftest import SHARED_DATA, Recorder, build_tiny_llama, find_leaks
from fedkt.algorithms.fdkt import FDKTSettings
from fedkt.data import Example, load_examples
from fedkt.data.curation import CurationSettings
from fedkt.data.formats import ItemFormat
from fedkt.data.synthetic import McItem, format_item, parse_item
from fedkt.errors import ConfigError, FedktError
from fedkt.federation import keys
from fedkt.federation.fdkt import (
    FDKTResult,
    FDKTSpec,
    items_from_record,
    simulate_fdkt,
)
from fedkt.federation.reports import read_report
from fedkt.generation import GenerationSettings
from fedkt.generation.synthesis import SynthesisSettings
from fedkt.models import LoraSettings
from fedkt.privacy.leakage import make_canaries
from fedkt.training import TrainSettings, derive_seed
from fedkt.training.dp_generator import DPSettings

TOPICS = ("World", "Sports", "Business", "Science and Technology")
CANARY = "zebra quartz canary seventeen marmalade"
PRIVATE = [  # (text, gold): what must never leave a client
    ("Leaders met to discuss the peace treaty in the capital.", 0),
    ("The team won the final match of the season at home.", 1),
    (f"My secret note says {CANARY} today.", 2),
    ("Scientists launched a new satellite to study the sun.", 3),
    ("Shares rose after the bank reported record profits.", 2),
    ("The striker scored twice in the derby on Sunday.", 1),
]
EVAL = [("A rocket carried two astronauts to the station.", 3)]
SETTINGS = FDKTSettings(
    dp=DPSettings(target_epsilon=8.0, delta=1e-2, batch_size=2, max_length=48),
    per_label=2,
    synthesis=SynthesisSettings(max_new_tokens=12, batch_size=8, min_words=1, max_draws_factor=2),
    curation=CurationSettings(min_group=2),
    n_prompts=2,
    demos_per_label=1,
    new_per_label=1,
    augmentation=GenerationSettings(max_new_tokens=64),
    label_field="Topic",
    train=TrainSettings(epochs=1, lr=1e-2, batch_size=4, warmup_ratio=0.0, max_length=64),
)


def _examples(rows: list[tuple[str, int]], tag: str) -> tuple[Example, ...]:
    return tuple(
        Example(
            id=f"private-row-{tag}{i}",
            context=f"Article: {text}\nTopic:",
            choices=TOPICS,
            gold=gold,
            question=text,
        )
        for i, (text, gold) in enumerate(rows)
    )


CLIENT_DATA = (_examples(PRIVATE[:3], "a"), _examples(PRIVATE[3:], "b"))


class FakeEmbedder:
    def encode(self, texts: Sequence[str], **_: Any) -> np.ndarray:
        out = np.full((len(texts), 32), 1e-3, dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % 32] += 1.0
        return out


class FakeLLM:
    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
        return [
            "\n".join(f"Topic: {t} | Text: new sample {n} on {t.lower()}" for t in TOPICS)
            for n, _ in enumerate(prompts)
        ]


@pytest.fixture(scope="module")
def simulated(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerFast
) -> Iterator[tuple[FDKTSpec, FDKTResult, list[Message]]]:
    root = tmp_path_factory.mktemp("models")
    build_tiny_llama(len(tiny_tokenizer), n_layers=2, seed=0).save_pretrained(root / "slm")
    tiny_tokenizer.save_pretrained(root / "slm")
    out = tmp_path_factory.mktemp("out")
    spec = FDKTSpec(
        llm="unused-fake-backend",
        slm=str(root / "slm"),
        generator=str(root / "slm"),
        client_data=CLIENT_DATA,
        eval_data=_examples(EVAL, "e"),
        settings=SETTINGS,
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
        dtype="float32",
        device="cpu",
        client_cpus=os.cpu_count() or 1,
        response_store=str(out / "answers.jsonl"),
        predictions_dir=str(out / "predictions"),
        artefacts_dir=str(out / "artefacts"),
        reports_dir=str(out / "reports"),
        canaries=2,
    )
    recorder = Recorder(tmp_path_factory.mktemp("sent"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FLWR_HOME", str(tmp_path_factory.mktemp("flwr-home")))
        env.setenv("FLWR_TELEMETRY_ENABLED", "0")
        env.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
        result = simulate_fdkt(
            spec, client_mods=[recorder], embedder=FakeEmbedder(), backend=FakeLLM()
        )
    yield spec, result, recorder.messages()


def test_one_round_trip_runs_end_to_end(
    simulated: tuple[FDKTSpec, FDKTResult, list[Message]],
) -> None:
    spec, result, _ = simulated
    assert len(result.synthetic) == 2 and all(n >= 1 for n in result.synthetic.values())
    assert result.sent >= 1 and set(result.acks.values()) == {result.sent}
    assert len(result.received_samples) == sum(result.synthetic.values())
    assert len(result.sent_samples) == result.sent
    assert all(size > 0 for size in [*result.bytes_up.values(), *result.bytes_down.values()])
    assert len(Path(str(spec.response_store)).read_text().splitlines()) >= 1
    for k in range(2):
        rows = (Path(str(spec.predictions_dir)) / f"slm-client{k}.jsonl").read_text()
        assert len(rows.splitlines()) == 1
        assert (Path(str(spec.artefacts_dir)) / "clients" / str(k) / "slm").is_dir()
        report = read_report(Path(str(spec.reports_dir)) / f"client{k}.json")
        assert report["synthesis"]["private_rows"] == 3 + (2 if k == 0 else 0)  # + canaries
        assert 0 < report["synthesis"]["epsilon"] <= 8.0 * 1.01
        assert report["train"]["received"] == result.sent and report["train"]["n"] == 1
        assert math.isfinite(report["train"]["last_loss"])
    audit = read_report(Path(str(spec.reports_dir)) / "client0.json")["audit"]
    assert audit["exposure"]["n_canaries"] == 2 and audit["exposure"]["n_references"] == 499
    assert audit["in_sent"]["n_canaries"] == 2
    assert "audit" not in read_report(Path(str(spec.reports_dir)) / "client1.json")


def test_clients_send_only_synthetic_texts_and_labels(
    simulated: tuple[FDKTSpec, FDKTResult, list[Message]],
) -> None:
    _, result, sent = simulated
    assert len(sent) == 4  # per client: its samples, then its ack; nothing else
    needles = [CANARY, "canary", "marmalade"]
    audit_canaries = make_canaries(2, TOPICS, seed=derive_seed(SETTINGS.seed, 0, 3))
    needles += [c.text for c in audit_canaries] + [c.secret for c in audit_canaries]
    for examples in CLIENT_DATA:
        needles += [e.question for e in examples] + [e.id for e in examples]
    for msg in sent:
        assert not msg.has_error() and not msg.content.array_records  # no weights in FDKT
        assert find_leaks(msg, needles) == []
    samples = [m for m in sent if keys.SYNTHETIC in m.content]
    acks = [m for m in sent if keys.RECEIVED in m.content]
    assert len(samples) == len(acks) == 2
    for msg in samples:  # texts and labels only: no eps, no row counts, no metrics
        assert list(msg.content) == [keys.SYNTHETIC] and not msg.content.metric_records
        record = msg.content.config_records[keys.SYNTHETIC]
        assert sorted(record) == sorted([keys.TEXTS, keys.LABELS])
        assert all(isinstance(t, str) for t in record[keys.TEXTS])  # type: ignore[union-attr]
        assert set(record[keys.LABELS]) <= set(TOPICS)  # type: ignore[arg-type]
    for msg in acks:  # the count the server itself sent, nothing else
        assert list(msg.content) == [keys.RECEIVED] and not msg.content.config_records
        assert dict(msg.content.metric_records[keys.RECEIVED]) == {keys.RECEIVED: result.sent}


def test_spec_takes_multiple_choice_tasks_and_refuses_generative_ones() -> None:
    mc = Example(
        id="q", context="Question: Why?\nAnswer:", choices=("a", "b"), gold=0, question="Why?"
    )
    mc2 = Example(
        id="r", context="Question: How?\nAnswer:", choices=("c", "d"), gold=0, question="How?"
    )
    fields: dict[str, Any] = {"llm": "x", "slm": "x", "generator": "x", "settings": SETTINGS,
                              "lora": LoraSettings()}  # fmt: skip
    spec = FDKTSpec(client_data=((mc,),), eval_data=(mc, mc2), **fields)
    assert isinstance(spec.format, ItemFormat) and spec.n_choices == 2 and spec.labels == ()
    three = Example("s", "Question: What?\nAnswer:", ("e", "f", "g"), 0, question="What?")
    assert FDKTSpec(client_data=((mc,),), eval_data=(mc, three), **fields).n_choices is None
    with pytest.raises(ConfigError, match="canary audit supports classification"):
        FDKTSpec(client_data=((mc,),), eval_data=(mc, mc2), canaries=2, **fields)
    with pytest.raises(ConfigError, match="client row 'q'"):  # one eval row reads as labels
        FDKTSpec(client_data=((mc,),), eval_data=(mc2,), **fields)
    gsm = Example("g", "Question: 2+2?\nAnswer:", (), -1, target=" 4", answer="4")
    with pytest.raises(ConfigError, match="generative"):
        FDKTSpec(client_data=((gsm,),), eval_data=(gsm,), **fields)


def test_item_messages_are_parsed_and_malformed_ones_refused() -> None:
    item = McItem("Which gas do plants absorb?", ("oxygen", "carbon dioxide"), 1)
    assert items_from_record(ConfigRecord({keys.ITEMS: [format_item(item)]})) == [item]
    assert items_from_record(ConfigRecord({keys.ITEMS: []})) == []
    bad = [
        ({keys.ITEMS: [format_item(item), "Question: x | Choices: A) y | Answer: A"]}, "item 1"),
        ({keys.ITEMS: [format_item(item).replace("Answer: B", "Answer: Z")]}, "item 0"),
        ({keys.ITEMS: "Question: x"}, "list of strings"),
        ({keys.TEXTS: ["a text"], keys.LABELS: ["World"]}, "multiple-choice"),
        ({}, "no 'items'"),
    ]
    for record, message in bad:
        with pytest.raises(FedktError, match=message):
            items_from_record(ConfigRecord(record))  # type: ignore[arg-type]


# ---- a multiple-choice task: ARC-Easy rows, whole items ------------------------------------

PUBLIC_ITEMS = [  # what the generator base "knows" before any client: public, not private
    McItem(
        "Which gas do plants absorb from the air?",
        ("oxygen", "carbon dioxide", "nitrogen", "helium"),
        1,
    ),
    McItem(
        "What is the boiling point of water at sea level?",
        ("100 degrees Celsius", "rock", "soil", "sunlight"),
        0,
    ),
]
MC_SETTINGS = FDKTSettings(
    dp=DPSettings(target_epsilon=8.0, delta=1e-2, batch_size=2, max_length=96),
    per_label=2,
    synthesis=SynthesisSettings(max_new_tokens=110, batch_size=8, min_words=1, max_draws_factor=4),
    curation=CurationSettings(min_group=2),
    n_prompts=2,
    demos_per_label=1,
    new_per_label=1,
    augmentation=GenerationSettings(max_new_tokens=64),
    train=TrainSettings(epochs=1, lr=1e-2, batch_size=4, warmup_ratio=0.0, max_length=96),
)


def _pretrained_generator(tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    """A tiny Llama that writes the public items from the bare "Question:" (a stand-in for a
    pretrained generator: a random one writes no well-formed item, so no item would reach
    the server). It has never seen a client's row."""
    model = build_tiny_llama(len(tokenizer), n_layers=2, seed=0).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    rows = [[*tokenizer(format_item(i))["input_ids"], tokenizer.eos_token_id] for i in PUBLIC_ITEMS]
    for _ in range(150):
        for ids in rows:
            batch = torch.tensor([ids])
            model(input_ids=batch, labels=batch).loss.backward()
            optimiser.step()
            optimiser.zero_grad()
    model.eval().save_pretrained(path)
    tokenizer.save_pretrained(path)


class FakeItemLLM:
    """Per prompt: chatter, one new well-formed 4-choice item, a malformed line and an item
    with too few choices (both dropped)."""

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
        return [
            "Sure:\n"
            f"Question: Which instrument number {n} measures air pressure? | Choices: "
            "A) a barometer B) a ruler C) a scale D) a compass | Answer: A\n"
            "Question: What is missing? | Choices: A) nothing | Answer: K\n"
            "Question: Which is a mammal of the sea? | Choices: A) whale B) shark | Answer: A"
            for n, _ in enumerate(prompts)
        ]


@pytest.fixture(scope="module")
def arc_rows() -> tuple[tuple[tuple[Example, ...], ...], tuple[Example, ...]]:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"local datasets not found at {SHARED_DATA}")
    train = load_examples("arc_easy", "train", SHARED_DATA, limit=6)
    evaluation = load_examples("arc_easy", "validation", SHARED_DATA, limit=4)
    return (tuple(train[:3]), tuple(train[3:])), tuple(evaluation)


@pytest.fixture(scope="module")
def simulated_mc(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_tokenizer: PreTrainedTokenizerFast,
    arc_rows: tuple[tuple[tuple[Example, ...], ...], tuple[Example, ...]],
) -> Iterator[tuple[FDKTSpec, FDKTResult, list[Message]]]:
    root = tmp_path_factory.mktemp("mc-models")
    _pretrained_generator(tiny_tokenizer, root / "generator")
    build_tiny_llama(len(tiny_tokenizer), n_layers=2, seed=1).save_pretrained(root / "slm")
    tiny_tokenizer.save_pretrained(root / "slm")
    out = tmp_path_factory.mktemp("mc-out")
    client_data, eval_data = arc_rows
    spec = FDKTSpec(
        llm="unused-fake-backend",
        slm=str(root / "slm"),
        generator=str(root / "generator"),
        client_data=client_data,
        eval_data=eval_data,
        settings=MC_SETTINGS,
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
        dtype="float32",
        device="cpu",
        client_cpus=os.cpu_count() or 1,
        response_store=str(out / "answers.jsonl"),
        predictions_dir=str(out / "predictions"),
        reports_dir=str(out / "reports"),
    )
    recorder = Recorder(tmp_path_factory.mktemp("mc-sent"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FLWR_HOME", str(tmp_path_factory.mktemp("mc-flwr-home")))
        env.setenv("FLWR_TELEMETRY_ENABLED", "0")
        env.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
        result = simulate_fdkt(
            spec, client_mods=[recorder], embedder=FakeEmbedder(), backend=FakeItemLLM()
        )
    yield spec, result, recorder.messages()


def test_a_multiple_choice_round_trip_runs_end_to_end(
    simulated_mc: tuple[FDKTSpec, FDKTResult, list[Message]],
) -> None:
    spec, result, _ = simulated_mc
    assert isinstance(spec.format, ItemFormat) and spec.n_choices == 4
    assert all(n >= 1 for n in result.synthetic.values())  # the server received items
    assert result.received_samples and all(
        isinstance(item, McItem) and len(item.choices) == 4 for item in result.received_samples
    )
    assert any(item in PUBLIC_ITEMS for item in result.received_samples)  # what it learned
    assert result.curation["total"] == len(result.received_samples)
    assert result.augmentation["malformed"] == 2 * MC_SETTINGS.n_prompts
    assert result.sent == MC_SETTINGS.n_prompts and set(result.acks.values()) == {result.sent}
    assert {item.question for item in result.sent_samples} == {  # type: ignore[union-attr]
        f"Which instrument number {n} measures air pressure?" for n in range(2)
    }
    for k in range(2):
        rows = (Path(str(spec.predictions_dir)) / f"slm-client{k}.jsonl").read_text()
        assert len(rows.splitlines()) == len(spec.eval_data)
        report = read_report(Path(str(spec.reports_dir)) / f"client{k}.json")
        assert report["synthesis"]["private_rows"] == 3 and report["synthesis"]["synthetic"] >= 1
        assert 0 < report["synthesis"]["epsilon"] <= 8.0 * 1.01
        assert report["train"]["received"] == result.sent and report["train"]["n"] == 4
        assert math.isfinite(report["train"]["last_loss"]) and "audit" not in report


def test_multiple_choice_clients_send_only_synthetic_items(
    simulated_mc: tuple[FDKTSpec, FDKTResult, list[Message]],
) -> None:
    spec, result, sent = simulated_mc
    assert len(sent) == 4  # per client: its items, then its ack; nothing else
    public = " ".join(format_item(item) for item in PUBLIC_ITEMS)
    needles = []
    for part in spec.client_data:
        for row in part:
            needles += [row.id, row.question, row.context, *row.choices]
    # A private choice that the public items also hold ("carbon dioxide", "water") proves
    # nothing either way: the generator knew it before any client.
    needles = [n for n in needles if n not in public]
    assert len(needles) >= 30
    for msg in sent:
        assert not msg.has_error() and not msg.content.array_records  # no weights in FDKT
        assert find_leaks(msg, needles) == []
    samples = [m for m in sent if keys.SYNTHETIC in m.content]
    acks = [m for m in sent if keys.RECEIVED in m.content]
    assert len(samples) == len(acks) == 2
    for msg in samples:  # whole items only: no texts/labels, no eps, no counts, no metrics
        assert list(msg.content) == [keys.SYNTHETIC] and not msg.content.metric_records
        record = msg.content.config_records[keys.SYNTHETIC]
        assert list(record) == [keys.ITEMS]
        lines = record[keys.ITEMS]
        assert isinstance(lines, list) and lines
        assert all(isinstance(line, str) and parse_item(line) is not None for line in lines)
    for msg in acks:  # the count the server itself sent, nothing else
        assert list(msg.content) == [keys.RECEIVED] and not msg.content.config_records
        assert dict(msg.content.metric_records[keys.RECEIVED]) == {keys.RECEIVED: result.sent}
