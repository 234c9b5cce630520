from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import replace

import pytest
import torch
from peft import PeftModel
from torch.optim.optimizer import register_optimizer_step_pre_hook
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import build_tiny_llama
from fedkt.algorithms.fedcollm import (
    ClientUpdate,
    DPAuxSettings,
    FedCoLLMSettings,
    LocalClient,
    ServerModels,
    aggregate_adapters,
    aux_examples,
    check_pair,
    client_training,
    client_update,
    distil_steps,
    local_exchange,
    mutual_distillation,
    run_round,
    server_round,
    warmup_cosine,
)
from fedkt.data import Example
from fedkt.data.formats import LabelFormat
from fedkt.errors import ConfigError, DataError, FedktError, ModelError, TokenizerMismatchError
from fedkt.models import LoraSettings, adapter_state, add_lora
from fedkt.training import TrainSettings, train_answer_only

LORA = LoraSettings(r=4, alpha=8, dropout=0.0)
TRAIN = TrainSettings(epochs=1, lr=1e-2, batch_size=2, warmup_ratio=0.0, max_length=64)
SETTINGS = FedCoLLMSettings(
    kd_steps=2, kd_batch_size=2, llm_lr=1e-2, slm_lr=1e-2, client=TRAIN, lora=LORA
)
FACTS = [
    ("Which gas do plants absorb from the air?", ("carbon dioxide", "helium"), 0),
    ("What do plants need to grow?", ("rock", "sunlight"), 1),
    ("What is the boiling point of water at sea level?", ("100 degrees Celsius", "oxygen"), 0),
    ("Which gas do we breathe in?", ("nitrogen", "oxygen"), 1),
]
EXAMPLES = [
    Example(id=str(i), context=f"Question: {q}\nAnswer:", choices=choices, gold=gold)
    for i, (q, choices, gold) in enumerate(FACTS)
]


@pytest.fixture
def pair(make_tiny_llama: Callable[..., LlamaForCausalLM]) -> tuple[PeftModel, PeftModel]:
    """(LLM, SLM): same tiny tokenizer, the LLM deeper; fresh LoRA on both."""
    return add_lora(make_tiny_llama(n_layers=3, seed=1), LORA), add_lora(make_tiny_llama(), LORA)


def _update(adapter: dict[str, torch.Tensor], n: int) -> ClientUpdate:
    return ClientUpdate(adapter=adapter, n_examples=n)


def _lora_params(model: PeftModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def _base_params(model: PeftModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}


def _assert_all_changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> None:
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert not unchanged


def test_settings_reject_out_of_range_values() -> None:
    with pytest.raises(ConfigError, match="kd_temperature=0"):
        FedCoLLMSettings(kd_temperature=0)
    with pytest.raises(ConfigError, match="aggregation='median'"):
        FedCoLLMSettings(aggregation="median")  # type: ignore[arg-type]
    assert FedCoLLMSettings().kd_top_k is None  # exact full-vocabulary KD by default
    with pytest.raises(ConfigError, match="aux_source='synthetic'"):
        FedCoLLMSettings(aux_source="synthetic")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="per_label=0"):
        DPAuxSettings(per_label=0)
    with pytest.raises(ConfigError, match=r"field='A\|B'"):
        DPAuxSettings(label_field="A|B")
    assert FedCoLLMSettings().aux_source == "public"  # the paper's D_a unless asked otherwise
    paper = FedCoLLMSettings()
    assert (paper.kd_epochs, paper.kd_steps, paper.kd_selection) == (1, None, "none")
    with pytest.raises(ConfigError, match="kd_epochs=0"):
        FedCoLLMSettings(kd_epochs=0)
    with pytest.raises(ConfigError, match="kd_steps=0"):
        FedCoLLMSettings(kd_steps=0)
    with pytest.raises(ConfigError, match="kd_selection='best'"):
        FedCoLLMSettings(kd_selection="best")  # type: ignore[arg-type]


TOPICS = ("World", "Sports")
NEWS = LabelFormat.of(  # read off a row, as the server reads it off its evaluation rows
    [Example("e", "Article: Rain is due.\nTopic:", TOPICS, 0, question="Rain is due.")]
)


