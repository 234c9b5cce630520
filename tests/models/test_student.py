from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from fedkt.errors import ModelError
from fedkt.models import keep_first_layers

INPUT_IDS = torch.tensor([[5, 17, 42, 99, 7, 3]])


def test_cut_updates_layers_and_config(make_tiny_llama: Callable[..., LlamaForCausalLM]) -> None:
    model = make_tiny_llama(n_layers=4)
    assert keep_first_layers(model, 2) is model
    assert len(model.model.layers) == 2
    assert model.config.num_hidden_layers == 2


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_cut_equals_first_layers_of_full_model(
    make_tiny_llama: Callable[..., LlamaForCausalLM], k: int
) -> None:
    full = make_tiny_llama(n_layers=4)
    cut = keep_first_layers(make_tiny_llama(n_layers=4), k)
    with torch.no_grad():
        full_out = full(INPUT_IDS, output_hidden_states=True)
        cut_out = cut(INPUT_IDS, output_hidden_states=True)
        # hidden_states[i] is the input to layer i; the last entry is already normalised.
        after_k = full_out.hidden_states[k]
        expected = full.lm_head(after_k if k == 4 else full.model.norm(after_k))
    torch.testing.assert_close(cut_out.logits, expected)
    for got, want in zip(cut_out.hidden_states[:k], full_out.hidden_states[:k], strict=True):
        torch.testing.assert_close(got, want)


def test_cut_model_generates_with_a_cache(
    make_tiny_llama: Callable[..., LlamaForCausalLM],
) -> None:
    model = keep_first_layers(make_tiny_llama(n_layers=3), 1)
    out = model.generate(INPUT_IDS, max_new_tokens=4, do_sample=False, pad_token_id=1)
    assert out.shape == (1, INPUT_IDS.shape[1] + 4)


def test_cut_truncates_layer_types() -> None:
    config = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = keep_first_layers(Qwen2ForCausalLM(config), 2)
    assert model.config.layer_types == ["full_attention", "full_attention"]
    assert model(INPUT_IDS % 64).logits.shape == (1, INPUT_IDS.shape[1], 64)


@pytest.mark.parametrize("k", [0, 5, -1])
def test_k_out_of_range(make_tiny_llama: Callable[..., LlamaForCausalLM], k: int) -> None:
    model = make_tiny_llama(n_layers=4)
    with pytest.raises(ModelError, match="between 1 and 4"):
        keep_first_layers(model, k)
    assert len(model.model.layers) == 4


def test_non_llama_model_is_refused() -> None:
    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32)
    with pytest.raises(ModelError, match=r"GPT2LMHeadModel.*model\.model\.layers"):
        keep_first_layers(GPT2LMHeadModel(config), 1)
