"""LoRA adapters: what a client trains and what travels between client and server.

Only the adapter weights (``lora_A``/``lora_B``) are exchanged, so a round costs a few MB
rather than the whole model. Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models",
https://arxiv.org/abs/2106.09685: ``W x + (alpha / r) B A x`` with ``A`` random, ``B`` zero.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import (
    LoraConfig,
    PeftModel,
    TaskType,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn
from transformers import PreTrainedModel

from fedkt.errors import ConfigError, ModelError


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyperparameters.

    Args:
        r: rank of the update ``B A`` (8).
        alpha: scale numerator; the update is scaled by ``alpha / r`` (16).
        dropout: dropout on the adapter input during training (0.05).
        target_modules: module names to adapt, or ``"all-linear"`` for every linear layer but
            the output head (peft's shorthand).
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"lora r={self.r} must be at least 1")
        if self.alpha <= 0:
            raise ConfigError(f"lora alpha={self.alpha} must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora dropout={self.dropout} must be in [0, 1)")
        if not self.target_modules:
            raise ConfigError(
                "lora target_modules is empty: name modules (e.g. ('q_proj', 'v_proj')) "
                "or use 'all-linear'"
            )


def add_lora(
    model: PreTrainedModel, settings: LoraSettings, *, seed: int | None = None
) -> PeftModel:
    """Wrap ``model`` with fresh LoRA adapters; only the adapters stay trainable.

    ``seed`` draws the adapters' random start (the A matrices) from that seed alone, in a
    forked RNG: the start is then the same whatever was drawn before (e.g. another model's
    LoRA first, or not at all), and the global RNG is left as it was. None draws from the
    global RNG, as peft does.
    """
    if seed is None:
        return _add_lora(model, settings)
    with torch.random.fork_rng(devices=[]):  # peft draws the adapters on the CPU
        torch.default_generator.manual_seed(seed)  # the CPU's only: CUDA's stays untouched
        return _add_lora(model, settings)


def _add_lora(model: PreTrainedModel, settings: LoraSettings) -> PeftModel:
    if isinstance(model, PeftModel):
        raise ModelError(
            "model already has LoRA adapters: add them once and reuse the model "
            "(load_adapter_state replaces their weights)"
        )
    target = settings.target_modules
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target if isinstance(target, str) else list(target),
    )
    return get_peft_model(model, config)


def adapter_state(model: PeftModel) -> dict[str, torch.Tensor]:
    """The adapter weights only, detached copies on CPU: safe to send or keep across rounds."""
    _require_peft(model, "adapter_state")
    state = get_peft_model_state_dict(model)
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}


def load_adapter_state(model: PeftModel, state: dict[str, torch.Tensor]) -> None:
    """Replace the adapter weights with ``state`` (as returned by :func:`adapter_state`).

    Every adapter weight must be given and nothing else: a partial update would silently mix
    rounds, so key mismatches raise instead.
    """
    _require_peft(model, "load_adapter_state")
    expected = set(get_peft_model_state_dict(model))
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise ModelError(
            "adapter state does not match the model's LoRA adapters "
            f"(missing {len(missing)}: {_some(missing)}; unexpected {len(unexpected)}: "
            f"{_some(unexpected)}): both sides must use the same base model and LoraSettings"
        )
    try:
        set_peft_model_state_dict(model, state)
    except RuntimeError as err:  # shape mismatch: another rank or base model
        raise ModelError(
            f"adapter state has the right keys but wrong shapes ({err}): both sides must use "
            "the same base model and LoRA rank"
        ) from err


def merged_copy(model: PeftModel) -> PreTrainedModel:
    """A plain copy of ``model`` with its adapters folded into the base weights.

    Lossy in bf16, so not for scoring (use :func:`scoring_copy`): ``W + BA`` is rounded to
    the base dtype, and with bf16's 8-bit mantissa a delta much smaller than the weight it is
    added to rounds away. On SmolLM2-135M with r=8, the merged bf16 weights keep only ~4.5 % /
    13.5 % / 41 % / 82.5 % of a delta whose B entries have std 1e-4 / 3e-4 / 1e-3 / 3e-3, so an
    adapter trained a few dozen steps at a small lr is mostly erased. Exact in fp32. ``model``
    itself is left untouched.
    """
    _require_peft(model, "merged_copy")
    return copy.deepcopy(model).merge_and_unload()


def scoring_copy(model: PeftModel) -> PreTrainedModel:
    """A plain copy of ``model`` that scores with the adapter's full effect, at bf16 speed.

    Every LoRA layer becomes one matmul in the base dtype, ``[W | s B] @ [x ; A x]``: the
    adapter's contribution is summed with the base one inside the matmul's fp32 accumulator
    and rounded once, like any other output, so nothing is erased. The alternatives lose it in
    bf16: merging rounds ``W + s B A`` per weight (see :func:`merged_copy`), and peft's
    unmerged forward (adapter fp32, or cast to bf16) adds ``s B A x`` to the base output
    *after* that output was rounded to bf16, so a change below half a bf16 step of the output
    rounds away just the same. The fused product equals the fp32 one rounded once to bf16.

    Measured on SmolLM2-135M in bf16 (CPU), r=8. Per adapted layer on real activations, random
    B of std 1e-4 / 1e-3 / 3e-3, share of the fp32 output change kept: merged 6-11 % / 35-59 %
    / 74-90 %, peft unmerged 4-7 % / 35-60 % / 77-95 %, this copy 95-102 % throughout. Whole
    model, adapter trained 36 steps at lr 3e-5 on AG News (B std 3.5e-4), 200 AG News
    validation rows (bench/lora_scoring.py): share of the fp32 reference's log-likelihood change
    kept 99 % (merged 38 %, peft unmerged 41 %), mean |log-likelihood - reference| 0.05 (the
    bf16 base model's own gap to fp32) against 0.55-0.58, predictions differing from the
    reference 4 against 9-11. Scoring those rows took 25-27 s, against 22-23 s merged, 28-35 s
    peft unmerged and 32-48 s fp32 (two runs on 2 shared CPU cores).

    The copy is a ``PreTrainedModel`` without peft, for evaluation and generation only (its
    fused layers are frozen; LoRA dropout is off, as in eval mode). ``model`` itself is left
    untouched, fp32 adapter included, so training can go on.
    """
    _require_peft(model, "scoring_copy")
    inner = copy.deepcopy(model).get_base_model()
    for name, module in list(inner.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent, _, child = name.rpartition(".")
            setattr(inner.get_submodule(parent), child, _fused_layer(module, name))
        elif isinstance(module, AuxiliaryTrainingWrapper):
            raise ModelError(
                f"scoring_copy cannot fuse {name!r} ({type(module).__name__}: trained copies of "
                "whole modules are not LoRA); score such a model with merged_copy in fp32"
            )
    if not isinstance(inner, PreTrainedModel):
        raise ModelError(f"scoring_copy needs a transformers model, got {type(inner).__name__}")
    return inner


class _FusedLoraLinear(nn.Module):
    """``W x + s B A x + bias`` as ``[W | s B] @ [x ; A x] + bias``: one rounding, base dtype.

    ``adapter_a`` stacks the active adapters' A (rank r each) and ``weight``'s last columns their
    scaled B, so several active adapters add up as in peft.
    """

    def __init__(
        self, weight: torch.Tensor, adapter_a: torch.Tensor, bias: torch.Tensor | None
    ) -> None:
        super().__init__()
        self.in_features = weight.shape[1] - adapter_a.shape[0]
        self.out_features = weight.shape[0]
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.adapter_a = nn.Parameter(adapter_a, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ax = F.linear(x, self.adapter_a)
        return F.linear(torch.cat([x, ax], dim=-1), self.weight, self.bias)

    def extra_repr(self) -> str:
        rank = self.weight.shape[1] - self.in_features
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={rank}"


def _fused_layer(layer: BaseTunerLayer, name: str) -> nn.Module:
    """The fused replacement of one LoRA layer (its base layer alone if adapters are off)."""
    base = layer.get_base_layer()
    if not isinstance(layer, LoraLinear) or type(base) is not nn.Linear:
        raise ModelError(
            f"scoring_copy fuses LoRA on plain nn.Linear layers only; {name!r} is "
            f"{type(layer).__name__} over {type(base).__name__}: score it with merged_copy in fp32"
        )
    if layer.merged:
        raise ModelError(
            f"{name!r} has its adapter merged into the base weights: call model.unmerge_adapter() "
            "before scoring_copy"
        )
    on = not layer.disable_adapters
    active = [a for a in layer.active_adapters if on and a in layer.lora_A]
    if not active:
        return base
    weight = base.weight.detach()
    a_parts: list[torch.Tensor] = []
    b_parts: list[torch.Tensor] = []  # scaled, fp32
    for adapter in active:
        lora_a, lora_b = layer.lora_A[adapter], layer.lora_B[adapter]
        plain = isinstance(lora_a, nn.Linear) and isinstance(lora_b, nn.Linear)
        if adapter in layer.lora_variant or not plain or lora_b.bias is not None:
            raise ModelError(
                f"scoring_copy fuses plain LoRA only; {name!r} adapter {adapter!r} uses a variant "
                "(DoRA, ...) or lora_bias: score it with merged_copy in fp32"
            )
        a_parts.append(lora_a.weight.detach())
        b_parts.append(lora_b.weight.detach().float() * layer.scaling[adapter])
    device, dtype = weight.device, weight.dtype
    with torch.no_grad():
        fused = torch.cat([weight, torch.cat(b_parts, dim=1).to(device, dtype)], dim=1)
        adapter_a = torch.cat(a_parts).to(device, dtype)
    bias = None if base.bias is None else base.bias.detach()
    return _FusedLoraLinear(fused, adapter_a, bias)


def _require_peft(model: object, what: str) -> None:
    if not isinstance(model, PeftModel):
        raise ModelError(
            f"{what} needs a model with LoRA adapters, got {type(model).__name__}: "
            "call add_lora(model, settings) first"
        )


def _some(keys: list[str], shown: int = 3) -> str:
    return ", ".join(keys[:shown]) + (", ..." if len(keys) > shown else "") if keys else "none"
