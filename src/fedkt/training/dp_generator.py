"""DP-SGD fine-tuning of a client's text generator (FDKT, Li et al., arXiv 2405.14212, step 2).

DP-SGD (Abadi et al., arXiv 1607.00133) through opacus: every step draws a Poisson batch
(each row independently with probability q, opacus's `DPDataLoader` /
`UniformWithReplacementSampler`), clips each row's gradient to L2 norm C
(`max_grad_norm`), sums, adds N(0, (sigma C)^2) noise and divides by the expected batch
size. sigma is solved for the target (eps, delta) (`fedkt.privacy.accounting`), and the
accountant of the run reports the eps actually spent. The trained model (and any text sampled
from it) is then (eps, delta)-DP for the client's whole private set with respect to adding or
removing one row, by the RDP accountant of the subsampled Gaussian mechanism.

What the FATE-LLM reference got wrong and this does not repeat: its samples lacked EOS and
its loss covered the padding (here every row ends with EOS, a label, and pads are label
-100); it discarded opacus's Poisson loader, so its eps was nominal (here the loader opacus
trains with is checked to be Poisson-sampled, at the rate the accountant records).

Choices measured (bench/dp_generator.py -> bench/results/dp_generator.json; the 8-layer
SmolLM2 student, 64 AG News rows, sequences <= 64 tokens, expected batch 8, 1 epoch, fp32 on
2 shared CPU cores, so the times are indicative):

    setup        trainable   s/step   1 epoch x 1000 rows   peak RSS
    LoRA, hooks   0.65 M     21.5      45 min               2.0 GiB
    LoRA, ghost   0.65 M     36.0*     75 min               2.1 GiB
    full, hooks  84.9 M      34.5      72 min               7.7 GiB
    full, ghost  84.9 M      21.9      46 min               2.8 GiB
    (* measured while other tests ran on the same cores: inflated)

The default is LoRA (r=8, all-linear, added by the caller with `fedkt.models.add_lora`) with
opacus's hooks: the fastest measured, the smallest memory, and it adds noise in 0.65 M
dimensions instead of 85 M (the noise norm grows with sqrt(d), the clipped signal does not;
Yu et al., arXiv 2110.06500, find DP LoRA at least as good as DP full fine-tuning). Per-row
gradients of an adapter are tiny, so hooks need no ghost clipping, whose second backward pass
only costs time here. Full fine-tuning is feasible with ghost clipping (`grad_sample_mode=
"ghost"`: per-row norms without per-row gradients, Li et al., arXiv 2110.05679): as fast and
within 3 GiB, where hooks hold one 340 MB gradient per row (7.7 GiB at batches of <= 13 rows
of 64 tokens; an expected batch of 64 would not fit 24 GiB). Ghost clipping cannot train tied
embeddings (opacus refuses); the SmolLM2 students are untied. Both modes clip the same
per-row gradients: in the bench their losses agree step for step.

Batch size: at N = 1000 rows, eps 3, delta 1e-5, one epoch, the noise on each averaged
gradient coordinate, sigma / (q N), is 0.087 at an expected batch of 8 and 0.015 at 64, for
the same compute per epoch (fewer, larger steps). In the bench (batch 8) the loss did not fall
within 8 steps; choose the batch and epochs by a utility run before the paper's sweeps.

The per-row loss is the mean cross-entropy over that row's own tokens, and the batch loss the
mean over rows: a row's clipped gradient then depends on that row alone (a token mean over
the whole batch would scale every row by the others' lengths). An empty Poisson batch still
takes its step (pure noise, counted by the accountant) through a one-token row with no label.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset
from transformers import PreTrainedTokenizerBase

from fedkt.errors import ConfigError, DataError, ModelError
from fedkt.privacy.accounting import (
    check_target,
    epsilon_spent,
    noise_for_target,
    poisson_schedule,
)
from fedkt.privacy.randomness import secure_generator
from fedkt.training.batching import IGNORE_INDEX

if TYPE_CHECKING:
    from opacus import PrivacyEngine

# opacus is imported where it is used: it takes seconds to import, and most runs that import
# `fedkt.training` never train with DP.

GRAD_SAMPLE_MODES = ("hooks", "ghost")

SECURE_NOISE = (
    "torch.Generator whose whole state is drawn from secrets (fedkt.privacy.secure_generator; "
    "a Mersenne Twister, not a CSPRNG): opacus's secure_mode needs torchcsprng, which does not "
    "install with torch 2.13"
)
SEEDED_NOISE = "torch.Generator from the caller (seeded simulation: reproducible, not secret)"


@dataclass(frozen=True)
class DPSettings:
    """DP-SGD fine-tuning of the generator (FDKT reference defaults: eps 3, delta 1e-5, 1 epoch).

    Args:
        target_epsilon: the budget eps for the whole run; ``inf`` runs the same clipped
            pipeline without noise (FDKT's eps = inf point), reporting eps = inf.
        delta: must be below 1/N for N private rows (refused otherwise).
        epochs: expected passes over the rows (steps = epochs * round(N / batch_size)).
        batch_size: the expected Poisson batch; the sample rate is ~ batch_size / N.
        lr: Adam learning rate (constant).
        max_grad_norm: per-row clipping norm C.
        max_length: tokens per row, EOS included; a longer row is cut and loses its EOS.
        grad_sample_mode: opacus per-sample gradients: "hooks" (materialised per-row
            gradients, any trainable layer, tied embeddings included) or "ghost" (ghost
            clipping: norms without per-row gradients, two backward passes; no tied weights).
    """

    target_epsilon: float = 3.0
    delta: float = 1e-5
    epochs: int = 1
    batch_size: int = 8
    lr: float = 5e-4
    max_grad_norm: float = 1.0
    max_length: int = 128
    grad_sample_mode: str = "hooks"

    def __post_init__(self) -> None:
        checks = {
            "target_epsilon": self.target_epsilon > 0,
            "delta": 0 < self.delta < 1,
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "max_grad_norm": self.max_grad_norm > 0,
            "max_length": self.max_length >= 2,
            "grad_sample_mode": self.grad_sample_mode in GRAD_SAMPLE_MODES,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise ConfigError(
                f"DPSettings: out of range: {values}. Need target_epsilon > 0 (inf: no noise); "
                "0 < delta < 1/N; epochs, batch_size >= 1; lr, max_grad_norm > 0; "
                f"max_length >= 2; grad_sample_mode one of {GRAD_SAMPLE_MODES}."
            )


@dataclass(frozen=True)
class DPReport:
    """What one DP training run did and what it spent.

    `epsilon` is the accountant's eps for the run at `delta` (opacus RDP accountant; inf when
    no noise was added); `batch_sizes` are the Poisson batch sizes the run drew, one per step.
    """

    epsilon: float
    delta: float
    target_epsilon: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    epochs: int
    n_rows: int
    max_grad_norm: float
    grad_sample_mode: str
    poisson: bool
    noise_source: str
    seconds: float
    trainable_params: int
    truncated_rows: int  # rows cut at max_length (they end without EOS)
    batch_sizes: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.steps if self.steps else math.nan


def train_generator_dp(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    settings: DPSettings,
    *,
    generator: torch.Generator | None,
) -> DPReport:
    """Fine-tune `model` in place with DP-SGD on `texts` (each + EOS), whole text learned.

    `texts` are the formatted private rows (`fedkt.data.synthetic.format_sample`), one row
    each: the privacy unit. Only parameters with `requires_grad` train (a LoRA model trains its
    adapter). `generator` seeds the Poisson sampling and the noise: pass one seeded from the
    config in a simulation (reproducible); None draws its seeds with `secrets` (see
    `DPReport.noise_source`). Refuses (`ConfigError`) eps <= 0 and delta >= 1/N. The model is
    left in eval mode, free of opacus's hooks and attributes.
    """
    if not texts:
        raise DataError("train_generator_dp got no texts; pass the client's formatted rows.")
    n_rows = len(texts)
    check_target(settings.target_epsilon, settings.delta, n_rows)
    from opacus import PrivacyEngine
    from opacus.data_loader import DPDataLoader

    pad_id, eos_id = _special_ids(tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    _check_trainable(params)
    dataset, truncated = _encode(tokenizer, texts, settings.max_length, pad_id, eos_id)
    sample_rate, steps = poisson_schedule(n_rows, settings.batch_size, settings.epochs)
    sigma = noise_for_target(
        settings.target_epsilon, settings.delta, sample_rate, steps, n_rows=n_rows
    )
    device = params[0].device
    sampling, noise = _generators(generator, device)
    loader = DPDataLoader(dataset, sample_rate=sample_rate, generator=sampling)
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    model.train()  # opacus validates a model in training mode
    with warnings.catch_warnings():
        # "Secure RNG turned off": said once in DPReport.noise_source instead.
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        engine = PrivacyEngine(accountant="rdp")
        # poisson_sampling=False: the loader is already opacus's Poisson loader, built here so
        # that its sampler draws from our generator (make_private would use torch's global
        # RNG outside secure_mode). `_check_poisson` verifies what opacus returns.
        private = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=sigma,
            max_grad_norm=settings.max_grad_norm,
            poisson_sampling=False,
            noise_generator=noise,
            grad_sample_mode=settings.grad_sample_mode,
            criterion=nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX),
            wrap_model=False,
        )
    if settings.grad_sample_mode == "ghost":
        hooks, dp_optimizer, criterion, dp_loader = private
    else:
        (hooks, dp_optimizer, dp_loader), criterion = private, None
    _check_poisson(dp_loader, sample_rate)
    losses: list[float] = []
    batch_sizes: list[int] = []
    start = time.perf_counter()
    try:
        for _ in range(settings.epochs):
            for input_ids, attention_mask, labels in dp_loader:
                batch_sizes.append(int(input_ids.shape[0]))
                batch = _trim(input_ids, attention_mask, labels, pad_id)
                dp_optimizer.zero_grad(set_to_none=True)
                with warnings.catch_warnings():
                    # A frozen embedding feeds the first adapted layers inputs that need no
                    # grad; torch then warns, every backward, that a full backward hook sees
                    # outputs only, which is all opacus's hooks need.
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    loss = _step_loss(model, [t.to(device) for t in batch], criterion)
                losses.append(loss)
                dp_optimizer.step()
    finally:
        model.eval()
        dp_optimizer.zero_grad(set_to_none=True)
        hooks.cleanup()
    seconds = time.perf_counter() - start
    _check_accounting(engine, sigma, sample_rate, len(batch_sizes), steps)
    return DPReport(
        epsilon=_spent(engine, sigma, settings.delta),
        delta=settings.delta,
        target_epsilon=settings.target_epsilon,
        noise_multiplier=sigma,
        sample_rate=sample_rate,
        steps=len(batch_sizes),
        epochs=settings.epochs,
        n_rows=n_rows,
        max_grad_norm=settings.max_grad_norm,
        grad_sample_mode=settings.grad_sample_mode,
        poisson=True,
        noise_source=_noise_source(generator, sigma),
        seconds=seconds,
        trainable_params=sum(p.numel() for p in params),
        truncated_rows=truncated,
        batch_sizes=batch_sizes,
        losses=losses,
    )


def sequence_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row mean next-token cross-entropy over the row's labelled tokens, shape (B,).

    logits (B, L, V), labels (B, L) aligned with the inputs (`labels[i]` is predicted by the
    logits at `i - 1`); -100 labels (pads) count neither in the sum nor in the row's count.
    A row without labels has loss 0.
    """
    shifted = labels[:, 1:]
    per_token = F.cross_entropy(
        logits[:, :-1].transpose(1, 2).float(),
        shifted,
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )  # (B, L-1)
    counts = (shifted != IGNORE_INDEX).sum(dim=1).clamp(min=1)
    return per_token.sum(dim=1) / counts


