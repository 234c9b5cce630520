"""Make a client student from a server LLM: cut it to its first k layers, then heal the cut.

A plain cut is broken at the output (../shared/specs/embedded-pair.md): the last kept layer's
hidden state is not what the final norm and the tied output embedding expect, so the cut model
sits at chance and LoRA cannot repair it. Healing here has two steps, both on unlabelled text:

1. **Output lens** (closed form, minutes on a CPU). Fit a linear map ``M`` from the normalised
   hidden state after layer k to the teacher's final normalised hidden state by ridge least
   squares over the teacher's own activations (the student *is* the teacher's first k layers,
   so one teacher forward gives both sides), and make ``W_E M`` the student's untied output
   head. This is the "tuned lens" of Belrose et al. (arXiv 2303.08112) folded into the model, so
   the result is a plain ``LlamaForCausalLM`` checkpoint any tool can load.
2. **Logit distillation** (optional, ``kd_tokens > 0``): train all student weights to match the
   teacher's next-token distribution, KL over the full vocabulary on every token.

The result is saved once under ``<cache>/students/`` and loaded by name
(``smollm2-135m@layers=8,healed=true``), like the GGUF conversion.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedkt.data import load_examples
from fedkt.errors import ConfigError, ModelError
from fedkt.models import keep_first_layers, load_model_and_tokenizer, student_dir
from fedkt.models.integrity import FILES, describe_files, remember_verified
from fedkt.models.student import STUDENT_MANIFEST, student_damage
from fedkt.training import kd_loss

log = logging.getLogger(__name__)

HEALING_TASKS = ("arc_easy", "arc_challenge", "openbookqa", "commonsense_qa", "ag_news", "gsm8k")
"""Train splits whose text (questions and answers, labels unused) the healing reads."""


@dataclass(frozen=True)
class HealSettings:
    """How to heal a cut student.

    Args:
        layers: decoder layers the student keeps (the first ones).
        lens_tokens: tokens of teacher activations the output lens is fitted on.
        ridge: ridge strength, relative to the mean diagonal of the normal matrix.
        kd_tokens: tokens of logit distillation after the lens (0 = lens only).
        kd_lr: learning rate of the distillation (AdamW, constant after 5 % warmup).
        batch_size: texts per forward pass.
        max_length: tokens per text.
        seed: text order.
    """

    layers: int = 8
    lens_tokens: int = 40_000
    ridge: float = 1e-3
    kd_tokens: int = 0
    kd_lr: float = 2e-4
    batch_size: int = 16
    max_length: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "layers": self.layers >= 1,
            "lens_tokens": self.lens_tokens >= 1,
            "ridge": self.ridge >= 0,
            "kd_tokens": self.kd_tokens >= 0,
            "kd_lr": self.kd_lr > 0,
            "batch_size": self.batch_size >= 1,
            "max_length": self.max_length >= 2,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise ConfigError(
                f"student settings out of range: {values}. Need layers, lens_tokens, "
                "batch_size >= 1; kd_tokens, ridge >= 0; kd_lr > 0; max_length >= 2"
            )


def make_student(
    teacher_name: str,
    settings: HealSettings,
    *,
    data_dir: Path | None,
    cache_dir: Path,
    force: bool = False,
) -> Path:
    """Build (or find in the cache) the healed student of `teacher_name`; returns its folder."""
    target = student_dir(cache_dir, teacher_name, settings.layers)
    if (target / STUDENT_MANIFEST).is_file() and not force:
        damage = student_damage(target)
        if damage is None:
            log.info("healed student found in cache: %s", target)
            return target
        log.warning("the cached student at %s is damaged (%s); building it again", target, damage)
    teacher, tokenizer = load_model_and_tokenizer(teacher_name, cache_dir=cache_dir)
    texts = healing_texts(data_dir, settings.seed)
    start = time.perf_counter()
    student = lens_student(teacher, tokenizer, texts, settings)
    report: dict[str, float] = {"lens_seconds": round(time.perf_counter() - start, 1)}
    if settings.kd_tokens:
        report |= distill(teacher, student, tokenizer, texts[::-1], settings)
    _save_atomically(student, tokenizer, target, {**asdict(settings), **report})
    return target


def healing_texts(data_dir: Path | None, seed: int) -> list[str]:
    """Unlabelled text: each train example's context followed by its reference answer."""
    texts = [
        "".join(example.training_pair())
        for task in HEALING_TASKS
        for example in load_examples(task, "train", data_dir)
    ]
    random.Random(seed).shuffle(texts)
    return texts


