"""Closed-form checks of the answer-only CE and the KD loss on tiny logits."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaForCausalLM

from fedkt.errors import TokenizerMismatchError
from fedkt.training import (
    IGNORE_INDEX,
    answer_cross_entropy,
    answer_positions,
    kd_loss,
    min_ce_rows,
    selective_kd_loss,
    sequence_cross_entropy,
)

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


# ---- selective (min-CE) distillation ----

# Two rows over a 3-token vocabulary; row 0 learns 2 answer tokens, row 1 one.
SEL_LABELS = torch.tensor([[X, 2, 0], [X, X, 1]])
GOOD = torch.tensor(  # puts most mass on every gold token
    [[[0.0, 0.0, 4.0], [4.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
     [[0.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 0.0]]]
)  # fmt: skip
BAD = torch.tensor(  # puts most mass on a wrong token
    [[[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 0.0]],
     [[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]
)  # fmt: skip


def test_sequence_cross_entropy_by_hand() -> None:
    ce = sequence_cross_entropy(BAD, SEL_LABELS)
    row0 = -(log_softmax([4.0, 0.0, 0.0])[2] + log_softmax([0.0, 4.0, 0.0])[0]) / 2
    row1 = -log_softmax([4.0, 0.0, 0.0])[1]
    assert ce.shape == (2,) and ce.dtype == torch.float32
    assert ce.tolist() == pytest.approx([row0, row1], rel=1e-6)
    # its token-weighted mean is the batch CE
    tokens = torch.tensor([2.0, 1.0])
    assert (ce * tokens).sum().item() / 3 == pytest.approx(
        answer_cross_entropy(BAD, SEL_LABELS).item()
    )


def test_min_ce_rows_pick_the_side_with_the_lower_ce() -> None:
    mixed = torch.stack([GOOD[0], BAD[1]])  # better than BAD on row 0, worse than GOOD on row 1
    ce_mixed = sequence_cross_entropy(mixed, SEL_LABELS)
    ce_good, ce_bad = (
        sequence_cross_entropy(GOOD, SEL_LABELS),
        sequence_cross_entropy(BAD, SEL_LABELS),
    )
    assert min_ce_rows(ce_bad, ce_good).tolist() == [True, True]  # BAD learns from GOOD
    assert min_ce_rows(ce_good, ce_bad).tolist() == [False, False]  # GOOD is never pulled down
    # a tie selects nothing: row 0 of mixed vs GOOD, row 1 of BAD vs mixed
    assert min_ce_rows(ce_mixed, ce_good).tolist() == [False, True]
    assert min_ce_rows(ce_bad, ce_mixed).tolist() == [True, False]
    with pytest.raises(ValueError, match=r"\(B,\)"):
        min_ce_rows(ce_good, ce_good[:1])


def test_selective_kd_with_every_row_is_kd_loss() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    mask = answer_positions(SEL_LABELS)
    every = torch.ones(2, dtype=torch.bool)
    for top_k in (None, 2):
        full = kd_loss(student, teacher, mask, temperature=2.0, top_k=top_k)
        picked = selective_kd_loss(student, teacher, mask, every, temperature=2.0, top_k=top_k)
        assert torch.equal(picked, full)  # "none" distils exactly as before


def test_selective_kd_keeps_the_per_token_weight() -> None:
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    mask = answer_positions(SEL_LABELS)  # 2 positions in row 0, 1 in row 1
    row0 = torch.tensor([True, False])
    only_row0 = mask & row0[:, None]
    expected = kd_loss(student, teacher, only_row0).item() * 2 / 3
    assert selective_kd_loss(student, teacher, mask, row0).item() == pytest.approx(expected)


def test_min_ce_gives_no_kd_gradient_where_the_teacher_is_worse_on_every_row() -> None:
    student = GOOD.clone().requires_grad_(True)
    teacher = BAD
    rows = min_ce_rows(sequence_cross_entropy(student.detach(), SEL_LABELS),
                       sequence_cross_entropy(teacher, SEL_LABELS))  # fmt: skip
    mask = answer_positions(SEL_LABELS)
    kd = selective_kd_loss(student, teacher, mask, rows)
    assert not rows.any() and kd.item() == 0.0
    (answer_cross_entropy(student, SEL_LABELS) + kd).backward()
    with_kd = student.grad.clone()
    student.grad = None
    answer_cross_entropy(student, SEL_LABELS).backward()
    assert torch.equal(with_kd, student.grad)  # the KD term added nothing
    # the same pair without selection would pull the better student toward the worse teacher
    pulled = GOOD.clone().requires_grad_(True)
    kd_loss(pulled, teacher, mask).backward()
    assert pulled.grad.abs().sum() > 0
