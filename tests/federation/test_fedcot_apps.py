"""FedCoT over Flower: one real simulation (Ray, two clients) with tiny models, every message a
client sends captured and searched for its private text."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from flwr.app import Message
from transformers import PreTrainedTokenizerFast

from conftest import Recorder, build_tiny_llama, find_leaks
from fedkt.algorithms.fedcot import FedCoTSettings
from fedkt.data import Example
from fedkt.federation import keys
from fedkt.federation.fedcot import FedCoTResult, FedCoTSpec, simulate_fedcot
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
def simulated(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerFast
) -> Iterator[tuple[FedCoTSpec, FedCoTResult, list[Message]]]:
    root = tmp_path_factory.mktemp("models")
    for name, layers, seed in (("llm", 3, 1), ("slm", 2, 0)):
        build_tiny_llama(len(tiny_tokenizer), n_layers=layers, seed=seed).save_pretrained(
            root / name
        )
        tiny_tokenizer.save_pretrained(root / name)
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
        response_store=str(tmp_path_factory.mktemp("store") / "answers.jsonl"),
    )
    recorder = Recorder(tmp_path_factory.mktemp("sent"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FLWR_HOME", str(tmp_path_factory.mktemp("flwr-home")))
        env.setenv("FLWR_TELEMETRY_ENABLED", "0")
        env.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
        result = simulate_fedcot(spec, client_mods=[recorder])
    yield spec, result, recorder.messages()


def test_one_round_trip_runs_end_to_end(
    simulated: tuple[FedCoTSpec, FedCoTResult, list[Message]],
) -> None:
    spec, result, _ = simulated
    assert len(result.results) == len(result.privacy) == 2
    for outcome, privacy in zip(result.results, result.privacy, strict=True):
        assert outcome["n"] == 1 and 0.0 <= outcome["acc"] <= 1.0
        assert outcome["train_steps"] >= 1 and math.isfinite(outcome["last_loss"])
        assert outcome["rationales"] + outcome["missing"] + outcome["rejected"] == 2
        assert privacy["prompts"] == 2 and privacy["tokens_perturbed"] > 0
        assert privacy["eps_per_token_max"] == pytest.approx(1.0)
        assert 0.0 <= privacy["protected_recovered"] <= 1.0
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


def test_clients_send_no_question_choice_list_or_gold_answer(
    simulated: tuple[FedCoTSpec, FedCoTResult, list[Message]],
) -> None:
    _, _, sent = simulated
    assert len(sent) == 4  # per client: its requests, then its result; nothing else
    for msg in sent:
        assert not msg.has_error()
        assert not msg.content.array_records  # no weights travel in FedCoT
        assert find_leaks(msg, _needles()) == []
    kinds = sorted(tuple(sorted(m.content)) for m in sent)
    assert kinds == sorted([(keys.PRIVACY, keys.REQUESTS)] * 2 + [(keys.RESULT,)] * 2)
