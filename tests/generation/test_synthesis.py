"""Per-label and whole-item synthesis: quotas, filters, draw caps, seeds, with a scripted
backend and a tiny Llama."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from fedkt.data.synthetic import ITEM_PREFIX, McItem, format_item, label_prefix
from fedkt.errors import ConfigError
from fedkt.generation import GenerationSettings, TransformersBackend
from fedkt.generation.synthesis import SynthesisSettings, synthesize, synthesize_items

PREFIXES = {"a": label_prefix("a"), "b": label_prefix("b")}


class ScriptedBackend:
    """Answers each prompt from its label's script, in order, recording every call."""

    def __init__(self, scripts: dict[str, list[str]]) -> None:
        self.scripts = {PREFIXES[label]: list(texts) for label, texts in scripts.items()}
        self.calls: list[tuple[list[str], GenerationSettings]] = []

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
        self.calls.append((list(prompts), settings))
        return [self.scripts[p].pop(0) if self.scripts[p] else "" for p in prompts]


SETTINGS = SynthesisSettings(batch_size=2, min_words=2, max_words=6, max_draws_factor=3)


def test_fills_each_quota_and_counts_what_it_dropped() -> None:
    backend = ScriptedBackend(
        {
            "a": ["one", "alpha beta", " Label: a | Text: gamma delta", "alpha beta", "x y z"],
            "b": ["b one two", "b three four", "b five six"],
        }
    )
    result = synthesize(backend, PREFIXES, 2, SETTINGS, seed=0)
    by_label = {label: [s.text for s in result.samples if s.label == label] for label in PREFIXES}
    assert by_label == {"a": ["alpha beta", "gamma delta"], "b": ["b one two", "b three four"]}
    assert result.counts["a"].kept == 2 and result.counts["a"].dropped["too_short"] == 1
    assert result.counts["b"].drawn == 2 and result.short_labels == []
    # sampling is FDKT's: temperature 1, top-p 0.9, from the bare prefix
    prompts, gen = backend.calls[0]
    assert set(prompts) == set(PREFIXES.values())
    assert (gen.temperature, gen.top_p) == (1.0, 0.9)


def test_duplicates_and_the_draw_cap() -> None:
    """A label whose texts are all duplicates or junk stops after factor * quota draws."""
    backend = ScriptedBackend({"a": ["same text here"] * 20, "b": ["b ok text", "b two ok"]})
    result = synthesize(backend, PREFIXES, 2, SETTINGS, seed=0)
    counts = result.counts["a"]
    assert counts.kept == 1 and counts.drawn == 6  # ceil(3 * 2)
    assert counts.dropped["duplicate"] == 5
    assert result.short_labels == ["a"]
    assert sum(c.drawn for c in result.counts.values()) == sum(len(p) for p, _ in backend.calls)


def test_rounds_ask_more_when_acceptance_is_low() -> None:
    junk = ["no"] * 3 + [f"kept text {i}" for i in range(20)]
    backend = ScriptedBackend({"a": junk, "b": [f"b text {i}" for i in range(20)]})
    settings = SynthesisSettings(batch_size=1, min_words=2, max_draws_factor=10)
    result = synthesize(backend, PREFIXES, 4, settings, seed=0)
    assert result.counts["a"].kept == 4
    first, second = (prompts.count(PREFIXES["a"]) for prompts, _ in backend.calls[:2])
    assert first == 4 and second > 4  # 1 of 4 kept: ask for 3 / 0.25 = 12 next


def test_seeded_rounds_are_reproducible_and_secure_otherwise() -> None:
    seeds = []
    for seed in (5, 5, None):
        backend = ScriptedBackend({"a": ["x"] * 9, "b": ["y"] * 9})
        result = synthesize(backend, PREFIXES, 1, SETTINGS, seed=seed)
        seeds.append([gen.seed for _, gen in backend.calls])
        assert result.seeded is (seed is not None)
    assert seeds[0] == seeds[1] != seeds[2]
    assert len(set(seeds[0])) == len(seeds[0])  # each round its own seed


def test_refusals() -> None:
    backend = ScriptedBackend({})
    with pytest.raises(ConfigError, match="per_label"):
        synthesize(backend, PREFIXES, 0, SETTINGS, seed=0)
    with pytest.raises(ConfigError, match="no labels"):
        synthesize(backend, {}, 1, SETTINGS, seed=0)
    with pytest.raises(ConfigError, match="temperature"):
        SynthesisSettings(temperature=0)
    with pytest.raises(ConfigError, match="min_words"):
        SynthesisSettings(min_words=9, max_words=3)
    with pytest.raises(ConfigError, match="top_p"):
        SynthesisSettings(top_p=0)


