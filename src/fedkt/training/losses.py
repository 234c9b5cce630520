"""Answer-only cross-entropy and knowledge-distillation losses, as pure functions.

Shapes: B batch, L sequence length, V vocabulary, N selected (answer) positions.
Logits at position i predict token i + 1, so the loss at logit position i is read against
`labels[:, i + 1]` (`answer_positions` builds that shifted mask once, for CE and KD alike).
Both losses gather the N answer positions before the softmax: the full (B, L, V) tensor is
never cast to fp32, which matters with a 49k vocabulary.

KD follows Hinton et al., "Distilling the Knowledge in a Neural Network" (arXiv 1503.02531):
T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), the T^2 keeping gradient sizes comparable
across temperatures. FedCoLLM (arXiv 2411.11707) uses it both ways on the answer tokens.
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