def test_aux_examples_are_the_tasks_rows_sorted_and_deduplicated() -> None:
    pairs = [("Sports", "b match"), ("World", "a summit"), ("Sports", "b match"), ("World", " ")]
    rows = aux_examples(pairs, NEWS)
    assert [(r.id, r.question, r.gold) for r in rows] == [
        ("aux0", "b match", 1),
        ("aux1", "a summit", 0),
    ]
    assert rows[0].context == "Article: b match\nTopic:" and rows[0].choices == TOPICS
    assert rows[0].training_pair()[1].strip() == "Sports"
    assert aux_examples(reversed(pairs), NEWS) == rows  # any reply order: the same D_a


def test_aux_examples_refuse_unknown_labels_and_an_empty_set() -> None:
    with pytest.raises(FedktError, match="'Weather'"):
        aux_examples([("Weather", "rain again")], NEWS)
    with pytest.raises(DataError, match="no DP synthetic samples"):
        aux_examples([("World", "")], NEWS)


def test_uniform_aggregation_is_the_plain_mean() -> None:
    a = {"w": torch.tensor([[1.0, 2.0]]), "v": torch.tensor([0.0])}
    b = {"w": torch.tensor([[3.0, 6.0]]), "v": torch.tensor([4.0])}
    merged = aggregate_adapters([_update(a, 1), _update(b, 3)], "uniform")
    torch.testing.assert_close(merged["w"], torch.tensor([[2.0, 4.0]]))
    torch.testing.assert_close(merged["v"], torch.tensor([2.0]))


def test_weighted_aggregation_weighs_by_example_count() -> None:
    a = {"w": torch.tensor([1.0, 2.0]).to(torch.bfloat16)}
    b = {"w": torch.tensor([3.0, 6.0]).to(torch.bfloat16)}
    merged = aggregate_adapters([_update(a, 1), _update(b, 3)], "weighted")
    # 1/4 * a + 3/4 * b, returned in the clients' dtype
    assert merged["w"].dtype == torch.bfloat16
    torch.testing.assert_close(merged["w"].float(), torch.tensor([2.5, 5.0]))


def test_aggregation_refuses_empty_or_mismatched_updates() -> None:
    with pytest.raises(FedktError, match="no client updates"):
        aggregate_adapters([])
    a = {"w": torch.zeros(2, 3)}
    with pytest.raises(ModelError, match="differs from update 0's in 2 tensors"):
        aggregate_adapters([_update(a, 1), _update({"u": torch.zeros(2, 3)}, 1)])
    with pytest.raises(ModelError, match=r"shape \(1, 3\) vs \(2, 3\)"):
        aggregate_adapters([_update(a, 1), _update({"w": torch.zeros(1, 3)}, 1)])


