"""DP-SGD generator training on tiny random Llamas: accounting, Poisson loader, targets, EOS."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from opacus.data_loader import DPDataLoader
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from peft import LoraConfig, TaskType, get_peft_model
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from fedkt.data.synthetic import format_sample, label_prefix
from fedkt.errors import ConfigError, ModelError
from fedkt.generation import GenerationSettings, TransformersBackend
from fedkt.privacy.accounting import epsilon_spent
from fedkt.training import DPSettings, train_generator_dp
from fedkt.training import dp_generator as dpg
from fedkt.training.batching import IGNORE_INDEX

TEXTS = [
    format_sample(label_prefix(label, "Label"), text)
    for label, text in [
        ("a", "the team won the final match"),
        ("b", "shares rose after the bank report"),
        ("a", "leaders met to discuss the treaty"),
        ("b", "scientists launched a new satellite"),
    ]
    * 6
]


def _lora(model: LlamaForCausalLM) -> Any:
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules="all-linear",
    )
    return get_peft_model(model, config)


def test_trains_with_dp_and_reports_the_accountants_eps(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    settings = DPSettings(target_epsilon=4.0, delta=1e-3, batch_size=4, epochs=2, lr=1e-3)
    before = [p.detach().clone() for p in tiny_llama.parameters()]
    report = train_generator_dp(
        tiny_llama, tiny_tokenizer, TEXTS, settings, generator=torch.Generator().manual_seed(0)
    )
    assert 0 < report.epsilon <= settings.target_epsilon * 1.001
    assert report.epsilon == pytest.approx(settings.target_epsilon, rel=0.01)
    assert report.epsilon == epsilon_spent(
        report.noise_multiplier, report.sample_rate, report.steps, report.delta
    )
    assert (report.sample_rate, report.steps) == (pytest.approx(1 / 6), 12)
    assert report.noise_multiplier > 0 and report.poisson
    assert report.noise_source == dpg.SEEDED_NOISE
    assert len(report.losses) == report.steps and all(math.isfinite(x) for x in report.losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, tiny_llama.parameters(), strict=True))
    # opacus is gone from the model: no hooks, no per-sample attributes
    assert not any(hasattr(p, "grad_sample") for p in tiny_llama.parameters())
    assert not any(m._forward_hooks for m in tiny_llama.modules())
    assert not tiny_llama.training


def test_poisson_loader_with_variable_batches(
    tiny_llama: LlamaForCausalLM,
    tiny_tokenizer: PreTrainedTokenizerFast,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loader opacus hands back is its Poisson loader, and batch sizes vary."""
    seen: list[Any] = []
    check = dpg._check_poisson

    def spy(loader: Any, sample_rate: float) -> None:
        seen.append(loader)
        check(loader, sample_rate)

    monkeypatch.setattr(dpg, "_check_poisson", spy)
    settings = DPSettings(target_epsilon=8.0, delta=1e-3, batch_size=4, epochs=3)
    report = train_generator_dp(
        tiny_llama, tiny_tokenizer, TEXTS, settings, generator=torch.Generator().manual_seed(1)
    )
    (loader,) = seen
    assert isinstance(loader, DPDataLoader)
    assert isinstance(loader.batch_sampler, UniformWithReplacementSampler)
    assert loader.batch_sampler.sample_rate == report.sample_rate
    assert len(set(report.batch_sizes)) > 1
    with pytest.raises(ModelError, match="not Poisson"):
        check(torch.utils.data.DataLoader(loader.dataset, batch_size=4), report.sample_rate)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_empty_poisson_batches_still_step(
    make_tiny_llama: Any, tiny_tokenizer: PreTrainedTokenizerFast, mode: str
) -> None:
    """A small sample rate draws empty batches; each is a (noise-only) step the accountant
    counts. (Ghost clipping cannot train the tiny Llama's tied embeddings: LoRA there.)"""
    model = make_tiny_llama() if mode == "hooks" else _lora(make_tiny_llama())
    settings = DPSettings(target_epsilon=8.0, delta=1e-3, batch_size=1, grad_sample_mode=mode)
    report = train_generator_dp(
        model, tiny_tokenizer, TEXTS[:12], settings, generator=torch.Generator().manual_seed(2)
    )
    assert 0 in report.batch_sizes
    assert report.steps == 12 == len(report.batch_sizes)
    assert all(math.isfinite(x) for x in report.losses)


