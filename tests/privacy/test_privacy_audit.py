"""Leakage audit: MAP inversion (uniform and public prior) against brute force and its limits,
the prior-only baseline, the answer leak rate and the released pattern's uniqueness."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from fedkt.errors import ConfigError
from fedkt.privacy import (
    CandidateSet,
    PerturbationKit,
    TextPerturber,
    answer_leak_rate,
    build_kit,
    em_probabilities,
    inversion_recovery,
    map_inversion,
    pattern_uniqueness,
    prior_only_recovery,
    public_importance,
    public_unigram,
    unperturbed,
)

TEXTS = [
    "Question: Which gas do plants absorb from the air?\nChoices: oxygen, carbon dioxide",
    "Natalia sold 48 clips in April and half as many in May. #### 72",
    "Scientists launched a new satellite to study the sun and the sea water.",
]


def test_map_inversion_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(7, 3, generator=g)
    cset = CandidateSet("hand", torch.arange(7), emb / emb.norm(dim=-1, keepdim=True))
    outputs = torch.arange(7).repeat(3)
    budgets = torch.tensor([0.5] * 7 + [4.0] * 7 + [12.0] * 7, dtype=torch.float64)
    guesses = map_inversion(cset, outputs, budgets)
    differs_from_output = False
    for y, e, guess in zip(outputs.tolist(), budgets.tolist(), guesses.tolist(), strict=True):
        likelihood = em_probabilities(cset.similarity(torch.arange(7)), e)[:, y]  # P(y | x)
        assert float(likelihood[guess]) >= float(likelihood.max()) * (1 - 1e-5)
        differs_from_output |= guess != y
    assert differs_from_output  # the ln Z term matters: MAP is not nearest-neighbour


def test_recovery_is_one_at_infinite_eps(
    tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit
) -> None:
    for strategy in ("em", "aem"):
        importance = public_importance(tokenizer, TEXTS)
        perturber = TextPerturber(tokenizer, kit, strategy, importance)
        out = perturber.perturb(TEXTS, math.inf, torch.Generator().manual_seed(0))
        rates = inversion_recovery(out, kit, math.inf, strategy)
        assert rates["protected_recovered"] == 1.0 and rates["all_recovered"] == 1.0
        assert rates["tokens_perturbed"] > 0


def test_recovery_is_one_over_k_at_eps_zero(
    tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit
) -> None:
    out = TextPerturber(tokenizer, kit, "em").perturb(
        TEXTS * 60, 0.0, torch.Generator().manual_seed(1)
    )
    rates = inversion_recovery(out, kit, 0.0, "em")
    set_of, _ = kit.lookup(len(tokenizer))
    sizes = torch.tensor([s.size for s in kit.sets], dtype=torch.float64)
    ids = torch.tensor([t for p in out for t in p.source_ids])
    classes = set_of[ids][set_of[ids] >= 0]
    chance = float((1.0 / sizes[classes]).mean())  # expected share if guesses are blind
    n = classes.numel()
    assert abs(rates["protected_recovered"] - chance) < 4 * math.sqrt(chance / n) + 1e-3
    passed = ids.numel() - n
    expected_all = (passed + rates["protected_recovered"] * n) / ids.numel()
    assert rates["all_recovered"] == pytest.approx(expected_all)


def test_recovery_grows_with_eps(tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit) -> None:
    perturber = TextPerturber(tokenizer, kit, "em")
    rates = [
        inversion_recovery(
            perturber.perturb(TEXTS * 20, eps, torch.Generator().manual_seed(2)), kit, eps, "em"
        )["protected_recovered"]
        for eps in (0.0, 10.0, 40.0)
    ]
    assert rates[0] < rates[1] < rates[2]


def test_audit_checks_strategy_and_kit(
    tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit
) -> None:
    out = TextPerturber(tokenizer, kit, "em").perturb(TEXTS, 1.0, torch.Generator())
    with pytest.raises(ConfigError, match="strategy"):
        inversion_recovery(out, kit, 1.0, "aem")
    smaller = build_kit(tokenizer, torch.randn(len(tokenizer), 16), max_words=5)
    with pytest.raises(ConfigError, match="kit"):
        inversion_recovery(out, smaller, 1.0, "em")
    baseline = inversion_recovery(unperturbed(tokenizer, TEXTS), kit, math.inf, "none")
    assert baseline["all_recovered"] == 1.0 and baseline["tokens_perturbed"] == 0.0


def test_answer_leak_rate_by_hand() -> None:
    sent = [
        "The answer involves Carbon\nDioxide, clearly.",  # case and whitespace differ: a leak
        "The value is 14 today.",  # "4" inside "14" is no leak
        "It costs $5 in total.",  # non-word edges still match
        "nothing here",  # empty answer: skipped
        "photosynthesis",  # "synthesis" inside a word is no leak
    ]
    gold = ["carbon dioxide", "4", "$5", "  ", "synthesis"]
    assert answer_leak_rate(sent, gold) == pytest.approx(2 / 4)
    assert answer_leak_rate([], []) == 0.0
    with pytest.raises(ValueError, match="answers"):
        answer_leak_rate(["a"], [])


def test_aem_attacker_without_the_budgets_scores_at_eps_and_the_oracle_at_each_budget(
    tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit
) -> None:
    importance = public_importance(tokenizer, TEXTS)
    out = TextPerturber(tokenizer, kit, "aem", importance).perturb(
        TEXTS * 20, 4.0, torch.Generator().manual_seed(2)
    )
    plain = inversion_recovery(out, kit, 4.0, "aem")
    oracle = inversion_recovery(out, kit, 4.0, "aem", aem_oracle=True)
    as_em = inversion_recovery(
        [replace(p, record=replace(p.record, strategy="em")) for p in out], kit, 4.0, "em"
    )
    assert plain == as_em  # without the oracle, every token is scored at the mean budget eps
    assert 0.0 <= oracle["protected_recovered"] <= 1.0
    assert oracle["tokens_perturbed"] == plain["tokens_perturbed"] > 0


def test_map_inversion_with_a_prior_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(4)
    emb = torch.randn(7, 3, generator=g)
    cset = CandidateSet("hand", torch.arange(7), emb / emb.norm(dim=-1, keepdim=True))
    log_prior = torch.log_softmax(torch.randn(7, generator=g, dtype=torch.float64) * 2, dim=0)
    outputs = torch.arange(7).repeat(2)
    budgets = torch.tensor([0.5] * 7 + [6.0] * 7, dtype=torch.float64)
    guesses = map_inversion(cset, outputs, budgets, log_prior=log_prior)
    for y, e, guess in zip(outputs.tolist(), budgets.tolist(), guesses.tolist(), strict=True):
        likelihood = em_probabilities(cset.similarity(torch.arange(7)), e)[:, y].double()
        posterior = likelihood.log() + log_prior
        assert float(posterior[guess]) >= float(posterior.max()) - 1e-4


def test_prior_only_baseline_and_the_map_attacker_beside_it(
    tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit
) -> None:
    log_prior = -0.1 * torch.arange(len(tokenizer), dtype=torch.float64)  # lowest id likeliest
    out = TextPerturber(tokenizer, kit, "em").perturb(TEXTS * 10, 0.0, torch.Generator())
    baseline = prior_only_recovery(out, kit, log_prior)["prior_only_recovered"]
    set_of, _ = kit.lookup(len(tokenizer))
    ids = torch.tensor([t for p in out for t in p.source_ids])
    inside = ids[set_of[ids] >= 0]
    firsts = torch.tensor([int(s.token_ids.min()) for s in kit.sets])
    assert baseline == pytest.approx(float((inside == firsts[set_of[inside]]).float().mean()))
    # at eps = 0 the output says nothing: MAP under the prior is the prior's guess
    informed = inversion_recovery(out, kit, 0.0, "em", log_prior=log_prior)
    assert informed["protected_recovered"] == pytest.approx(baseline)
    # at a high eps the output says a lot: the attack lifts far above the prior
    unigram = public_unigram(tokenizer, TEXTS)
    sharp = TextPerturber(tokenizer, kit, "em").perturb(TEXTS * 10, 200.0, torch.Generator())
    lifted = inversion_recovery(sharp, kit, 200.0, "em", log_prior=unigram)
    prior_only = prior_only_recovery(sharp, kit, unigram)["prior_only_recovered"]
    assert lifted["protected_recovered"] > prior_only + 0.3
    plain = unperturbed(tokenizer, TEXTS)
    assert prior_only_recovery(plain, kit, log_prior) == {"prior_only_recovered": 1.0}


def test_public_unigram_is_a_smoothed_distribution(tokenizer: PreTrainedTokenizerFast) -> None:
    log_prior = public_unigram(tokenizer, [" the sun", " the sea"])
    the, rock = tokenizer.convert_tokens_to_ids("Ġthe"), tokenizer.convert_tokens_to_ids("Ġrock")
    n, v = 4, len(tokenizer)
    assert float(log_prior.exp().sum()) == pytest.approx(1.0)
    assert float(log_prior[the].exp()) == pytest.approx(3 / (n + v))
    assert float(log_prior[rock].exp()) == pytest.approx(1 / (n + v))
    assert torch.allclose(public_unigram(tokenizer, []), torch.full((v,), -math.log(v)).double())


def test_pattern_uniqueness_by_hand(
    tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit
) -> None:
    prompts = [("The sun.",), ("The sea!",)]
    reference = [("The sea.",), ("The rock.",), ("The sun.",)]  # may hold a prompt itself
    classes = pattern_uniqueness(tokenizer, kit, prompts, reference)
    # "The sun." shares its pattern (two pieces, a word, ".") with "The sea."; "!" is unique
    assert classes["pattern_unique_rate"] == 0.5
    assert classes["pattern_unique_public"] == 0.0 and classes["pattern_reference_rows"] == 3
    vocabulary = build_kit(tokenizer, torch.randn(len(tokenizer), 8), partition="vocabulary")
    counts_only = pattern_uniqueness(tokenizer, vocabulary, prompts, reference)
    assert counts_only["pattern_unique_rate"] == 0.0  # every text is 4 tokens long
    longer = [("The sun.",), ("The sea and the sun!",)]
    assert pattern_uniqueness(tokenizer, vocabulary, longer, [])["pattern_unique_rate"] == 1.0
    space = tokenizer(" ", add_special_tokens=False)["input_ids"][0]
    padded = pattern_uniqueness(tokenizer, vocabulary, longer, [], pad_to=8, pad_id=space)
    assert padded["pattern_unique_rate"] == 0.0  # 4 and 7 tokens both show as 8
    in_clear = pattern_uniqueness(tokenizer, None, prompts, reference)
    assert in_clear["pattern_unique_rate"] == 1.0 and in_clear["pattern_unique_public"] == 1.0
    assert pattern_uniqueness(tokenizer, kit, [], [])["pattern_unique_rate"] == 0.0
