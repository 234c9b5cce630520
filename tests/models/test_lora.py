from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from peft import PeftModel
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from fedkt.errors import ConfigError, ModelError
from fedkt.generation import GenerationSettings, TransformersBackend
from fedkt.models import (
    LoraSettings,
    adapter_state,
    add_lora,
    load_adapter_state,
    merged_copy,
    scoring_copy,
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


# ---- scoring_copy: bf16 scoring that keeps a small adapter delta ----


def _small_delta_bf16_model(
    make_tiny_llama: Callable[..., LlamaForCausalLM], std: float, seed: int = 0
) -> PeftModel:
    """A bf16 model whose (fp32, peft's default) LoRA B has entries of std `std`."""
    model = add_lora(make_tiny_llama(n_layers=2).to(torch.bfloat16), LoraSettings(dropout=0.0))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model.eval()


def _retained(change: torch.Tensor, exact: torch.Tensor) -> float:
    """Least-squares slope of `change` on `exact`: the share of the exact change kept."""
    return float((change * exact).sum() / (exact * exact).sum())


def test_scoring_copy_keeps_a_small_bf16_delta_that_merging_erases(
    make_tiny_llama: Callable[..., LlamaForCausalLM],
) -> None:
    """End to end: log-probabilities move by the fp32 reference's change, up to bf16 noise.

    B std 3e-5 is below half a bf16 step of most weights (init std 0.02), so merging rounds
    half of the delta away. bf16 activation rounding adds noise ~13x the effect's size, so the
    slope is taken over 4096 tokens x 300 logits and checked to 15 %; the per-layer test below
    is the precise one.
    """
    model = _small_delta_bf16_model(make_tiny_llama, std=3e-5)
    base = make_tiny_llama(n_layers=2).to(torch.bfloat16)  # same seed: the adapter's base
    ids = torch.randint(2, 300, (32, 128), generator=torch.Generator().manual_seed(0))

    def logprobs(m: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return m(ids).logits.float().log_softmax(-1)

    reference = logprobs(copy.deepcopy(model).float().merge_and_unload())
    exact = reference - logprobs(copy.deepcopy(base).float())
    base_bf16 = logprobs(base)
    assert 0.85 < _retained(logprobs(scoring_copy(model)) - base_bf16, exact) < 1.15
    assert _retained(logprobs(merged_copy(model)) - base_bf16, exact) < 0.7


def test_scoring_copy_layers_keep_the_whole_delta(
    make_tiny_llama: Callable[..., LlamaForCausalLM],
) -> None:
    """Per adapted layer (no bf16 noise downstream), the output change is the fp32 one (to 3 %
    over all layers, 10 % per layer: one bf16 rounding of the output is noise ~4x the change);
    merged weights and peft's own forward (adapter added after rounding) lose most of it."""
    model = _small_delta_bf16_model(make_tiny_llama, std=1e-5)
    fused, merged = scoring_copy(model), merged_copy(model)
    x = torch.randn(2048, 32, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    retained: dict[str, list[float]] = {"fused": [], "merged": [], "peft": []}
    pooled = [0.0, 0.0]
    with torch.no_grad():
        for name, layer in model.get_base_model().named_modules():
            if not hasattr(layer, "lora_A") or layer.in_features != x.shape[1]:
                continue  # down_proj takes the MLP's width
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            exact = torch.nn.functional.linear(x.float(), b @ a * layer.scaling["default"])
            base = layer.base_layer(x).float()
            for key, module in [
                ("fused", fused.get_submodule(name)),
                ("merged", merged.get_submodule(name)),
                ("peft", layer),
            ]:
                retained[key].append(_retained(module(x).float() - base, exact))
            change = fused.get_submodule(name)(x).float() - base
            pooled[0] += float((change * exact).sum())
            pooled[1] += float(exact.square().sum())
    assert len(retained["fused"]) == 2 * 6  # q, k, v, o, gate, up
    assert 0.97 < pooled[0] / pooled[1] < 1.03
    assert all(0.9 < r < 1.1 for r in retained["fused"]), retained["fused"]
    assert all(r < 0.5 for r in retained["merged"] + retained["peft"]), retained


def test_scoring_copy_leaves_the_model_untouched_and_generates_like_it(
    make_tiny_llama: Callable[..., LlamaForCausalLM],
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    model = _lora_model(make_tiny_llama, seed=3)  # fp32: the fused layers are exact
    before = adapter_state(model)
    scored = scoring_copy(model)
    assert not isinstance(scored, PeftModel)
    assert not any("lora_" in name for name, _ in scored.named_parameters())
    assert not any(p.requires_grad for p in scored.parameters())
    torch.testing.assert_close(_logits(scored), _logits(model), rtol=1e-4, atol=1e-4)
    after = adapter_state(model)
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert all(p.requires_grad for name, p in model.named_parameters() if "lora_" in name)

    settings = GenerationSettings(max_new_tokens=8, batch_size=2, stop=())
    prompts = ["Question: Which gas", "Article: The team won"]
    assert TransformersBackend(scored, tiny_tokenizer).generate(prompts, settings) == (
        TransformersBackend(model, tiny_tokenizer).generate(prompts, settings)
    )


def test_scoring_copy_keeps_the_bf16_adapter_fp32_in_the_original(
    make_tiny_llama: Callable[..., LlamaForCausalLM],
) -> None:
    model = _small_delta_bf16_model(make_tiny_llama, std=1e-3)
    before = adapter_state(model)
    scored = scoring_copy(model)
    assert {p.dtype for p in scored.parameters()} == {torch.bfloat16}
    after = adapter_state(model)
    assert {t.dtype for t in after.values()} == {torch.float32}
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_scoring_copy_refuses_plain_and_merged_models(
    make_tiny_llama: Callable[..., LlamaForCausalLM],
) -> None:
    with pytest.raises(ModelError, match="add_lora"):
        scoring_copy(make_tiny_llama(n_layers=2))
    model = _lora_model(make_tiny_llama, seed=1)
    model.merge_adapter()
    with pytest.raises(ModelError, match="unmerge_adapter"):
        scoring_copy(model)
