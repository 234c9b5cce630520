"""The fine-tuning loop: AdamW, linear warmup + cosine decay, clipping, bf16 (fp16 with loss
scaling where a GPU has no bf16).

Two entry points share it: `train_answer_only` (one task) and `train_multitask` (FedCoT's
predict + explain, "distilling step-by-step", Hsieh et al., arXiv 2305.02301); they differ
only in the sequences of a training unit and the task weights. One loop for LoRA
(`peft.PeftModel`) and full fine-tuning alike: the optimiser sees only the
parameters that require grad. Defaults are FedCoLLM's (arXiv 2411.11707, with the FedMKT
appendix): lr 3e-4 (small SLM), batch 4, AdamW betas (0.9, 0.95), weight decay 0.1, warmup
0.8 %, cosine schedule, clip 1.0, max length 512.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_cosine_schedule_with_warmup, set_seed

from fedkt.data import Example
from fedkt.errors import ConfigError, DataError, ModelError
from fedkt.training.batching import IGNORE_INDEX, collate, encode_answer_only
from fedkt.training.losses import answer_cross_entropy, answer_positions

Batch = dict[str, torch.Tensor]
_MEGABATCH = 50  # length grouping sorts within windows of 50 batches, like HF's sampler


@dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters of `train_answer_only` and `train_multitask`.

    Args:
        epochs: passes over the examples.
        lr: peak learning rate (FedCoLLM: 3e-4 for a small SLM, 3e-5 for the LLM).
        batch_size: sequences per forward pass.
        grad_accum: forward passes per optimiser step.
        warmup_ratio: share of the optimiser steps spent in linear warmup (ceil, as HF).
        weight_decay: AdamW decay, applied to matrices only (not to norms or biases).
        betas: AdamW betas.
        max_grad_norm: global L2 norm the gradients are clipped to.
        max_length: tokens per sequence; longer contexts are cut from the left.
        seed: seeds dropout and the shuffling of the examples.
        max_steps: stop after this many optimiser steps (None: run all epochs).
        group_by_length: batch sequences of similar length (less padding, faster on CPU);
            batches are still drawn in a seeded random order.
    """

    epochs: int = 1
    lr: float = 3e-4
    batch_size: int = 4
    grad_accum: int = 1
    warmup_ratio: float = 0.008
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: float = 1.0
    max_length: int = 512
    seed: int = 0
    max_steps: int | None = None
    group_by_length: bool = True

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "lr": self.lr > 0,
            "batch_size": self.batch_size >= 1,
            "grad_accum": self.grad_accum >= 1,
            "warmup_ratio": 0 <= self.warmup_ratio < 1,
            "weight_decay": self.weight_decay >= 0,
            "betas": len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "max_grad_norm": self.max_grad_norm > 0,
            "max_length": self.max_length >= 2,
            "max_steps": self.max_steps is None or self.max_steps >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise ConfigError(
                f"TrainSettings: out of range: {values}. Need epochs, batch_size, grad_accum, "
                "max_steps >= 1; lr, max_grad_norm > 0; 0 <= warmup_ratio < 1; "
                "weight_decay >= 0; betas two values in [0, 1); max_length >= 2."
            )


@dataclass(frozen=True)
class TrainReport:
    """What one training call did; `losses` holds one mean loss per optimiser step.

    `task_losses` is filled by `train_multitask` only: per task ("predict", "explain"), its
    unweighted cross-entropy per optimiser step (nan for a step without that task).
    """

    steps: int
    tokens: int  # non-pad tokens seen by forward passes
    answer_tokens: int  # tokens the loss was computed on
    seconds: float
    tokens_per_s: float
    losses: list[float]
    task_losses: dict[str, list[float]] = field(default_factory=dict)

    @property
    def first_loss(self) -> float:
        return self.losses[0] if self.losses else math.nan

    @property
    def last_loss(self) -> float:
        return self.losses[-1] if self.losses else math.nan


@dataclass(frozen=True)
class _Task:
    """One training objective: its name in the report and its weight in the step loss."""

    name: str
    weight: float


# A training unit is one question: its sequences, each tagged with the index of its _Task.
# Sequences of one unit always share a forward pass and an optimiser step.
_Unit = list[tuple[int, Example]]
_EncodedUnit = list[tuple[int, dict[str, list[int]]]]


