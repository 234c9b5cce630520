"""Answer-only cross-entropy and knowledge-distillation losses, as pure functions.

Shapes: B batch, L sequence length, V vocabulary, N selected (answer) positions.
Logits at position i predict token i + 1, so the loss at logit position i is read against
`labels[:, i + 1]` (`answer_positions` builds that shifted mask once, for CE and KD alike).
Both losses gather the N answer positions before the softmax: the full (B, L, V) tensor is
never cast to fp32, which matters with a 49k vocabulary.

KD follows Hinton et al., "Distilling the Knowledge in a Neural Network" (arXiv 1503.02531):
T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), the T^2 keeping gradient sizes comparable
across temperatures. FedCoLLM (arXiv 2411.11707) uses it both ways on the answer tokens.

Selective KD follows FedMKT's "min-CE" (Fan et al., arXiv 2406.17706): per example, a student
distils only where its teacher has the lower cross-entropy on the gold answer, so a model that is
better on a row is not pulled toward a worse one there (`sequence_cross_entropy`,
`min_ce_rows`, `selective_kd_loss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedkt.errors import TokenizerMismatchError
from fedkt.training.batching import IGNORE_INDEX


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) bool mask of the logit positions that predict an answer token.

    Position i is True iff `labels[:, i + 1] != -100`; the last position predicts nothing.
    Pass it as `mask` to `kd_loss` to distil exactly where the CE loss trains.
    """
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


def answer_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over answer tokens; a 0-dim fp32 tensor.

    logits: (B, L, V); labels: (B, L), aligned with input_ids, -100 where not learned.
        loss = -(1/N) * sum_{b, i : labels[b, i+1] != -100}
                        log_softmax(logits[b, i])[labels[b, i+1]]
    Every answer token of the batch weighs the same (not every sequence).
    """
    _check_leading_dims(logits, labels, "labels")
    mask = answer_positions(labels)
    _check_not_empty(mask, "answer_cross_entropy: labels")
    picked = logits[mask].float()  # (N, V)
    targets = labels[:, 1:][mask[:, :-1]]  # (N,)
    return F.cross_entropy(picked, targets)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> torch.Tensor:
    """T^2 * KL(teacher || student) averaged over the masked positions; a 0-dim fp32 tensor.

    student_logits, teacher_logits: (B, L, V) over the same input ids; mask: (B, L), true at
    the logit positions to distil (use `answer_positions(labels)`). With p_t = softmax(z_t / T)
    and p_s = softmax(z_s / T) at each of the N masked positions:
        loss = T^2 / N * sum_n sum_v p_t[n, v] * (log p_t[n, v] - log p_s[n, v])
    The teacher is detached here, so gradients reach the student only; for mutual
    distillation call it twice with the roles swapped.

    top_k=None (default) uses the full vocabulary: exact. top_k=k keeps, per position, the
    teacher's k most likely token ids, gathers both models' logits there and renormalises
    both softmaxes over those k ids (what travels when teachers send top-k logits; k >= V
    equals the full loss).
    """
    if temperature <= 0:
        raise ValueError(f"kd_loss temperature must be > 0, got {temperature}.")
    if top_k is not None and top_k < 1:
        raise ValueError(f"kd_loss top_k must be None or >= 1, got {top_k}.")
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise TokenizerMismatchError(
            f"kd_loss: student vocabulary {student_logits.shape[-1]} != teacher vocabulary "
            f"{teacher_logits.shape[-1]}; distil only between models sharing one tokenizer."
        )
    _check_leading_dims(student_logits, teacher_logits, "teacher_logits")
    _check_leading_dims(student_logits, mask, "mask")
    positions = mask.bool()
    _check_not_empty(positions, "kd_loss: mask")
    student = student_logits[positions].float() / temperature  # (N, V)
    teacher = teacher_logits.detach()[positions].float() / temperature  # (N, V)
    if top_k is not None and top_k < teacher.shape[-1]:
        ids = teacher.topk(top_k, dim=-1).indices  # (N, k)
        student, teacher = student.gather(-1, ids), teacher.gather(-1, ids)
    log_p_student = F.log_softmax(student, dim=-1)
    log_p_teacher = F.log_softmax(teacher, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(-1)
    return temperature**2 * kl.mean()


def sequence_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) fp32: each row's mean next-token cross-entropy over its own answer tokens.

    The per-example form of `answer_cross_entropy` (same shift and mask): row b gets
        ce[b] = -(1/N_b) * sum_{i in A_b} log_softmax(logits[b, i])[labels[b, i+1]]
    with A_b = {i : labels[b, i+1] != -100} and N_b = |A_b|.
    A row without answer tokens gets 0 (it has no KD position either). Used to rank two models
    per example, so a long answer does not outweigh a short one.
    """
    _check_leading_dims(logits, labels, "labels")
    mask = answer_positions(labels)
    rows = mask.nonzero()[:, 0]  # (N,) the row of each answer position
    token_ce = F.cross_entropy(logits[mask].float(), labels[:, 1:][mask[:, :-1]], reduction="none")
    total = torch.zeros(labels.shape[0], device=logits.device).index_add_(0, rows, token_ce)
    return total / mask.sum(dim=1).clamp(min=1)


def min_ce_rows(student_ce: torch.Tensor, teacher_ce: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the rows where the teacher's gold-answer CE is strictly below the student's.

    FedMKT's min-CE selection for one direction: the student distils from the teacher only on
    these rows. A tie selects nothing: neither model is the better one there.
    """
    if student_ce.shape != teacher_ce.shape or student_ce.dim() != 1:
        raise ValueError(
            f"min_ce_rows expects two (B,) tensors; got {tuple(student_ce.shape)} and "
            f"{tuple(teacher_ce.shape)}."
        )
    return teacher_ce < student_ce


def selective_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    rows: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> torch.Tensor:
    """`kd_loss` on the selected rows only, still averaged over all N masked positions.

    rows: (B,) bool, the examples to distil (e.g. `min_ce_rows`). With M the masked positions
    of the selected rows,
        loss = (1/N) * sum_{n in M} T^2 * KL_n = kd_loss(rows' positions) * |M| / N,
    so a distilled token weighs the same whatever share of the batch is selected. All rows
    selected is exactly `kd_loss`; none selected is a zero with no gradient to the student.
    """
    _check_leading_dims(student_logits, mask, "mask")
    if rows.shape != mask.shape[:1]:
        raise ValueError(f"rows must be (B,) = {tuple(mask.shape[:1])}; got {tuple(rows.shape)}.")
    positions = mask.bool()
    _check_not_empty(positions, "selective_kd_loss: mask")
    kept = positions & rows.bool()[:, None]
    if not bool(kept.any()):
        return torch.zeros((), device=student_logits.device)
    loss = kd_loss(student_logits, teacher_logits, kept, temperature=temperature, top_k=top_k)
    return loss * (kept.sum() / positions.sum())


def _check_leading_dims(logits: torch.Tensor, other: torch.Tensor, name: str) -> None:
    if logits.dim() != 3 or logits.shape[:2] != other.shape[:2]:
        raise ValueError(
            f"expected logits (B, L, V) and {name} with the same (B, L); got "
            f"{tuple(logits.shape)} and {tuple(other.shape)}."
        )


def _check_not_empty(mask: torch.Tensor, name: str) -> None:
    if not bool(mask.any()):
        raise ValueError(
            f"{name} selects no position, so the mean is undefined; check that the batch "
            "was built with encode_answer_only (every sequence ends with a labelled EOS)."
        )