def _step_loss(model: nn.Module, batch: list[torch.Tensor], criterion: object | None) -> float:
    """Forward and backward of one Poisson batch; returns the batch's mean row loss.

    Hooks mode: loss = mean of the rows' losses (opacus's loss_reduction="mean" multiplies the
    backprops by B to get each row's own gradient). Ghost mode: opacus's criterion wrapper
    takes the flattened logits and does its two backward passes itself, with the same per-row
    token mean (cross-entropy with ignore_index, divided by the row's labelled tokens).
    """
    input_ids, attention_mask, labels = batch
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    if criterion is None:
        per_row = sequence_cross_entropy(logits, labels)
        loss = per_row.mean()
        loss.backward()
        return float(per_row.detach().mean())
    shifted = logits[:, :-1].float()
    loss_wrapper = criterion(  # type: ignore[operator]
        shifted.reshape(-1, shifted.shape[-1]), labels[:, 1:].reshape(-1), shape=shifted.shape
    )
    loss_wrapper.backward()
    return float(loss_wrapper.loss_per_sample.detach().mean())


def _encode(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    pad_id: int,
    eos_id: int,
) -> tuple[TensorDataset, int]:
    """Right-padded (input_ids, attention_mask, labels) for every text + EOS, and the count of
    rows cut at `max_length` (those keep their first `max_length` tokens and no EOS).

    Labels are the input ids on real tokens (the label prefix included: the generator learns
    the whole sample) and -100 on pads, found by position, so a pad id equal to EOS is fine.
    """
    rows: list[list[int]] = []
    truncated = 0
    for index, text in enumerate(texts):
        ids = list(tokenizer(text)["input_ids"])
        if not ids or not text.strip():
            raise DataError(f"train_generator_dp: text {index} is empty; drop it before training.")
        if len(ids) + 1 <= max_length:
            rows.append([*ids, eos_id])
        else:
            rows.append(ids[:max_length])
            truncated += 1
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        labels[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    return TensorDataset(input_ids, attention_mask, labels), truncated


def _trim(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut the batch to its longest row; an empty batch becomes one pad token with no label.

    Models cannot run a batch of 0 rows, but the step must still happen (its noise is part of
    the mechanism the accountant counts). The stand-in row (two pads) has no label, so its
    loss and gradient are 0 and the step adds noise only: exactly the empty batch's update.
    """
    if input_ids.shape[0] == 0:
        # Two tokens, so the shifted logits are not empty (ghost clipping reshapes them).
        ones = torch.ones((1, 2), dtype=torch.long)
        return ones * pad_id, ones, torch.full((1, 2), IGNORE_INDEX, dtype=torch.long)
    width = int(attention_mask.sum(dim=1).max())
    return input_ids[:, :width], attention_mask[:, :width], labels[:, :width]


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos_id is None:
        raise ModelError(
            f"tokenizer {tokenizer.name_or_path!r} has no EOS token, so the generator cannot "
            "learn to stop; set tokenizer.eos_token before training."
        )
    return (eos_id if pad_id is None else pad_id), eos_id


def _check_trainable(params: list[nn.Parameter]) -> None:
    if not params:
        raise ModelError(
            "train_generator_dp: the model has no trainable parameters; add a LoRA adapter "
            "(fedkt.models.add_lora) or unfreeze the weights."
        )
    low = sorted({str(p.dtype) for p in params if p.dtype != torch.float32})
    if low:
        raise ModelError(
            f"train_generator_dp: trainable parameters in {low}; DP noise and Adam updates need "
            "fp32 weights: load the model with dtype=torch.float32 (LoRA adapters are fp32 "
            "by default on any base)."
        )


def _generators(
    generator: torch.Generator | None, device: torch.device
) -> tuple[torch.Generator, torch.Generator]:
    """(Poisson sampling, noise) generators: seeded from ``generator`` in a simulation, else
    with their whole state from `secrets` (a CPU generator seeded with 64 secret bits keeps
    only 32 of them: the server could replay every seed)."""
    if generator is None:
        return secure_generator(), secure_generator(device)
    drawn = torch.randint(0, 2**62, (2,), generator=generator).tolist()
    sampling = torch.Generator().manual_seed(int(drawn[0]))
    return sampling, torch.Generator(device=device).manual_seed(int(drawn[1]))


def _noise_source(generator: torch.Generator | None, sigma: float) -> str:
    if sigma == 0:
        return "none (target_epsilon = inf: no noise added)"
    return SEEDED_NOISE if generator is not None else SECURE_NOISE


def _check_poisson(loader: object, sample_rate: float) -> None:
    """The loader opacus trains with must be its Poisson loader at our sample rate."""
    from opacus.data_loader import DPDataLoader
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    sampler = getattr(loader, "batch_sampler", None)
    ok = (
        isinstance(loader, DPDataLoader)
        and isinstance(sampler, UniformWithReplacementSampler)
        and sampler.sample_rate == sample_rate
    )
    if not ok:
        raise ModelError(
            f"train_generator_dp: opacus returned a {type(loader).__name__} with sampler "
            f"{type(sampler).__name__}, not Poisson sampling at rate {sample_rate}: the "
            "accountant's eps would not hold. Check the opacus version (>= 1.5)."
        )


def _check_accounting(
    engine: PrivacyEngine, sigma: float, sample_rate: float, taken: int, planned: int
) -> None:
    """The accountant recorded exactly the planned steps at our (sigma, q)."""
    expected = [(sigma, sample_rate, planned)]
    history = [tuple(h) for h in engine.accountant.history]
    if taken != planned or history != expected:
        raise ModelError(
            f"train_generator_dp: the accountant recorded {history} over {taken} steps, "
            f"expected {expected}: the reported eps would not describe this run."
        )


def _spent(engine: PrivacyEngine, sigma: float, delta: float) -> float:
    """The accountant's eps (inf without noise), cross-checked against `epsilon_spent`."""
    if sigma == 0:
        return math.inf
    (recorded_sigma, q, steps) = engine.accountant.history[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        eps = float(engine.accountant.get_epsilon(delta=delta))
    assert math.isclose(eps, epsilon_spent(recorded_sigma, q, steps, delta), rel_tol=1e-9)
    return eps