def train_answer_only(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    settings: TrainSettings,
    *,
    progress: bool = True,
) -> TrainReport:
    """Fine-tune `model` in place on the answers of `examples` (cross-entropy on answer + EOS).

    Only parameters with `requires_grad` are optimised, so a LoRA model trains its adapter and
    nothing else. Runs under bf16 autocast when the model is fp32 on a device with native bf16
    (fp32 master weights, mixed-precision compute); a bf16 model runs as it is, and an fp16
    one (`pick_dtype` on a GPU without bf16) with dynamic loss scaling (`grad_scaler`). Seeds torch,
    numpy and random with `transformers.set_seed` (dropout, as the HF Trainer does) and shuffles
    with its own seeded generator. Leaves the model in eval mode.
    """
    if not examples:
        raise DataError("train_answer_only got no examples; pass at least one Example.")
    units: list[_Unit] = [[(0, example)] for example in examples]
    return _fit(model, tokenizer, units, (_Task("answer", 1.0),), settings, progress)


def train_multitask(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    predict: Sequence[Example],
    explain: Sequence[Example],
    alpha: float,
    settings: TrainSettings,
    *,
    progress: bool = True,
) -> TrainReport:
    """Distilling step-by-step: fine-tune on ``alpha * CE_explain + (1 - alpha) * CE_predict``.

    `predict` holds one example per question (`fedkt.data.cot.predict_example`), `explain` at
    most one per question (`explain_example`), paired with its predict example by id; a
    question whose rationale was filtered out has no explain example and contributes the
    predict loss only. Both CEs are over answer tokens + EOS, as in `train_answer_only`.

    Batches are drawn over questions (`settings.batch_size` questions per forward pass), and
    a question's predict and explain sequences sit in the same padded batch, so one forward
    pass serves both tasks. For each forward pass, CE_predict is the mean over the predict
    answer tokens of the batch and CE_explain the mean over its rationale tokens; a batch
    without any rationale has no explain term (its loss is ``(1 - alpha) * CE_predict``: the
    weights are not renormalised, so a predict token weighs the same in every batch). As in
    `train_answer_only`, an optimiser step averages the losses of its `grad_accum` batches.

    A task with weight 0 is not encoded at all: alpha = 0 is exactly `train_answer_only` on
    `predict` (same batches, same seed, same losses), and alpha = 1 trains only the questions
    that have a rationale. `TrainReport.task_losses` holds both unweighted CEs per step.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(
            f"train_multitask: alpha={alpha!r} must be in [0, 1] (the weight of the explain "
            "loss; FedCoT uses 0.5)."
        )
    tasks = (_Task("predict", 1.0 - alpha), _Task("explain", alpha))
    units = [unit for unit in _question_units(predict, explain, tasks) if unit]
    if not units:
        raise DataError(
            f"train_multitask got no examples to train on ({len(predict)} predict, "
            f"{len(explain)} explain, alpha={alpha}); pass predict examples, and explain "
            "examples when alpha = 1."
        )
    return _fit(model, tokenizer, units, tasks, settings, progress)


def _question_units(
    predict: Sequence[Example], explain: Sequence[Example], tasks: tuple[_Task, _Task]
) -> list[_Unit]:
    """One unit per predict example, in order: (0, predict) and (1, its explain), by id.

    Sequences of a zero-weight task are left out, so they cost nothing.
    """
    by_id = _unique_ids(explain, "explain")
    unknown = by_id.keys() - _unique_ids(predict, "predict").keys()
    if unknown:
        raise DataError(
            f"train_multitask: explain examples {sorted(unknown)[:5]} have no predict example "
            "with the same id; build both from the same questions (fedkt.data.cot)."
        )
    units: list[_Unit] = []
    for example in predict:
        pair = [(0, example)] + ([(1, by_id[example.id])] if example.id in by_id else [])
        units.append([(task, ex) for task, ex in pair if tasks[task].weight > 0])
    return units


def _unique_ids(examples: Sequence[Example], name: str) -> dict[str, Example]:
    by_id = {example.id: example for example in examples}
    if len(by_id) != len(examples):
        raise DataError(
            f"train_multitask: the {name} examples repeat an id; give each question one "
            "unique id, since predict and explain are paired by it."
        )
    return by_id


def _fit(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    units: list[_Unit],
    tasks: tuple[_Task, ...],
    settings: TrainSettings,
    progress: bool,
) -> TrainReport:
    """The one training loop: AdamW, warmup + cosine, autocast, accumulation, clipping."""
    if tokenizer.pad_token_id is None:
        raise ModelError(
            f"tokenizer {tokenizer.name_or_path!r} has no pad token; set one "
            "(fedkt.models.load_tokenizer always does) before training."
        )
    set_seed(settings.seed)
    encoded = [
        [
            (task, encode_answer_only(tokenizer, *ex.training_pair(), settings.max_length))
            for task, ex in unit
        ]
        for unit in units
    ]
    total_steps = _total_steps(len(encoded), settings)
    optimizer = _adamw(model, settings)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, math.ceil(settings.warmup_ratio * total_steps), total_steps
    )
    device = next(model.parameters()).device
    autocast = _autocast(model, device)
    scaler = grad_scaler(model)
    weights = [task.weight for task in tasks]
    losses: list[float] = []
    per_task: list[list[float]] = [[] for _ in tasks]
    tokens = answer_tokens = 0
    start = time.perf_counter()
    model.train()
    try:
        with tqdm(total=total_steps, desc="train", disable=not progress) as bar:
            for group in _step_groups(encoded, settings, tokenizer.pad_token_id, total_steps):
                batches = [{k: v.to(device) for k, v in b.items()} for b in group]
                loss, task_ces = _train_step(
                    model, batches, optimizer, settings, (autocast, scaler), weights
                )
                losses.append(loss)
                for history, ce in zip(per_task, task_ces, strict=True):
                    history.append(ce)
                scheduler.step()
                tokens += sum(int(b["attention_mask"].sum()) for b in batches)
                answer_tokens += sum(int(answer_positions(b["labels"]).sum()) for b in batches)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                bar.update()
    finally:
        model.eval()
    seconds = time.perf_counter() - start
    return TrainReport(
        steps=len(losses),
        tokens=tokens,
        answer_tokens=answer_tokens,
        seconds=seconds,
        tokens_per_s=tokens / seconds if seconds > 0 else 0.0,
        losses=losses,
        # One task's CE is `losses` itself; only a multi-task run reports them apart.
        task_losses={t.name: h for t, h in zip(tasks, per_task, strict=True)}
        if len(tasks) > 1
        else {},
    )


def _total_steps(n_units: int, settings: TrainSettings) -> int:
    """Optimiser steps of the run: whole epochs, a last partial accumulation group included."""
    per_epoch = math.ceil(math.ceil(n_units / settings.batch_size) / settings.grad_accum)
    total = per_epoch * settings.epochs
    return total if settings.max_steps is None else min(total, settings.max_steps)


def _train_step(
    model: nn.Module,
    batches: list[Batch],
    optimizer: torch.optim.Optimizer,
    settings: TrainSettings,
    precision: tuple[contextlib.AbstractContextManager[None], torch.amp.GradScaler],
    weights: list[float],
) -> tuple[float, list[float]]:
    """One optimiser step over `batches` (gradient accumulation).

    Returns the step's loss (the mean of the batches' weighted losses) and, per task, the
    mean of its unweighted CE over the batches that hold it (nan if none does). Each forward
    pass contributes its `_task_loss` / len(batches). Labels are not passed to the model:
    `answer_cross_entropy` does the shift and the answer-token mean. Only the forward pass
    runs under autocast; backward follows the forward's dtypes. The scaler (a no-op unless
    the model computes in fp16) scales each backward and unscales before clipping.
    """
    autocast, scaler = precision
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    task_ces: list[list[float]] = [[] for _ in weights]
    for batch in batches:
        with autocast:
            logits = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                use_cache=False,
            ).logits
            loss, ces = _task_loss(logits, batch["labels"], batch["task"], weights)
            loss = loss / len(batches)
        scaler.scale(loss).backward()
        total += loss.item()
        for history, ce in zip(task_ces, ces, strict=True):
            if ce is not None:
                history.append(ce)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
    scaler.step(optimizer)  # skipped (and the scale lowered) if a gradient overflowed
    scaler.update()
    return total, [sum(h) / len(h) if h else math.nan for h in task_ces]


def _task_loss(
    logits: torch.Tensor, labels: torch.Tensor, task: torch.Tensor, weights: list[float]
) -> tuple[torch.Tensor, list[float | None]]:
    """sum_t weights[t] * CE_t over one batch, and each CE_t (None for a task not in it).

    logits (B, L, V), labels (B, L), task (B,): row b belongs to task `task[b]`. CE_t is the
    answer-token mean over the rows of task t, read from the shared logits by masking the
    other rows' labels (no copy of the logits). Tasks absent from the batch add no term.
    """
    loss: torch.Tensor | None = None
    ces: list[float | None] = []
    for index, weight in enumerate(weights):
        rows = task == index
        if weight == 0 or not bool(rows.any()):
            ces.append(None)
            continue
        ce = answer_cross_entropy(logits, labels.masked_fill(~rows[:, None], IGNORE_INDEX))
        ces.append(ce.item())
        loss = ce * weight if loss is None else loss + ce * weight
    if loss is None:
        raise DataError("a training batch holds no sequence of a task with weight > 0.")
    return loss, ces


def _adamw(model: nn.Module, settings: TrainSettings) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; matrices decay, vectors (norms, biases) do not."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ModelError(
            "training: the model has no trainable parameters; add a LoRA adapter "
            "(fedkt.models.add_lora) or unfreeze the weights to fine-tune."
        )
    groups = [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": settings.weight_decay},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=settings.lr, betas=settings.betas
    )


def _step_groups(
    encoded: list[_EncodedUnit], settings: TrainSettings, pad_id: int, total_steps: int
) -> Iterator[list[Batch]]:
    """Yield the padded batches of each optimiser step, epoch after epoch, `total_steps` in all.

    A batch holds every sequence of its units; a unit's length (for grouping) is that of its
    longest sequence, the width it pads its batch to.
    """
    generator = torch.Generator().manual_seed(settings.seed)
    lengths = [max(len(item["input_ids"]) for _, item in unit) for unit in encoded]
    steps = 0
    for _ in range(settings.epochs):
        order = _epoch_batches(lengths, settings, generator)
        for start in range(0, len(order), settings.grad_accum):
            if steps == total_steps:
                return
            chunk = order[start : start + settings.grad_accum]
            yield [_collate_units([encoded[i] for i in batch], pad_id) for batch in chunk]
            steps += 1


def _collate_units(units: list[_EncodedUnit], pad_id: int) -> Batch:
    """`collate` of all the units' sequences, plus ``task`` (B,): each row's task index."""
    rows = [row for unit in units for row in unit]
    batch = collate([item for _, item in rows], pad_id)
    batch["task"] = torch.tensor([task for task, _ in rows], dtype=torch.long)
    return batch


def _epoch_batches(
    lengths: list[int], settings: TrainSettings, generator: torch.Generator
) -> list[list[int]]:
    """Index batches for one epoch: a seeded shuffle, optionally grouped by length.

    Grouping sorts each window of `_MEGABATCH` batches by length before cutting it into batches
    (so similar lengths share a batch), then shuffles the batch order again.
    """
    size = settings.batch_size
    order = torch.randperm(len(lengths), generator=generator).tolist()
    if not settings.group_by_length:
        return [order[i : i + size] for i in range(0, len(order), size)]
    window = size * _MEGABATCH
    batches: list[list[int]] = []
    for w in range(0, len(order), window):
        ranked = sorted(order[w : w + window], key=lambda i: lengths[i], reverse=True)
        batches += [ranked[i : i + size] for i in range(0, len(ranked), size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def grad_scaler(*models: nn.Module) -> torch.amp.GradScaler:
    """A dynamic loss scaler, enabled only when a model computes in fp16 and trains fp32 weights.

    fp16 has 5 exponent bits: small gradients flowing back through fp16 activations underflow
    to 0 unless the loss is scaled up first (bf16 has fp32's range and needs no scaling). peft
    keeps a LoRA adapter in fp32 over an fp16 base, which is the case this serves. Trainable
    fp16 weights cannot be unscaled (torch refuses), so they keep today's unscaled path.
    Disabled, the scaler is the identity: `scale` returns the loss, `step` just steps.
    """
    params = [p for model in models for p in model.parameters()]
    device = params[0].device if params else torch.device("cpu")
    fp16 = any(p.dtype == torch.float16 for p in params)
    trainable_fp32 = all(p.dtype == torch.float32 for p in params if p.requires_grad)
    return torch.amp.GradScaler(device.type, enabled=fp16 and trainable_fp32)


def _autocast(model: nn.Module, device: torch.device) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast for an fp32 model on a device with native bf16, else a no-op."""
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    if dtype == torch.float32 and _native_bf16(device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # No public CPU query exists; this is the check torch's own oneDNN bf16 paths use.
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False
