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
    ITEM_GROUP,
    FDKTSettings,
    client_synthesize,
    client_train,
    sample_text,
    server_augment,
    server_augment_items,
    server_zero_shot_augment,
    server_zero_shot_augment_items,
    training_examples,
)
from fedkt.data import Example
from fedkt.data.augmentation import LabelledText, build_zero_shot_item_prompts
from fedkt.data.curation import CurationSettings
from fedkt.data.formats import ItemFormat, LabelFormat, task_format
from fedkt.data.synthetic import McItem, format_item, parse_item
from fedkt.errors import ConfigError, DataError
from fedkt.generation import GenerationSettings, ResponseStore
from fedkt.generation.synthesis import SynthesisSettings
from fedkt.models import LoraSettings, add_lora
from fedkt.privacy.leakage import make_canaries
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


def test_zero_shot_augmentation_asks_the_llm_without_any_sample_and_parses_its_answers(
    tmp_path: Path,
) -> None:
    llm = FakeLLM()
    out = server_zero_shot_augment(llm, TOPICS, SETTINGS, ResponseStore(tmp_path / "zs.jsonl"))
    assert len(llm.prompts) == SETTINGS.n_prompts
    assert all("Examples:" not in prompt for prompt in llm.prompts)
    assert out.items and {item.label for item in out.items} <= set(TOPICS)
    assert out.curation.total == 0 and out.report["kept"] == len(out.items)


# ---- multiple-choice tasks: whole items ----------------------------------------------------

ITEMS = [
    McItem("Which gas do plants absorb from the air?", ("oxygen", "carbon dioxide", "iron"), 1),
    McItem("What is the boiling point of water at sea level?", ("0 C", "50 C", "100 C"), 2),
    McItem("Which planet is closest to the sun?", ("Mercury", "Venus", "Mars"), 0),
    McItem("Which organ pumps blood through the body?", ("lung", "heart", "skin"), 1),
]


def arc(item: McItem, id: str) -> Example:
    """An ARC-style row: the question in the context, scored on the choice texts."""
    return Example(id, f"Question: {item.question}\nAnswer:", item.choices, item.answer,
                   question=item.question)  # fmt: skip


MC_ROWS = tuple(arc(item, f"mc-{i}") for i, item in enumerate(ITEMS))


