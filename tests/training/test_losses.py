"""Closed-form checks of the answer-only CE and the KD loss on tiny logits."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaForCausalLM

from fedkt.errors import TokenizerMismatchError
from fedkt.training import IGNORE_INDEX, answer_cross_entropy, answer_positions, kd_loss

X = IGNORE_INDEX


def log_softmax(row: list[float]) -> list[float]:
    norm = math.log(sum(math.exp(v) for v in row))
    return [v - norm for v in row]


def test_answer_positions_are_shifted_by_one() -> None:
    labels = torch.tensor([[X, X, 4, 5], [X, 7, X, X]])
    assert answer_positions(labels).tolist() == [
        [False, True, True, False],
        [True, False, False, False],
    ]


def test_answer_cross_entropy_by_hand() -> None:
    logits = torch.tensor([[[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, 2.0]]])
    labels = torch.tensor([[X, 2, 0]])
    # logits[0] predicts labels[1] = 2, logits[1] predicts labels[2] = 0; logits[2] predicts nothing
    expected = -(log_softmax([1.0, 2.0, 0.5])[2] + log_softmax([0.0, -1.0, 3.0])[0]) / 2

    loss = answer_cross_entropy(logits, labels)

    assert loss.dim() == 0
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_answer_cross_entropy_agrees_with_hugging_face(tiny_llama: LlamaForCausalLM) -> None:
    input_ids = torch.tensor([[5, 9, 12, 40, 41, 0], [7, 8, 30, 31, 32, 0]])
    labels = input_ids.clone()
    labels[0, :3] = X
    labels[1, :2] = X
    out = tiny_llama(input_ids=input_ids, labels=labels)
    assert answer_cross_entropy(out.logits, labels).item() == pytest.approx(out.loss.item())


def test_answer_cross_entropy_without_answer_is_an_error() -> None:
    with pytest.raises(ValueError, match="no position"):
        answer_cross_entropy(torch.zeros(1, 3, 4), torch.full((1, 3), X))


def test_kd_zero_for_identical_and_positive_otherwise() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert kd_loss(logits, logits.clone(), mask).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(logits, torch.randn(2, 5, 11), mask).item() > 0


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_by_hand_on_three_tokens(temperature: float) -> None:
    student = torch.tensor([[[0.0, 1.0, 2.0], [9.0, 9.0, 9.0], [1.0, -1.0, 0.5]]])
    teacher = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 0.0, 50.0], [0.0, 0.0, 0.0]]])
    mask = torch.tensor([[True, False, True]])  # the middle position must not count

    def kl(t_row: list[float], s_row: list[float]) -> float:
        log_t = log_softmax([v / temperature for v in t_row])
        log_s = log_softmax([v / temperature for v in s_row])
        return sum(math.exp(a) * (a - b) for a, b in zip(log_t, log_s, strict=True))

    expected = (
        temperature**2
        * (kl([2.0, 0.0, 1.0], [0.0, 1.0, 2.0]) + kl([0.0] * 3, [1.0, -1.0, 0.5]))
        / 2
    )
    loss = kd_loss(student, teacher, mask, temperature=temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_kd_top_k_by_hand_and_full_vocabulary_equivalence() -> None:
    student = torch.tensor([[[0.0, 1.0, 2.0, -1.0]]])
    teacher = torch.tensor([[[3.0, 0.0, 1.0, -2.0]]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    # teacher's top 2 ids are 0 and 2: both distributions renormalised over {0, 2}
    log_t, log_s = log_softmax([3.0, 1.0]), log_softmax([0.0, 2.0])
    expected = sum(math.exp(a) * (a - b) for a, b in zip(log_t, log_s, strict=True))

    assert kd_loss(student, teacher, mask, top_k=2).item() == pytest.approx(expected, rel=1e-5)
    full = kd_loss(student, teacher, mask)
    assert kd_loss(student, teacher, mask, top_k=4).item() == pytest.approx(full.item())
    assert kd_loss(student, teacher, mask, top_k=100).item() == pytest.approx(full.item())


def test_kd_gradients_reach_the_student_only() -> None:
    torch.manual_seed(0)
    student = torch.randn(2, 3, 7, requires_grad=True)
    teacher = torch.randn(2, 3, 7, requires_grad=True)
    mask = torch.tensor([[True, True, False], [False, True, False]])

    kd_loss(student, teacher, mask, top_k=3).backward()

    assert teacher.grad is None
    assert student.grad is not None
    assert student.grad[mask].abs().sum() > 0
    assert student.grad[~mask].abs().sum() == 0


def test_kd_is_stable_for_extreme_logits() -> None:
    student = torch.tensor([[[1e4, -1e4, 0.0]]], dtype=torch.bfloat16)
    teacher = torch.tensor([[[-1e4, 1e4, 0.0]]], dtype=torch.bfloat16)
    loss = kd_loss(student, teacher, torch.ones(1, 1, dtype=torch.bool))
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    # teacher one-hot on id 1, where the student's log-probability is -(its logit gap)
    assert loss.item() == pytest.approx(2 * student[0, 0, 0].item(), rel=1e-6)


def test_kd_refuses_different_vocabularies() -> None:
    mask = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(TokenizerMismatchError, match="vocabulary"):
        kd_loss(torch.zeros(1, 2, 5), torch.zeros(1, 2, 6), mask)


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"temperature": 0.0}, "temperature"), ({"top_k": 0}, "top_k")]
)
def test_kd_rejects_bad_arguments(kwargs: dict[str, float], match: str) -> None:
    logits = torch.zeros(1, 2, 3)
    with pytest.raises(ValueError, match=match):
        kd_loss(logits, logits, torch.ones(1, 2, dtype=torch.bool), **kwargs)  # type: ignore[arg-type]
