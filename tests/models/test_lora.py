from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from peft import PeftModel
from transformers import LlamaForCausalLM

from fedkt.errors import ConfigError, ModelError
from fedkt.models import (
    LoraSettings,
    adapter_state,
    add_lora,
    load_adapter_state,
    merged_copy,
)

INPUT_IDS = torch.tensor([[5, 17, 42, 99, 7, 3]])
LINEAR_PER_LAYER = 7  # q, k, v, o, gate, up, down


def _lora_model(
    make_tiny_llama: Callable[..., LlamaForCausalLM], seed: int, r: int = 8
) -> PeftModel:
    """A LoRA model whose adapters are random (fresh ones are a no-op: B starts at zero)."""
    model = add_lora(make_tiny_llama(n_layers=2), LoraSettings(r=r, dropout=0.0))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model.eval()


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(INPUT_IDS).logits


def test_add_lora_trains_adapters_only(make_tiny_llama: Callable[..., LlamaForCausalLM]) -> None:
    model = add_lora(make_tiny_llama(n_layers=2), LoraSettings())
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable
    assert all("lora_" in name for name in trainable)
    assert model.peft_config["default"].r == 8
    assert model.peft_config["default"].lora_alpha == 16


def test_adapter_state_holds_lora_weights_only(
    make_tiny_llama: Callable[..., LlamaForCausalLM],
) -> None:
    state = adapter_state(_lora_model(make_tiny_llama, seed=1))
    assert len(state) == 2 * 2 * LINEAR_PER_LAYER  # A and B, 2 layers
    assert all("lora_A" in key or "lora_B" in key for key in state)
    assert all(t.device.type == "cpu" and not t.requires_grad for t in state.values())


def test_adapter_state_is_a_copy(make_tiny_llama: Callable[..., LlamaForCausalLM]) -> None:
    model = _lora_model(make_tiny_llama, seed=1)
    before = _logits(model)
    for tensor in adapter_state(model).values():
        tensor.zero_()
    torch.testing.assert_close(_logits(model), before)


def test_target_modules_tuple(make_tiny_llama: Callable[..., LlamaForCausalLM]) -> None:
    model = add_lora(make_tiny_llama(), LoraSettings(target_modules=("q_proj", "v_proj")))
    keys = adapter_state(model)
    assert len(keys) == 2 * 2 * 2
    assert all("q_proj" in key or "v_proj" in key for key in keys)


def test_roundtrip_reproduces_logits(make_tiny_llama: Callable[..., LlamaForCausalLM]) -> None:
    trained = _lora_model(make_tiny_llama, seed=1)
    fresh = _lora_model(make_tiny_llama, seed=2)
    assert not torch.allclose(_logits(fresh), _logits(trained))
    load_adapter_state(fresh, adapter_state(trained))
    torch.testing.assert_close(_logits(fresh), _logits(trained))


def test_missing_and_unexpected_keys_are_named(
    make_tiny_llama: Callable[..., LlamaForCausalLM],
) -> None:
    model = _lora_model(make_tiny_llama, seed=1)
    state = adapter_state(model)
    dropped = sorted(state)[0]
    del state[dropped]
    with pytest.raises(ModelError, match=rf"missing 1: {dropped}; unexpected 0: none"):
        load_adapter_state(model, state)
    state[dropped + ".extra"] = torch.zeros(1)
    with pytest.raises(ModelError, match=r"unexpected 1: .*\.extra"):
        load_adapter_state(model, state)


def test_rank_mismatch_is_a_model_error(make_tiny_llama: Callable[..., LlamaForCausalLM]) -> None:
    small = adapter_state(_lora_model(make_tiny_llama, seed=1, r=4))
    with pytest.raises(ModelError, match="wrong shapes"):
        load_adapter_state(_lora_model(make_tiny_llama, seed=1, r=8), small)


def test_plain_model_and_double_lora_are_refused(
    make_tiny_llama: Callable[..., LlamaForCausalLM],
) -> None:
    plain = make_tiny_llama()
    with pytest.raises(ModelError, match="call add_lora"):
        adapter_state(plain)
    with pytest.raises(ModelError, match="already has LoRA adapters"):
        add_lora(add_lora(plain, LoraSettings()), LoraSettings())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"r": 0}, "r=0"),
        ({"alpha": 0}, "alpha=0"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"dropout": -0.1}, "dropout=-0.1"),
        ({"target_modules": ()}, "target_modules is empty"),
    ],
)
def test_settings_are_checked(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LoraSettings(**kwargs)  # type: ignore[arg-type]


def test_merged_copy_scores_like_the_adapted_model_and_leaves_it_untouched(
    make_tiny_llama: Callable[..., LlamaForCausalLM],
) -> None:
    model = _lora_model(make_tiny_llama, seed=3)
    before = adapter_state(model)
    merged = merged_copy(model)
    assert not isinstance(merged, PeftModel)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged), _logits(model), rtol=1e-4, atol=1e-4)
    after = adapter_state(model)  # the original keeps its adapters, unchanged
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_merged_copy_refuses_a_plain_model(
    make_tiny_llama: Callable[..., LlamaForCausalLM],
) -> None:
    with pytest.raises(ModelError, match="add_lora"):
        merged_copy(make_tiny_llama(n_layers=2))