class FakeItemLLM:
    """Answers every prompt with chatter, a new well-formed item, a copy of the prompt's
    first demonstration, a malformed line and an item with too few choices."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
        out = []
        for prompt in prompts:
            self.prompts.append(prompt)
            n = len(self.prompts)
            demo = next(line for line in prompt.splitlines() if parse_item(line) is not None)
            out.append(
                "\n".join(
                    [
                        "Here are new items:",
                        f"1. Question: Which tool number {n} measures the air temperature? | "
                        "Choices: A) a thermometer B) a ruler C) a scale | Answer: A",
                        f"2. {demo}",
                        "3. Question: What is broken here? | Choices: A) only one | Answer: Q",
                        "4. Question: Which two colours mix into green paint? | Choices: "
                        "A) blue and yellow B) red and white | Answer: A",
                    ]
                )
            )
        return out


def test_server_augments_items_as_one_group_and_parses_whole_items(tmp_path: Path) -> None:
    llm = FakeItemLLM()
    store = ResponseStore(tmp_path / "items.jsonl")
    out = server_augment_items(llm, FakeEmbedder(), ITEMS, SETTINGS, store, n_choices=3)
    assert len(llm.prompts) == SETTINGS.n_prompts
    for prompt in llm.prompts:  # one demonstration per prompt, whole, in the answer format
        demos = [line for line in prompt.splitlines() if parse_item(line) is not None]
        assert len(demos) == SETTINGS.demos_per_label and demos[0] in map(format_item, ITEMS)
        assert "New items:" in prompt and "Topic:" not in prompt
    assert out.items and all(isinstance(item, McItem) for item in out.items)
    assert {item.question for item in out.items} == {  # type: ignore[union-attr]
        f"Which tool number {n} measures the air temperature?" for n in (1, 2)
    }
    assert out.report["copies_demonstration"] == 2  # the echoed demonstrations
    assert out.report["malformed"] == 4  # the broken line and the 2-choice item, per answer
    assert out.curation.total == 4 and out.report["kept"] == len(out.items)
    again = server_augment_items(FakeItemLLM(), FakeEmbedder(), ITEMS, SETTINGS, store,
                                 n_choices=3)  # fmt: skip
    assert again.items == out.items  # answered prompts are read back
    only = server_augment_items(None, FakeEmbedder(), ITEMS, FDKTSettings(n_prompts=0))
    assert set(only.items) <= set(ITEMS) and only.report == {"kept": len(only.items)}
    with pytest.raises(DataError, match="no synthetic items"):
        server_augment_items(llm, FakeEmbedder(), [], SETTINGS)
    assert ITEM_GROUP == "item"


def test_zero_shot_item_augmentation_shows_no_item(tmp_path: Path) -> None:
    prompts = build_zero_shot_item_prompts(3, n_new=2, n_choices=4, domain="of science")
    assert [p.id for p in prompts] == ["zero-shot0", "zero-shot1", "zero-shot2"]
    for prompt in prompts:
        assert "Examples:" not in prompt.prompt and "exactly 4 choices" in prompt.prompt
        assert "of science" in prompt.prompt and "| Answer: <letter>" in prompt.prompt
    assert "two or more choices" in build_zero_shot_item_prompts(1)[0].prompt
    with pytest.raises(ConfigError, match="n_choices"):
        build_zero_shot_item_prompts(1, n_choices=1)

    class Writer:  # FakeItemLLM needs a demonstration to echo; here there is none
        def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
            return [
                f"Question: Which item {i} floats on water? | Choices: A) wood B) iron "
                "C) stone | Answer: A\nQuestion: no choices | Answer: B"
                for i, _ in enumerate(prompts)
            ]

    out = server_zero_shot_augment_items(Writer(), SETTINGS, ResponseStore(None), n_choices=3)
    assert out.curation.total == 0 and len(out.items) == SETTINGS.n_prompts
    assert all(isinstance(item, McItem) for item in out.items)
    assert out.report["malformed"] == SETTINGS.n_prompts


def test_training_examples_turn_received_items_into_the_tasks_rows() -> None:
    fmt = task_format(MC_ROWS)
    assert isinstance(fmt, ItemFormat)
    new = McItem("Which tool measures the air temperature?", ("thermometer", "ruler"), 0)
    rows = training_examples(MC_ROWS, [new], fmt)
    assert rows[:4] == list(MC_ROWS) and len(rows) == 5
    assert rows[-1].context == "Question: Which tool measures the air temperature?\nAnswer:"
    assert rows[-1].choices == ("thermometer", "ruler") and rows[-1].gold == 0
    assert training_examples(MC_ROWS[:1], [new], fmt)[-1] == rows[-1]  # one row: fmt decides
    with pytest.raises(DataError, match="multiple-choice task"):
        training_examples(MC_ROWS, [LabelledText("World", "a text")], fmt)
    with pytest.raises(DataError, match="classification task"):
        training_examples(EXAMPLES, [new])
    assert sample_text(new) == format_item(new) and sample_text(LabelledText("x", "y")) == "y"


def test_client_synthesize_items_with_the_public_format_and_no_canaries(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    fmt = task_format(MC_ROWS)
    out = client_synthesize(
        add_lora(tiny_llama, LoraSettings(r=4, alpha=8, dropout=0.0)),
        tiny_tokenizer,
        MC_ROWS[:1],  # alone it reads as classification; the public format says otherwise
        FDKTSettings(
            dp=DPSettings(target_epsilon=8.0, delta=0.5, batch_size=1, max_length=48),
            per_label=1,
            synthesis=SynthesisSettings(max_new_tokens=8, batch_size=2, min_words=1),
        ),
        noise=torch.Generator().manual_seed(0),
        seed=0,
        fmt=fmt,
        n_choices=3,
    )
    assert out.kind == "mc" and out.texts == () and out.labels == ()
    assert all(len(item.choices) == 3 for item in out.items)
    canaries = make_canaries(1, ["World"], seed=0)
    with pytest.raises(ConfigError, match="canary audit supports classification"):
        client_synthesize(tiny_llama, tiny_tokenizer, MC_ROWS, SETTINGS, noise=None, seed=0,
                          canaries=canaries, fmt=fmt)  # fmt: skip


def test_client_trains_on_private_and_received_items(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    slm = add_lora(tiny_llama, LoraSettings(r=4, alpha=8, dropout=0.0))
    new = McItem("Which tool measures the air temperature?", ("thermometer", "ruler", "scale"), 0)
    report = client_train(slm, tiny_tokenizer, MC_ROWS, [new], SETTINGS, task_format(MC_ROWS))
    assert report.steps >= 1 and math.isfinite(report.last_loss)