def lens_student(
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    settings: HealSettings,
) -> PreTrainedModel:
    """A copy of `teacher` cut to ``settings.layers`` layers with a fitted output lens head."""
    lens = fit_output_lens(teacher, tokenizer, texts, settings)
    student = keep_first_layers(_copy(teacher), settings.layers)
    embedding = cast(torch.Tensor, teacher.get_input_embeddings().weight).detach().float()
    head = nn.Linear(lens.shape[1], embedding.shape[0], bias=False)
    head.weight.data = (embedding @ lens).to(embedding.dtype)
    student.config.tie_word_embeddings = False
    student.set_output_embeddings(head.to(teacher.dtype))
    final_norm = cast(nn.Module, cast(nn.Module, student.get_decoder()).norm)
    nn.init.ones_(cast(torch.Tensor, final_norm.weight))  # the lens replaces the final norm's scale
    return student.eval()


@torch.inference_mode()
def fit_output_lens(
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    settings: HealSettings,
) -> torch.Tensor:
    """Ridge least squares ``M`` with ``final_normed_hidden ≈ M @ rms_normalise(hidden_k)``.

    Accumulates the normal equations in float64 so a few hundred thousand tokens fit in a
    (d, d) matrix; the solve itself takes milliseconds.
    """
    width = teacher.config.hidden_size
    gram = torch.zeros(width, width, dtype=torch.float64)
    cross = torch.zeros(width, width, dtype=torch.float64)
    seen = 0
    bar = tqdm(total=settings.lens_tokens, desc="fit output lens", unit="tok")
    for batch in _batches(tokenizer, texts, settings, teacher.device):
        decoder = cast(nn.Module, teacher.get_decoder())
        out = decoder(**batch, output_hidden_states=True)
        mask = batch["attention_mask"].bool()
        source = _rms_normalise(out.hidden_states[settings.layers][mask].double())
        target = out.last_hidden_state[mask].double()  # after the final norm: the head's input
        gram += source.T @ source
        cross += source.T @ target
        seen += int(mask.sum())
        bar.update(int(mask.sum()))
        if seen >= settings.lens_tokens:
            break
    bar.close()
    ridge = settings.ridge * gram.diagonal().mean()
    solution = torch.linalg.solve(gram + ridge * torch.eye(width, dtype=torch.float64), cross)
    return solution.T.float()  # (d_out, d_in): target ≈ M @ source


def distill(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    settings: HealSettings,
) -> dict[str, float]:
    """Train every student weight towards the teacher's next-token distribution."""
    student.train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=settings.kd_lr, weight_decay=0.0)
    total_steps = max(1, settings.kd_tokens // (settings.batch_size * settings.max_length // 2))
    warmup = max(1, total_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    seen, losses, start = 0, [], time.perf_counter()
    bar = tqdm(total=settings.kd_tokens, desc="distil student", unit="tok")
    for batch in _batches(tokenizer, texts, settings, student.device):
        mask = batch["attention_mask"].bool()
        with torch.no_grad():
            teacher_logits = teacher(**batch).logits
        loss = kd_loss(student(**batch).logits, teacher_logits, mask)
        loss.backward()
        nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        seen += int(mask.sum())
        bar.update(int(mask.sum()))
        bar.set_postfix(kl=f"{losses[-1]:.2f}")
        if seen >= settings.kd_tokens:
            break
    bar.close()
    student.eval()
    return {
        "kd_seconds": round(time.perf_counter() - start, 1),
        "kd_first_kl": losses[0],
        "kd_last_kl": sum(losses[-10:]) / len(losses[-10:]),
    }


def _batches(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    settings: HealSettings,
    device: torch.device,
) -> Iterator[dict[str, torch.Tensor]]:
    """Padded batches of texts, cycling over the corpus until the caller stops."""
    while True:
        for first in range(0, len(texts), settings.batch_size):
            chunk = list(texts[first : first + settings.batch_size])
            encoded = tokenizer(
                chunk,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=settings.max_length,
            )
            yield {k: v.to(device) for k, v in encoded.items() if k != "token_type_ids"}


def _rms_normalise(hidden: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)


def _copy(model: PreTrainedModel) -> PreTrainedModel:
    """A deep copy, config included, so cutting it leaves the teacher intact."""
    return copy.deepcopy(model)


def _save_atomically(
    student: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    target: Path,
    manifest: dict[str, object],
) -> None:
    """Write into a temporary sibling folder, then rename: no half-written student in the cache."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        student.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        files = describe_files(staging)
        (staging / STUDENT_MANIFEST).write_text(json.dumps({**manifest, FILES: files}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        remember_verified(target, files)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not (target / "config.json").is_file():
        raise ModelError(f"saving the student to {target} failed: no config.json was written")
