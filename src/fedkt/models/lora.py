"""LoRA adapters: what a client trains and what travels between client and server.

Only the adapter weights (``lora_A``/``lora_B``) are exchanged, so a round costs a few MB
rather than the whole model. Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models",
https://arxiv.org/abs/2106.09685: ``W x + (alpha / r) B A x`` with ``A`` random, ``B`` zero.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from peft import (
    LoraConfig,
    PeftModel,
    TaskType,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
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


def add_lora(model: PreTrainedModel, settings: LoraSettings) -> PeftModel:
    """Wrap ``model`` with fresh LoRA adapters; only the adapters stay trainable."""
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
    """A plain copy of ``model`` with its adapters folded into the base weights, for scoring.

    peft keeps LoRA weights in fp32 and casts every adapted layer's activations up and back,
    which makes a bf16 model 2-3x slower to score on a CPU; the merged copy runs at the base
    model's speed with the same weights (up to bf16 rounding of ``W + BA``). ``model`` itself
    is left untouched, so training can go on.
    """
    _require_peft(model, "merged_copy")
    return copy.deepcopy(model).merge_and_unload()


def _require_peft(model: object, what: str) -> None:
    if not isinstance(model, PeftModel):
        raise ModelError(
            f"{what} needs a model with LoRA adapters, got {type(model).__name__}: "
            "call add_lora(model, settings) first"
        )


def _some(keys: list[str], shown: int = 3) -> str:
    return ", ".join(keys[:shown]) + (", ..." if len(keys) > shown else "") if keys else "none"