def test_targets_end_with_eos_and_pads_are_not_trained(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    pad, eos = tiny_tokenizer.pad_token_id, tiny_tokenizer.eos_token_id
    dataset, truncated = dpg._encode(tiny_tokenizer, TEXTS[:3], 64, pad, eos)
    input_ids, attention_mask, labels = dataset.tensors
    assert truncated == 0
    for row in range(3):
        n = int(attention_mask[row].sum())
        assert labels[row, n - 1] == eos and input_ids[row, n - 1] == eos
        assert torch.equal(labels[row, :n], input_ids[row, :n])  # the whole sample is learned
        assert (labels[row, n:] == IGNORE_INDEX).all()
        assert (input_ids[row, n:] == pad).all()
    assert (attention_mask.sum(dim=1) < attention_mask.shape[1]).any()  # some padding exists
    # a row longer than max_length keeps its start and has no EOS
    cut, truncated = dpg._encode(tiny_tokenizer, [TEXTS[0]], 4, pad, eos)
    assert truncated == 1 and eos not in cut.tensors[0][0].tolist()


def test_pad_equal_to_eos_still_learns_eos(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    eos = tiny_tokenizer.eos_token_id
    dataset, _ = dpg._encode(tiny_tokenizer, [TEXTS[0], "x"], 64, eos, eos)
    _, mask, labels = dataset.tensors
    assert labels[1, int(mask[1].sum()) - 1] == eos
    assert (labels[1, int(mask[1].sum()) :] == IGNORE_INDEX).all()


def test_sequence_cross_entropy_ignores_pads_and_is_per_row() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[1, 2, 3, 4, 5], [1, 2, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]])
    per_row = dpg.sequence_cross_entropy(logits, labels)
    alone = dpg.sequence_cross_entropy(logits[1:, :2], labels[1:, :2])
    assert per_row[1] == pytest.approx(float(alone[0]))  # padding changes nothing
    garbage = logits.clone()
    garbage[1, 2:] = 100.0  # logits at pad positions never matter
    assert dpg.sequence_cross_entropy(garbage, labels)[1] == pytest.approx(float(per_row[1]))
    assert dpg.sequence_cross_entropy(logits[:1], torch.full((1, 5), IGNORE_INDEX))[0] == 0


def test_lora_hooks_and_ghost_train_the_adapter_only(
    make_tiny_llama: Any, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    for mode in ("hooks", "ghost"):
        model = _lora(make_tiny_llama())
        frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        settings = DPSettings(
            target_epsilon=8.0, delta=1e-3, batch_size=4, grad_sample_mode=mode, lr=1e-2
        )
        report = train_generator_dp(
            model, tiny_tokenizer, TEXTS, settings, generator=torch.Generator().manual_seed(3)
        )
        assert report.grad_sample_mode == mode and report.steps == 6
        assert report.trainable_params == sum(
            p.numel() for p in model.parameters() if p.requires_grad
        )
        for name, param in model.named_parameters():
            if name in frozen:
                assert torch.equal(param, frozen[name])


def test_same_generator_same_run_and_secure_default(
    make_tiny_llama: Any, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    settings = DPSettings(target_epsilon=8.0, delta=1e-3, batch_size=4)
    reports, weights = [], []
    for _ in range(2):
        model = make_tiny_llama()
        reports.append(
            train_generator_dp(
                model, tiny_tokenizer, TEXTS, settings, generator=torch.Generator().manual_seed(7)
            )
        )
        weights.append(model.lm_head.weight.detach().clone())
    assert reports[0].batch_sizes == reports[1].batch_sizes
    assert torch.equal(weights[0], weights[1])
    secure = train_generator_dp(make_tiny_llama(), tiny_tokenizer, TEXTS, settings, generator=None)
    assert secure.noise_source == dpg.SECURE_NOISE and "torchcsprng" in secure.noise_source


def test_infinite_eps_adds_no_noise(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    settings = DPSettings(target_epsilon=math.inf, delta=1e-3, batch_size=4)
    report = train_generator_dp(
        tiny_llama, tiny_tokenizer, TEXTS, settings, generator=torch.Generator().manual_seed(0)
    )
    assert report.noise_multiplier == 0 and report.epsilon == math.inf
    assert report.noise_source.startswith("none")


@pytest.mark.parametrize(
    ("eps", "delta", "match"),
    [(3.0, 1 / 24, r"delta=.*1/N.*N=24"), (3.0, 0.5, "delta"), (0.0, 1e-3, "target_epsilon")],
)
def test_refuses_bad_targets(
    tiny_llama: LlamaForCausalLM,
    tiny_tokenizer: PreTrainedTokenizerFast,
    eps: float,
    delta: float,
    match: str,
) -> None:
    with pytest.raises(ConfigError, match=match):
        settings = DPSettings(target_epsilon=eps, delta=delta)
        train_generator_dp(tiny_llama, tiny_tokenizer, TEXTS, settings, generator=None)


def test_refuses_models_it_cannot_train(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    settings = DPSettings(delta=1e-3)
    with pytest.raises(ModelError, match="fp32"):
        train_generator_dp(tiny_llama.bfloat16(), tiny_tokenizer, TEXTS, settings, generator=None)
    for p in tiny_llama.parameters():
        p.requires_grad_(False)
    with pytest.raises(ModelError, match="no trainable parameters"):
        train_generator_dp(tiny_llama.float(), tiny_tokenizer, TEXTS, settings, generator=None)


def test_learns_to_emit_eos(tiny_tokenizer: PreTrainedTokenizerFast, make_tiny_llama: Any) -> None:
    """Trained without noise (eps = inf) on "Label: a | Text: x y z" + EOS, the generator
    stops after the text it learned instead of running to max_new_tokens."""
    prefix = label_prefix("a")
    texts = [format_sample(prefix, "water rock soil")] * 16
    model = make_tiny_llama()
    settings = DPSettings(
        target_epsilon=math.inf, delta=1e-3, batch_size=8, epochs=40, lr=1e-2, max_grad_norm=100.0
    )
    train_generator_dp(
        model, tiny_tokenizer, texts, settings, generator=torch.Generator().manual_seed(0)
    )
    greedy = GenerationSettings(max_new_tokens=20)
    (text,) = TransformersBackend(model, tiny_tokenizer).generate([prefix], greedy)
    assert text == " water rock soil"  # stopped at EOS, which decoding drops
