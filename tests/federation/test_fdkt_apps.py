"""FDKT over Flower: one real simulation (Ray, two clients) with tiny models, every message a
client sends captured and searched for private text, a canary and private numbers."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message
from transformers import PreTrainedTokenizerFast

from conftest import Recorder, build_tiny_llama, find_leaks
from fedkt.algorithms.fdkt import FDKTSettings
from fedkt.data import Example
from fedkt.data.curation import CurationSettings
from fedkt.errors import ConfigError
from fedkt.federation import keys
from fedkt.federation.fdkt import FDKTResult, FDKTSpec, read_report, simulate_fdkt
from fedkt.generation import GenerationSettings
from fedkt.generation.synthesis import SynthesisSettings
from fedkt.models import LoraSettings
from fedkt.training import TrainSettings
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
        assert report["synthesis"]["private_rows"] == 3
        assert 0 < report["synthesis"]["epsilon"] <= 8.0 * 1.01
        assert report["train"]["received"] == result.sent and report["train"]["n"] == 1
        assert math.isfinite(report["train"]["last_loss"])


def test_clients_send_only_synthetic_texts_and_labels(
    simulated: tuple[FDKTSpec, FDKTResult, list[Message]],
) -> None:
    _, result, sent = simulated
    assert len(sent) == 4  # per client: its samples, then its ack; nothing else
    needles = [CANARY, "canary", "marmalade"]
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


def test_spec_refuses_multiple_choice_tasks() -> None:
    mc = Example(
        id="q", context="Question: Why?\nAnswer:", choices=("a", "b"), gold=0, question="Why?"
    )
    mc2 = Example(
        id="r", context="Question: How?\nAnswer:", choices=("c", "d"), gold=0, question="How?"
    )
    with pytest.raises(ConfigError, match="classification tasks only"):
        FDKTSpec(
            llm="x",
            slm="x",
            generator="x",
            client_data=((mc,),),
            eval_data=(mc, mc2),
            settings=SETTINGS,
            lora=LoraSettings(),
        )
