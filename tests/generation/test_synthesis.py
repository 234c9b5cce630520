"""Per-label synthesis: quotas, filters, draw caps, seeds, with a scripted backend and a tiny
Llama."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from fedkt.data.synthetic import label_prefix
from fedkt.errors import ConfigError
from fedkt.generation import GenerationSettings, TransformersBackend
from fedkt.generation.synthesis import SynthesisSettings, synthesize

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
