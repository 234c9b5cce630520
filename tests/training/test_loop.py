"""The fine-tuning loop learns, touches only trainable weights, and checks its settings."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import build_tiny_llama
from fedkt.data import Example
from fedkt.errors import ConfigError, DataError, ModelError
from fedkt.training import (
    TrainSettings,
    answer_cross_entropy,
    collate,
    encode_answer_only,
    grad_scaler,
    train_answer_only,
)
from fedkt.training.loop import _epoch_batches

FAST = TrainSettings(lr=1e-2, epochs=4, batch_size=4, warmup_ratio=0.0, max_length=64)

EXAMPLES = [
    Example(f"q{i}", f"Question: {q}\nAnswer:", choices, gold)
    for i, (q, choices, gold) in enumerate(
        [
            ("Which gas do plants absorb from the air?", ("oxygen", "carbon dioxide"), 1),
            ("What is the boiling point of water at sea level?", ("100 degrees Celsius",), 0),
            ("Which gas do we breathe?", ("oxygen", "helium"), 0),
            ("What do plants need to grow?", ("rock", "sunlight"), 1),
            ("What gives energy?", ("food",), 0),
            ("What is the lightest gas?", ("hydrogen", "nitrogen"), 0),
            ("What covers the ground?", ("soil", "water"), 0),
            ("What falls as rain?", ("water", "rock"), 0),
        ]
    )
]


def mean_loss(model: nn.Module, tokenizer: PreTrainedTokenizerFast) -> float:
    batch = collate(
        [encode_answer_only(tokenizer, *ex.training_pair(), 64) for ex in EXAMPLES],
        tokenizer.pad_token_id,
    )
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return answer_cross_entropy(logits, batch["labels"]).item()


def test_full_fine_tuning_reduces_the_loss(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    before = mean_loss(tiny_llama, tiny_tokenizer)

    report = train_answer_only(tiny_llama, tiny_tokenizer, EXAMPLES, FAST, progress=False)

    assert report.steps == 8  # 2 batches per epoch, 4 epochs
    assert len(report.losses) == 8
    assert report.last_loss < report.first_loss
    assert mean_loss(tiny_llama, tiny_tokenizer) < before - 0.5
    assert 0 < report.answer_tokens < report.tokens
    assert report.tokens_per_s > 0
    assert not tiny_llama.training


def test_lora_trains_the_adapter_and_leaves_the_base_untouched(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    model = get_peft_model(tiny_llama, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss_before = mean_loss(model, tiny_tokenizer)

    train_answer_only(model, tiny_tokenizer, EXAMPLES, FAST, progress=False)

    after = dict(model.named_parameters())
    lora = {name for name in before if "lora_" in name}
    assert lora and all(after[name].requires_grad for name in lora)
    assert all(not torch.equal(before[name], after[name]) for name in lora if "lora_B" in name)
    assert all(torch.equal(before[name], after[name]) for name in before.keys() - lora)
    assert mean_loss(model, tiny_tokenizer) < loss_before


def test_bf16_model_trains_as_it_is(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    model = tiny_llama.to(torch.bfloat16)
    settings = TrainSettings(lr=1e-2, max_length=64, max_steps=2)
    report = train_answer_only(model, tiny_tokenizer, EXAMPLES, settings, progress=False)
    assert report.steps == 2
    assert all(torch.isfinite(torch.tensor(report.losses)))
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_same_seed_same_run(
    make_tiny_llama: Callable[..., LlamaForCausalLM], tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    settings = TrainSettings(batch_size=3, max_length=64, max_steps=3)
    first = train_answer_only(make_tiny_llama(), tiny_tokenizer, EXAMPLES, settings, progress=False)
    again = train_answer_only(make_tiny_llama(), tiny_tokenizer, EXAMPLES, settings, progress=False)
    assert first.losses == again.losses


@pytest.mark.parametrize(
    ("batch_size", "grad_accum", "epochs", "max_steps", "steps"),
    [(4, 1, 1, None, 2), (3, 2, 1, None, 2), (1, 3, 2, None, 6), (2, 1, 3, 5, 5)],
)
def test_step_count(
    tiny_llama: LlamaForCausalLM,
    tiny_tokenizer: PreTrainedTokenizerFast,
    batch_size: int,
    grad_accum: int,
    epochs: int,
    max_steps: int | None,
    steps: int,
) -> None:
    settings = TrainSettings(
        batch_size=batch_size, grad_accum=grad_accum, epochs=epochs, max_steps=max_steps
    )
    report = train_answer_only(tiny_llama, tiny_tokenizer, EXAMPLES, settings, progress=False)
    assert report.steps == steps


@pytest.mark.parametrize("group_by_length", [True, False])
def test_epoch_batches_cover_every_example_once(group_by_length: bool) -> None:
    lengths = [5, 50, 6, 48, 7, 47, 8, 49, 9]
    settings = TrainSettings(batch_size=2, group_by_length=group_by_length)
    batches = _epoch_batches(lengths, settings, torch.Generator().manual_seed(0))
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert all(len(batch) <= 2 for batch in batches)
    if group_by_length:  # sorted windows pair the long ones together
        assert {1, 7} in [set(batch) for batch in batches]


def test_model_without_trainable_parameters_is_refused(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    tiny_llama.requires_grad_(False)
    with pytest.raises(ModelError, match="no trainable parameters"):
        train_answer_only(tiny_llama, tiny_tokenizer, EXAMPLES, FAST, progress=False)


def test_no_examples_is_refused(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    with pytest.raises(DataError, match="no examples"):
        train_answer_only(tiny_llama, tiny_tokenizer, [], FAST, progress=False)


def test_defaults_are_fedcollm() -> None:
    s = TrainSettings()
    assert (s.lr, s.epochs, s.batch_size, s.grad_accum) == (3e-4, 1, 4, 1)
    assert (s.warmup_ratio, s.weight_decay, s.betas) == (0.008, 0.1, (0.9, 0.95))
    assert (s.max_grad_norm, s.max_length, s.seed, s.max_steps) == (1.0, 512, 0, None)


@pytest.mark.parametrize(
    "bad",
    [
        {"lr": 0.0},
        {"epochs": 0},
        {"batch_size": 0},
        {"grad_accum": 0},
        {"warmup_ratio": 1.0},
        {"weight_decay": -0.1},
        {"betas": (0.9, 1.0)},
        {"max_grad_norm": 0.0},
        {"max_length": 1},
        {"max_steps": 0},
    ],
)
def test_settings_out_of_range(bad: dict[str, object]) -> None:
    (name,) = bad
    with pytest.raises(ConfigError, match=name):
        TrainSettings(**bad)  # type: ignore[arg-type]


def test_an_fp16_model_trains_its_fp32_adapter_with_loss_scaling(
    tiny_llama: LlamaForCausalLM,
    tiny_tokenizer: PreTrainedTokenizerFast,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """fp16 (`pick_dtype` on a GPU without bf16) needs a loss scaler, or small gradients
    underflow to 0; bf16 and fp32 models train unscaled, as before."""
    plain = build_tiny_llama(len(tiny_tokenizer))
    assert not grad_scaler(plain).is_enabled()  # fp32
    assert not grad_scaler(plain.to(torch.bfloat16)).is_enabled()  # bf16 has fp32's range
    assert not grad_scaler(plain.to(torch.float16)).is_enabled()  # fp16 weights: unscalable
    model = get_peft_model(
        tiny_llama.to(torch.float16), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert grad_scaler(model).is_enabled()
    scaled: list[float] = []
    scale = torch.amp.GradScaler.scale

    def spy(self: torch.amp.GradScaler, outputs: torch.Tensor) -> torch.Tensor:
        scaled.append(self.get_scale() if self.is_enabled() else 1.0)
        return scale(self, outputs)

    monkeypatch.setattr(torch.amp.GradScaler, "scale", spy)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    settings = TrainSettings(lr=1e-2, max_length=64, max_steps=2)
    report = train_answer_only(model, tiny_tokenizer, EXAMPLES, settings, progress=False)
    assert report.steps == 2 and all(torch.isfinite(torch.tensor(report.losses)))
    assert len(scaled) == 2 and all(s > 1.0 for s in scaled)  # every backward was scaled
    after = dict(model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)
