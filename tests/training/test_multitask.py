"""Multi-task (predict + explain) training: the loss it optimises, and that it is the same loop."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from fedkt.data import Example, explain_example, predict_example
from fedkt.errors import ConfigError, DataError
from fedkt.training import (
    TrainSettings,
    answer_cross_entropy,
    collate,
    encode_answer_only,
    train_answer_only,
    train_multitask,
)
from fedkt.training.loop import _task_loss

FAST = TrainSettings(lr=1e-2, epochs=4, batch_size=4, warmup_ratio=0.0, max_length=96)

ROWS = [
    ("Which gas do plants absorb from the air?", ("oxygen", "carbon dioxide"), 1),
    ("What is the boiling point of water at sea level?", ("100 degrees Celsius", "rock"), 0),
    ("Which gas do we breathe?", ("oxygen", "helium"), 0),
    ("What do plants need to grow?", ("rock", "sunlight"), 1),
    ("What gives energy?", ("food", "soil"), 0),
    ("What is the lightest gas?", ("hydrogen", "nitrogen"), 0),
    ("What covers the ground?", ("soil", "water"), 0),
    ("What falls as rain?", ("water", "rock"), 0),
]
QUESTIONS = [
    Example(f"q{i}", f"Question: {q}\nAnswer:", choices, gold, question=q)
    for i, (q, choices, gold) in enumerate(ROWS)
]
PREDICT = [predict_example(q) for q in QUESTIONS]
# Questions 2 and 5 have no rationale (filtered out), as after a real recovery.
EXPLAIN = [
    explain_example(
        q,
        f"Plants and people need {q.choices[q.gold]} from the air, water and soil. "
        f"Therefore, the answer is {q.choices[q.gold]}.",
    )
    for i, q in enumerate(QUESTIONS)
    if i not in (2, 5)
]


def mean_ce(
    model: nn.Module, tokenizer: PreTrainedTokenizerFast, examples: Sequence[Example]
) -> float:
    batch = collate(
        [encode_answer_only(tokenizer, *ex.training_pair(), 96) for ex in examples],
        tokenizer.pad_token_id,
    )
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return answer_cross_entropy(logits, batch["labels"]).item()


def test_multitask_training_lowers_both_losses(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    before = (
        mean_ce(tiny_llama, tiny_tokenizer, PREDICT),
        mean_ce(tiny_llama, tiny_tokenizer, EXPLAIN),
    )

    report = train_multitask(
        tiny_llama, tiny_tokenizer, PREDICT, EXPLAIN, 0.5, FAST, progress=False
    )

    assert report.steps == 8  # batches are drawn over the 8 questions: 2 per epoch
    assert report.last_loss < report.first_loss
    assert set(report.task_losses) == {"predict", "explain"}
    assert all(len(h) == 8 for h in report.task_losses.values())
    assert mean_ce(tiny_llama, tiny_tokenizer, PREDICT) < before[0] - 0.5
    assert mean_ce(tiny_llama, tiny_tokenizer, EXPLAIN) < before[1] - 0.5
    assert not tiny_llama.training


def test_alpha_zero_is_answer_only_training(
    make_tiny_llama: Callable[..., LlamaForCausalLM], tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    settings = TrainSettings(lr=1e-2, batch_size=3, grad_accum=2, epochs=2, max_length=96)
    single, multi = make_tiny_llama(), make_tiny_llama()

    answer_only = train_answer_only(single, tiny_tokenizer, PREDICT, settings, progress=False)
    alpha_zero = train_multitask(
        multi, tiny_tokenizer, PREDICT, EXPLAIN, 0.0, settings, progress=False
    )

    assert alpha_zero.losses == answer_only.losses
    assert (alpha_zero.steps, alpha_zero.tokens) == (answer_only.steps, answer_only.tokens)
    assert all(math.isnan(x) for x in alpha_zero.task_losses["explain"])
    for (name, a), (_, b) in zip(single.named_parameters(), multi.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_one_padded_batch_gives_both_tasks_their_weighted_gradient(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    """One forward of both tasks' rows: alpha * grad CE_explain + (1-alpha) * grad CE_predict."""
    alpha = 0.3
    predict = [encode_answer_only(tiny_tokenizer, *ex.training_pair(), 96) for ex in PREDICT[:3]]
    explain = [encode_answer_only(tiny_tokenizer, *ex.training_pair(), 96) for ex in EXPLAIN[:2]]

    def gradient(
        loss_of: Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor], rows: list
    ) -> list[torch.Tensor]:
        tiny_llama.zero_grad()
        batch = collate(rows, tiny_tokenizer.pad_token_id)
        logits = tiny_llama(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
        loss_of(logits, batch).backward()
        return [p.grad.clone() for p in tiny_llama.parameters()]

    def ce(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return answer_cross_entropy(logits, batch["labels"])

    task = torch.tensor([0, 0, 0, 1, 1])

    def mixed(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss, ces = _task_loss(logits, batch["labels"], task, [1 - alpha, alpha])
        assert all(c is not None and c > 0 for c in ces)
        return loss

    g_predict, g_explain = gradient(ce, predict), gradient(ce, explain)
    g_mixed = gradient(mixed, predict + explain)

    for p, e, m in zip(g_predict, g_explain, g_mixed, strict=True):
        torch.testing.assert_close(m, (1 - alpha) * p + alpha * e, rtol=1e-4, atol=1e-6)
    assert any(e.abs().sum() > 0 for e in g_explain) and any(p.abs().sum() > 0 for p in g_predict)


def test_a_batch_without_rationales_keeps_the_predict_weight(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    batch = collate(
        [encode_answer_only(tiny_tokenizer, *ex.training_pair(), 96) for ex in PREDICT[:2]],
        tiny_tokenizer.pad_token_id,
    )
    with torch.no_grad():
        logits = tiny_llama(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
    loss, ces = _task_loss(logits, batch["labels"], torch.tensor([0, 0]), [0.25, 0.75])
    assert ces[1] is None
    torch.testing.assert_close(loss, 0.25 * answer_cross_entropy(logits, batch["labels"]))


def test_alpha_one_trains_only_the_questions_with_a_rationale(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    settings = TrainSettings(batch_size=2, max_length=96)
    report = train_multitask(
        tiny_llama, tiny_tokenizer, PREDICT, EXPLAIN, 1.0, settings, progress=False
    )
    assert report.steps == 3  # 6 rationales, 2 per batch
    assert all(math.isnan(x) for x in report.task_losses["predict"])
    with pytest.raises(DataError, match="no examples to train on"):
        train_multitask(tiny_llama, tiny_tokenizer, PREDICT, [], 1.0, settings, progress=False)


def test_rationales_ride_in_the_same_steps(
    make_tiny_llama: Callable[..., LlamaForCausalLM], tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    settings = TrainSettings(batch_size=4, max_length=96)
    half = train_multitask(
        make_tiny_llama(), tiny_tokenizer, PREDICT, EXPLAIN, 0.5, settings, progress=False
    )
    none = train_multitask(
        make_tiny_llama(), tiny_tokenizer, PREDICT, [], 0.5, settings, progress=False
    )
    assert half.steps == none.steps == 2  # steps count questions, not sequences
    assert half.answer_tokens > none.answer_tokens


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan])
def test_alpha_outside_0_1_is_refused(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, alpha: float
) -> None:
    with pytest.raises(ConfigError, match=r"alpha=.* must be in \[0, 1\]"):
        train_multitask(tiny_llama, tiny_tokenizer, PREDICT, EXPLAIN, alpha, FAST, progress=False)


def test_explain_examples_pair_with_predict_examples_by_id(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    stray = explain_example(Example("other", "Q", ("a",), 0, question="Q?"), "a reason here")
    with pytest.raises(DataError, match=r"\['other'\] have no predict example"):
        train_multitask(tiny_llama, tiny_tokenizer, PREDICT, [*EXPLAIN, stray], 0.5, FAST)
    with pytest.raises(DataError, match="explain examples repeat an id"):
        train_multitask(tiny_llama, tiny_tokenizer, PREDICT, [*EXPLAIN, EXPLAIN[0]], 0.5, FAST)
    with pytest.raises(DataError, match="predict examples repeat an id"):
        train_multitask(tiny_llama, tiny_tokenizer, [*PREDICT, PREDICT[0]], EXPLAIN, 0.5, FAST)
