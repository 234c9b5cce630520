"""DP synthesis of whole multiple-choice items: training texts, a tiny generator end to end,
and what a client keeps back."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from fedkt.data import Example
from fedkt.data.formats import ItemFormat
from fedkt.data.synthetic import McItem, format_item, parse_item
from fedkt.errors import DataError
from fedkt.generation.synthesis import ItemSynthesis, SynthesisSettings
from fedkt.training.dp_generator import DPSettings
from fedkt.training.dp_synthesis import dp_synthesize, generator_texts

# Two items from the tiny tokenizer's corpus, so each is ~80 tokens, not hundreds.
GAS = McItem("Which gas do plants absorb from the air?", ("oxygen", "carbon dioxide"), 1)
BOIL = McItem(
    "What is the boiling point of water at sea level?", ("100 degrees Celsius", "oxygen"), 0
)


def row(id: str, item: McItem) -> Example:
    """An ARC-style row (``Question: ...\\nAnswer:`` scored on the choice texts)."""
    context = f"Question: {item.question}\nAnswer:"
    return Example(id, context, item.choices, item.answer, question=item.question)


ROWS = [row(f"gas-{i}", GAS) for i in range(8)] + [row(f"boil-{i}", BOIL) for i in range(8)]
SYNTHESIS = SynthesisSettings(max_new_tokens=90, batch_size=8, min_words=1, max_draws_factor=2)


def test_generator_texts_are_whole_items_and_unwritable_rows_are_skipped() -> None:
    repeated = Example(
        "rep", "Question: Pick one.\nAnswer:", ("cat", "Cat", "dog"), 2, question="Pick one."
    )
    texts = generator_texts([*ROWS[:2], repeated, ROWS[-1]], "Label")
    assert texts == [format_item(GAS), format_item(GAS), format_item(BOIL)]
    assert [parse_item(t) for t in texts] == [GAS, GAS, BOIL]


def test_dp_synthesize_items_with_a_tiny_generator(
    tiny_tokenizer: PreTrainedTokenizerFast, make_tiny_llama: Callable[..., LlamaForCausalLM]
) -> None:
    """Trained without noise (eps = inf) until it has learned its two items, the generator
    writes them back from the bare "Question:", and synthesis returns them parsed."""
    dp = DPSettings(
        target_epsilon=math.inf,
        delta=1e-3,
        batch_size=8,
        epochs=40,
        lr=1e-2,
        max_grad_norm=100.0,
        max_length=96,
    )
    out = dp_synthesize(
        make_tiny_llama(),
        tiny_tokenizer,
        ROWS,
        dp=dp,
        per_label=2,
        synthesis=SYNTHESIS,
        label_field="Label",
        noise=torch.Generator().manual_seed(0),
        seed=0,
    )
    assert out.kind == "mc" and isinstance(out.synthesis, ItemSynthesis)
    assert out.texts == () and out.labels == ()
    assert out.items and set(out.items) <= {GAS, BOIL}
    report = out.local_report()
    assert report["synthetic"] == len(out.items) and report["private_rows"] == 16
    assert report["skipped_rows"] == 0 and report["epsilon"] == math.inf


def test_dp_synthesize_items_with_noise_returns_only_valid_items(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    """A few noisy DP steps teach an untrained generator nothing: what it writes is mostly
    malformed, and only well-formed items with the task's (public) number of choices come
    back."""
    dp = DPSettings(target_epsilon=8.0, delta=1e-3, batch_size=8, max_length=96)
    settings = SynthesisSettings(max_new_tokens=24, batch_size=8, min_words=1, max_draws_factor=2)
    out = dp_synthesize(
        tiny_llama,
        tiny_tokenizer,
        ROWS,
        dp=dp,
        per_label=4,
        synthesis=settings,
        label_field="Label",
        noise=torch.Generator().manual_seed(0),
        seed=0,
        n_choices=2,
    )
    assert 0 < out.dp.epsilon <= 8.0 * 1.01 and out.dp.steps == 2
    assert isinstance(out.synthesis, ItemSynthesis)
    counts = out.synthesis.counts
    assert counts.drawn == 8 and counts.drawn == counts.kept + sum(counts.dropped.values())
    for item in out.items:
        assert parse_item(format_item(item)) == item and len(item.choices) == 2
    report = out.local_report()
    assert report["synthetic_drawn"] == 8 and report["short_items"] is (len(out.items) < 4)


def test_dp_synthesize_refuses_rows_it_cannot_train_on(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    repeated = [
        Example(f"r{i}", f"Question: Pick {i}.\nAnswer:", (w, w.upper()), 0, question=f"Pick {i}.")
        for i, w in enumerate(("cat", "dog", "owl"))
    ]
    with pytest.raises(DataError, match="none of the 3 private rows"):
        dp_synthesize(
            tiny_llama,
            tiny_tokenizer,
            repeated,
            dp=DPSettings(delta=1e-3),
            per_label=1,
            synthesis=SYNTHESIS,
            label_field="Label",
            noise=None,
            seed=0,
        )


def test_a_format_read_off_public_rows_decides_the_kind(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    """One private row reads as classification (its choices are every row's); the task's
    format read off public rows keeps it a multiple-choice task."""
    out = dp_synthesize(
        tiny_llama,
        tiny_tokenizer,
        ROWS[:1],
        dp=DPSettings(target_epsilon=math.inf, delta=1e-3, batch_size=1, max_length=96),
        per_label=1,
        synthesis=SynthesisSettings(max_new_tokens=8, batch_size=2, min_words=1),
        label_field="Label",
        noise=torch.Generator().manual_seed(0),
        seed=0,
        fmt=ItemFormat.of(ROWS),
    )
    assert out.kind == "mc" and out.synthesis.counts.drawn == 3
