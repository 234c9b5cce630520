"""FDKT's protocol steps in one process: tiny models, a fake embedder and a fake LLM backend."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from fedkt.algorithms.fdkt import (
    FDKTSettings,
    LabelFormat,
    client_synthesize,
    client_train,
    server_augment,
    training_examples,
)
from fedkt.data import Example
from fedkt.data.augmentation import LabelledText
from fedkt.data.curation import CurationSettings
from fedkt.errors import ConfigError
from fedkt.generation import GenerationSettings, ResponseStore
from fedkt.generation.synthesis import SynthesisSettings
from fedkt.models import LoraSettings, add_lora
from fedkt.training import TrainSettings
from fedkt.training.dp_generator import DPSettings

TOPICS = ("World", "Sports", "Business", "Science and Technology")
TEXTS = [
    ("Leaders met to discuss the peace treaty in the capital.", 0),
    ("The team won the final match of the season at home.", 1),
    ("Shares rose after the bank reported record profits today.", 2),
    ("Scientists launched a new satellite to study the sun.", 3),
]


def ag_news(text: str, gold: int, id: str) -> Example:
    return Example(
        id=id, context=f"Article: {text}\nTopic:", choices=TOPICS, gold=gold, question=text
    )


EXAMPLES = tuple(ag_news(t, g, f"row-{i}") for i, (t, g) in enumerate(TEXTS))

SETTINGS = FDKTSettings(
    dp=DPSettings(target_epsilon=8.0, delta=1e-3, batch_size=2, max_length=48),
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


class FakeEmbedder:
    """Bag of hashed words in 32 dimensions (what `embed` needs of a SentenceTransformer)."""

    def encode(self, texts: Sequence[str], **_: Any) -> np.ndarray:
        out = np.zeros((len(texts), 32), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % 32] += 1.0
        return out + 1e-3


class FakeLLM:
    """Answers every augmentation prompt with one well-formed sample per topic, plus chatter."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
        self.prompts += prompts
        out = []
        for n, _ in enumerate(prompts, start=len(self.prompts) - len(prompts)):
            lines = [f"Sure, here are samples {n}:"] + [
                f"{i + 1}. Topic: {topic} | Text: fresh story number {n} about {topic.lower()}"
                for i, topic in enumerate(TOPICS)
            ]
            out.append("\n".join(lines))
        return out


def test_settings_refuse_bad_values() -> None:
    with pytest.raises(ConfigError, match="per_label"):
        FDKTSettings(per_label=0)
    with pytest.raises(ConfigError, match="target_epsilon"):
        FDKTSettings(dp=DPSettings(target_epsilon=0.0))
    assert FDKTSettings(n_prompts=0).label == "dp_synthetic_only@3"
    assert FDKTSettings(dp=DPSettings(target_epsilon=math.inf)).label == "fdkt@inf"


def test_label_format_round_trips_and_refuses_multiple_choice() -> None:
    fmt = LabelFormat.of(EXAMPLES)
    assert fmt.labels == TOPICS
    assert fmt.text_and_label(EXAMPLES[2]) == (TEXTS[2][0], "Business")
    rebuilt = fmt.example("x", "Sports", "A {brace} text")
    assert rebuilt.context == "Article: A {brace} text\nTopic:" and rebuilt.gold == 1
    mc = [
        Example(
            id="q", context="Question: Why?\nAnswer:", choices=("a", "b"), gold=0, question="Why?"
        ),
        Example(
            id="r", context="Question: How?\nAnswer:", choices=("c", "d"), gold=1, question="How?"
        ),
    ]
    with pytest.raises(ConfigError, match="classification tasks only"):
        LabelFormat.of(mc)


def test_client_refuses_misconfigured_privacy_targets(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    big_delta = FDKTSettings(dp=DPSettings(delta=0.25))  # 4 rows: need delta < 1/4
    with pytest.raises(ConfigError, match="delta"):
        client_synthesize(tiny_llama, tiny_tokenizer, EXAMPLES, big_delta, noise=None, seed=0)
    with pytest.raises(ConfigError, match="eps"):
        FDKTSettings(dp=DPSettings(target_epsilon=-1.0))


def test_client_synthesize_trains_with_dp_and_samples_every_label(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    generator = add_lora(tiny_llama, LoraSettings(r=4, alpha=8, dropout=0.0))
    out = client_synthesize(
        generator,
        tiny_tokenizer,
        EXAMPLES,
        SETTINGS,
        noise=torch.Generator().manual_seed(0),
        seed=1,
    )
    assert out.dp.n_rows == 4 and out.dp.poisson and 0 < out.dp.epsilon <= 8.0 * 1.01
    assert out.dp.noise_multiplier > 0
    assert len(out.texts) == len(out.labels) and set(out.labels) <= set(TOPICS)
    assert set(out.synthesis.counts) == set(TOPICS)  # every label asked for, held or not
    report = out.local_report()
    assert report["private_rows"] == 4 and report["synthetic"] == len(out.texts)


def test_server_augment_curates_prompts_parses_and_resumes(tmp_path: Path) -> None:
    texts = [
        f"a story number {i} about {t.lower()} and more words here"
        for i, t in enumerate(TOPICS * 3)
    ]
    labels = list(TOPICS * 3)
    llm = FakeLLM()
    store = ResponseStore(tmp_path / "aug.jsonl")
    out = server_augment(llm, FakeEmbedder(), texts, labels, TOPICS, SETTINGS, store)
    assert len(llm.prompts) == 2 and "Topic: " in llm.prompts[0]
    assert out.items and all(item.label in TOPICS for item in out.items)
    assert out.report["chatter"] >= 2 and out.curation.total == 12
    again = server_augment(FakeLLM(), FakeEmbedder(), texts, labels, TOPICS, SETTINGS, store)
    assert again.items == out.items  # answered prompts are read back, not generated again
    only = server_augment(None, FakeEmbedder(), texts, labels, TOPICS, FDKTSettings(n_prompts=0))
    assert {item.text for item in only.items} <= set(texts)


def test_client_train_uses_private_and_received_examples(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    received = [LabelledText("Sports", "A late goal won the cup."), LabelledText("Nope", "x y")]
    rows = training_examples(EXAMPLES, received)
    assert len(rows) == 5 and rows[-1].context == "Article: A late goal won the cup.\nTopic:"
    assert rows[-1].choices[rows[-1].gold] == "Sports"
    slm = add_lora(tiny_llama, LoraSettings(r=4, alpha=8, dropout=0.0))
    report = client_train(slm, tiny_tokenizer, EXAMPLES, received, SETTINGS)
    assert report.steps >= 1 and math.isfinite(report.last_loss)