def test_with_a_tiny_llama(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    """The transformers backend end to end: an untrained model rarely stops, so texts run to
    max_new_tokens; the word filter decides, and the counts add up."""
    settings = SynthesisSettings(max_new_tokens=8, batch_size=4, min_words=1, max_draws_factor=2)
    backend = TransformersBackend(tiny_llama, tiny_tokenizer)
    result = synthesize(backend, PREFIXES, 3, settings, seed=0)
    for label, counts in result.counts.items():
        assert counts.kept == sum(s.label == label for s in result.samples) <= 3
        assert counts.drawn == counts.kept + sum(counts.dropped.values())
    again = synthesize(backend, PREFIXES, 3, settings, seed=0)
    assert again.samples == result.samples


# ---- whole multiple-choice items ----


class ItemBackend:
    """Answers the prompts with fixed texts, in order, then with "" (recording every call)."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = list(texts)
        self.calls: list[tuple[list[str], GenerationSettings]] = []

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
        self.calls.append((list(prompts), settings))
        return [self.texts.pop(0) if self.texts else "" for _ in prompts]


GAS = McItem("Which gas do plants absorb?", ("oxygen", "carbon dioxide"), 1)
ICE = McItem("What turns ice into water?", ("heat", "cold", "wind"), 0)


def continuation(item: McItem) -> str:
    """What a generator writes after the bare prefix: the item without "Question:"."""
    return format_item(item)[len(ITEM_PREFIX) :]


def test_items_keep_the_valid_and_count_what_they_dropped() -> None:
    backend = ItemBackend(
        [
            " Which gas? | Choices: A) oxygen | Answer: A",  # one choice: malformed
            continuation(GAS),
            " not an item at all",  # malformed
            continuation(GAS).replace("Which", "WHICH"),  # the same item: duplicate
            " Why? | Choices: A) x B) y | Answer: A",  # too short
            continuation(ICE) + "\nQuestion: and a run-on",  # cut at the next item
            continuation(McItem("Which is a planet here?", ("Mars", "Moon"), 0)),
        ]
    )
    settings = SynthesisSettings(batch_size=7, min_words=2, max_draws_factor=4)
    result = synthesize_items(backend, 2, settings, seed=0)
    assert result.items == [GAS, ICE] and not result.short
    counts = result.counts
    assert counts.kept == 2 and counts.drawn == 7
    assert counts.dropped == {
        "empty": 0,
        "malformed": 2,
        "choice_count": 0,
        "too_short": 1,
        "too_long": 0,
        "duplicate": 1,
        "over_quota": 1,
    }
    assert counts.drawn == counts.kept + sum(counts.dropped.values())
    # sampled as the per-label texts are: temperature 1, top-p 0.9, from the bare prefix
    prompts, gen = backend.calls[0]
    assert set(prompts) == {ITEM_PREFIX} and (gen.temperature, gen.top_p) == (1.0, 0.9)


def test_items_draw_cap_choice_count_and_seeds() -> None:
    settings = SynthesisSettings(batch_size=2, min_words=2, max_draws_factor=3)
    junk = ItemBackend([continuation(GAS)] * 20)
    result = synthesize_items(junk, 2, settings, seed=0)
    assert result.items == [GAS] and result.short
    assert result.counts.drawn == 6 and result.counts.dropped["duplicate"] == 5
    three = synthesize_items(
        ItemBackend([continuation(GAS), continuation(ICE)]), 1, settings, seed=0, n_choices=3
    )
    assert three.items == [ICE] and three.counts.dropped["choice_count"] == 1
    seeds = []
    for seed in (5, 5, None):
        backend = ItemBackend([])
        assert synthesize_items(backend, 1, settings, seed=seed).seeded is (seed is not None)
        seeds.append([gen.seed for _, gen in backend.calls])
    assert seeds[0] == seeds[1] != seeds[2]
    with pytest.raises(ConfigError, match="n_items"):
        synthesize_items(junk, 0, settings, seed=0)
    with pytest.raises(ConfigError, match="n_choices"):
        synthesize_items(junk, 1, settings, seed=0, n_choices=1)