def test_client_update_trains_and_returns_only_lora_tensors(
    pair: tuple[PeftModel, PeftModel], tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    _, slm = pair
    start = adapter_state(slm)
    update = client_update(slm, tiny_tokenizer, start, EXAMPLES[:2], TRAIN)
    assert update.n_examples == 2
    assert update.adapter.keys() == start.keys()
    assert all("lora_A" in key or "lora_B" in key for key in update.adapter)
    assert any(not torch.equal(update.adapter[k], start[k]) for k in start)


@pytest.mark.parametrize("top_k", [None, 8])
def test_mutual_distillation_trains_both_adapters_and_no_base_weight(
    pair: tuple[PeftModel, PeftModel], tiny_tokenizer: PreTrainedTokenizerFast, top_k: int | None
) -> None:
    llm, slm = pair
    lora_before = {"llm": _lora_params(llm), "slm": _lora_params(slm)}
    base_before = {"llm": _base_params(llm), "slm": _base_params(slm)}
    settings = replace(SETTINGS, kd_top_k=top_k)
    losses = mutual_distillation(llm, slm, tiny_tokenizer, EXAMPLES, settings)
    assert losses["loss"] > 0 and losses["llm_kd"] >= 0 and losses["slm_kd"] >= 0
    for name, model in (("llm", llm), ("slm", slm)):
        lora = [p for n, p in model.named_parameters() if "lora_" in n]
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
        _assert_all_changed(lora_before[name], _lora_params(model))
        after = _base_params(model)
        assert all(torch.equal(base_before[name][n], after[n]) for n in after)


def test_the_kd_terms_reach_both_students(
    make_tiny_llama: Callable[..., LlamaForCausalLM], tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    """A detached student (a bug of the reference code) would make lambda irrelevant to it."""
    results = []
    for kd_lambda in (0.0, 1.0):
        llm, slm = add_lora(make_tiny_llama(3, seed=1), LORA), add_lora(make_tiny_llama(), LORA)
        settings = FedCoLLMSettings(
            kd_lambda=kd_lambda, kd_steps=2, llm_lr=1e-2, slm_lr=1e-2, client=TRAIN, lora=LORA
        )
        mutual_distillation(llm, slm, tiny_tokenizer, EXAMPLES, settings)
        results.append((adapter_state(llm), adapter_state(slm)))
    (llm_0, slm_0), (llm_1, slm_1) = results
    assert any(not torch.allclose(llm_0[k], llm_1[k]) for k in llm_0)
    assert any(not torch.allclose(slm_0[k], slm_1[k]) for k in slm_0)


def test_run_round_returns_the_distilled_slm_adapter_only(
    pair: tuple[PeftModel, PeftModel], tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    llm, slm = pair
    client_slm = copy.deepcopy(slm)  # shared by both clients: each update reloads theta
    theta_before, omega_before = adapter_state(slm), adapter_state(llm)
    clients = [LocalClient(client_slm, EXAMPLES[:2]), LocalClient(client_slm, EXAMPLES[2:])]
    models = ServerModels(llm, slm, tiny_tokenizer)
    result = run_round(models, clients, EXAMPLES[:2], SETTINGS)
    assert result.adapter.keys() == theta_before.keys()
    assert any(not torch.equal(result.adapter[k], theta_before[k]) for k in theta_before)
    for key, tensor in adapter_state(slm).items():  # what goes out is the server's distilled theta
        torch.testing.assert_close(result.adapter[key], tensor)
    omega_after = adapter_state(llm)
    assert any(not torch.equal(omega_after[k], omega_before[k]) for k in omega_before)
    assert result.metrics["clients"] == 2 and result.metrics["client_examples"] == 4
    assert result.metrics["distil_loss"] > 0


def test_fedavg_is_the_same_round_without_distillation(
    pair: tuple[PeftModel, PeftModel], tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    llm, slm = pair
    omega_before = adapter_state(llm)
    clients = [LocalClient(copy.deepcopy(slm), EXAMPLES[:2]), LocalClient(slm, EXAMPLES[2:])]
    fedavg = replace(SETTINGS, distil=False)
    updates: dict[int, ClientUpdate] = {}

    def exchange(theta: dict[str, torch.Tensor], round_index: int) -> dict[int, ClientUpdate]:
        updates.update(local_exchange(clients, tiny_tokenizer, fedavg)(theta, round_index))
        return dict(reversed(updates.items()))  # any arrival order: summed by partition id

    result = server_round(ServerModels(llm, slm, tiny_tokenizer), EXAMPLES[:2], fedavg, 0, exchange)
    expected = aggregate_adapters([updates[0], updates[1]])
    for key, tensor in expected.items():
        torch.testing.assert_close(result.adapter[key], tensor, rtol=0, atol=0)
    assert adapter_state(llm).keys() == omega_before.keys()
    assert all(torch.equal(adapter_state(llm)[k], omega_before[k]) for k in omega_before)
    assert not any(name.startswith("distil_") for name in result.metrics)


def test_every_client_and_round_gets_its_own_seed() -> None:
    seeds = {client_training(TRAIN, k, t).seed for k in range(4) for t in range(3)}
    assert len(seeds) == 12
    assert client_training(TRAIN, 2, 1) == client_training(TRAIN, 2, 1)  # reproducible


def test_a_pair_with_different_vocabularies_is_refused(
    pair: tuple[PeftModel, PeftModel], tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    llm, slm = pair
    check_pair(tiny_tokenizer, tiny_tokenizer, llm, slm)  # same tokenizer and heads: accepted
    other = copy.deepcopy(tiny_tokenizer)
    other.add_tokens(["photosynthesis"])
    with pytest.raises(TokenizerMismatchError, match="tokenizers differ"):
        check_pair(tiny_tokenizer, other, llm, slm)
    narrow = build_tiny_llama(len(tiny_tokenizer) - 8)  # not this tokenizer's model
    narrow.config.name_or_path = "narrow-slm"
    message = rf"has {len(tiny_tokenizer)} tokens but the SLM \(narrow-slm\) predicts only"
    with pytest.raises(TokenizerMismatchError, match=message):
        check_pair(tiny_tokenizer, tiny_tokenizer, llm, narrow)
    with pytest.raises(TokenizerMismatchError, match="resize_token_embeddings"):
        mutual_distillation(llm, add_lora(narrow, LORA), tiny_tokenizer, EXAMPLES, SETTINGS)


def _padded_copy(model: LlamaForCausalLM, extra: int) -> LlamaForCausalLM:
    """``model`` with ``extra`` random head rows past the tokenizer (as Qwen2.5 pads its heads)."""
    vocab = model.config.vocab_size
    padded = build_tiny_llama(vocab + extra, n_layers=model.config.num_hidden_layers, seed=9)
    state = model.state_dict()
    for name, tensor in padded.state_dict().items():
        rows = state[name].shape[0] if tensor.shape[0] == vocab + extra else None
        with torch.no_grad():
            tensor[:rows].copy_(state[name])  # the token rows; the padded rows stay random
    return padded


def test_a_pair_with_padded_heads_and_one_tokenizer_distils_over_the_tokens(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    """Heads of 300 + 24 and 300 + 8 rows, one 300-token tokenizer (Qwen2.5 0.5B/7B's case):
    accepted, and distilled exactly as the unpadded pair, since the padded rows are no token's."""
    vocab = len(tiny_tokenizer)
    bases = build_tiny_llama(vocab, n_layers=3, seed=1), build_tiny_llama(vocab)
    padded = _padded_copy(bases[0], 24), _padded_copy(bases[1], 8)
    assert padded[0].get_output_embeddings().weight.shape[0] == vocab + 24
    check_pair(tiny_tokenizer, tiny_tokenizer, *padded)
    results = []
    for llm, slm in (bases, padded):
        torch.manual_seed(0)
        llm, slm = add_lora(llm, LORA), add_lora(slm, LORA)
        losses = mutual_distillation(llm, slm, tiny_tokenizer, EXAMPLES, SETTINGS)
        results.append((losses, adapter_state(llm), adapter_state(slm)))
    (plain, *plain_adapters), (wide, *wide_adapters) = results
    assert wide["llm_kd"] > 0 and wide["slm_kd"] > 0
    for name in ("llm_ce", "llm_kd", "slm_ce", "slm_kd", "loss"):
        assert wide[name] == pytest.approx(plain[name], rel=1e-5)
    for expected, actual in zip(plain_adapters, wide_adapters, strict=True):
        for key, tensor in expected.items():
            torch.testing.assert_close(actual[key], tensor, rtol=1e-4, atol=1e-6)


# ---- the distillation budget and schedule ----


def test_the_distillation_budget_is_epochs_over_the_public_set_unless_kd_steps_is_set() -> None:
    by_epoch = replace(SETTINGS, kd_steps=None, kd_batch_size=4)
    assert distil_steps(10, by_epoch) == 3  # one pass: 4 + 4 + 2 rows
    assert distil_steps(10, replace(by_epoch, kd_epochs=2)) == 6
    assert distil_steps(1000, by_epoch) == 250  # grows with D_a
    assert distil_steps(1000, replace(by_epoch, kd_steps=7)) == 7  # the override wins


def test_mutual_distillation_runs_kd_epochs_with_the_schedule_over_those_steps(
    pair: tuple[PeftModel, PeftModel],
    tiny_tokenizer: PreTrainedTokenizerFast,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    llm, slm = pair
    client = replace(TRAIN, warmup_ratio=0.008)  # the paper's: rounds up to one warmup step
    settings = replace(SETTINGS, kd_steps=None, kd_epochs=2, kd_batch_size=2, client=client)
    lrs: list[float] = []

    def record(optimiser: torch.optim.Optimizer, *_: object) -> None:
        lrs.append(optimiser.param_groups[0]["lr"])

    handle = register_optimizer_step_pre_hook(record)
    try:
        losses = mutual_distillation(llm, slm, tiny_tokenizer, EXAMPLES, settings)
    finally:
        handle.remove()
    assert losses["steps"] == 4  # 2 passes over 4 public rows in batches of 2
    llm_lrs = lrs[::2]  # the LLM's optimiser steps first, then the SLM's
    # warmup 1 step then cosine over the 3 others: no step at lr 0, and the budget is the real one
    expected = [0.5, 1.0, 0.75, 0.25]
    assert llm_lrs == pytest.approx([settings.llm_lr * f for f in expected])


def test_warmup_counts_the_first_step() -> None:
    factors = [warmup_cosine(s, warmup=2, total=10) for s in range(11)]
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])  # step 0 trains (HF's would be 0)
    assert all(a > b for a, b in itertools.pairwise(factors[2:]))
    assert factors[9] > 0 and factors[10] == pytest.approx(0.0)
    assert warmup_cosine(0, warmup=0, total=5) == 1.0


# ---- dropout-free targets and selective distillation ----


def test_kd_targets_are_taken_without_dropout(
    make_tiny_llama: Callable[..., LlamaForCausalLM], tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    """Twin models (same weights, LoRA dropout 0.5) tie on every row once dropout is off, so
    min-CE selects nothing; a target read off the training pass would differ at random."""
    dropout = replace(LORA, dropout=0.5)
    torch.manual_seed(0)
    llm = add_lora(make_tiny_llama(), dropout)
    with torch.no_grad():  # LoRA's B starts at 0, which would hide its dropout: make it active
        for name, param in llm.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    slm = copy.deepcopy(llm)
    settings = replace(SETTINGS, kd_steps=1, kd_batch_size=4, kd_selection="min_ce")
    losses = mutual_distillation(llm, slm, tiny_tokenizer, EXAMPLES, settings)
    assert losses["llm_kd_share"] == 0.0 and losses["slm_kd_share"] == 0.0
    assert losses["llm_ce"] != losses["slm_ce"]  # the training passes did drop out differently


def _trained_llm(
    make_tiny_llama: Callable[..., LlamaForCausalLM], tokenizer: PreTrainedTokenizerFast
) -> LlamaForCausalLM:
    """A tiny LLM fitted to EXAMPLES: better than a random SLM on every public row."""
    model = make_tiny_llama(3, seed=1)
    train_answer_only(model, tokenizer, EXAMPLES, replace(TRAIN, epochs=15), progress=False)
    return model


def test_min_ce_leaves_the_better_model_untouched_by_kd(
    make_tiny_llama: Callable[..., LlamaForCausalLM], tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    """The LLM is better on every row: with "min_ce" it learns only from its CE (as with
    lambda 0), while the SLM still distils from it on every row; "none" pulls the LLM too."""
    trained = _trained_llm(make_tiny_llama, tiny_tokenizer)
    base = replace(SETTINGS, kd_steps=1, kd_batch_size=4)
    runs = {}
    for name, settings in {
        "min_ce": replace(base, kd_selection="min_ce"),
        "none": base,
        "ce_only": replace(base, kd_lambda=0.0),
    }.items():
        torch.manual_seed(0)
        llm, slm = add_lora(copy.deepcopy(trained), LORA), add_lora(make_tiny_llama(), LORA)
        losses = mutual_distillation(llm, slm, tiny_tokenizer, EXAMPLES, settings)
        runs[name] = (losses, adapter_state(llm), adapter_state(slm))
    losses, llm_min_ce, slm_min_ce = runs["min_ce"]
    assert losses["llm_kd_share"] == 0.0 and losses["slm_kd_share"] == 1.0
    assert losses["llm_kd"] == 0.0 and losses["slm_kd"] > 0
    for key, tensor in runs["ce_only"][1].items():  # no KD gradient reached the LLM
        torch.testing.assert_close(llm_min_ce[key], tensor, rtol=0, atol=0)
    for key, tensor in runs["none"][2].items():  # the SLM distilled as without selection
        torch.testing.assert_close(slm_min_ce[key], tensor, rtol=0, atol=0)
    none_losses, llm_none, _ = runs["none"]
    assert none_losses["llm_kd_share"] == 1.0 and none_losses["slm_kd_share"] == 1.0
    assert any(not torch.equal(llm_none[k], llm_min_ce[k]) for k in llm_none)
