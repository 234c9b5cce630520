"""The exponential mechanism and AEM budget splits against closed forms and exhaustive DP checks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from fedkt.errors import ConfigError
from fedkt.privacy import (
    COSINE_SENSITIVITY,
    CandidateSet,
    allocate_budget,
    allocate_segments,
    em_probabilities,
    sample_em,
)


def chi2_critical(df: int, z: float = 3.09) -> float:
    """Wilson-Hilferty upper quantile of chi-square(df); z = 3.09 is the 0.999 quantile."""
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + z * math.sqrt(h)) ** 3


def chi2_statistic(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs.double() * counts.sum()
    return float(((counts.double() - expected) ** 2 / expected).sum())


def hand_set(k: int = 5, d: int = 3, seed: int = 0) -> CandidateSet:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(k, d, generator=g)
    return CandidateSet("hand", torch.arange(100, 100 + k), emb / emb.norm(dim=-1, keepdim=True))


def test_cosine_sensitivity_is_two() -> None:
    assert COSINE_SENSITIVITY == 2.0


def test_em_probabilities_closed_form() -> None:
    sim = torch.tensor([[1.0, 0.5, -1.0], [0.0, 1.0, 0.2]])
    probs = em_probabilities(sim, torch.tensor(3.0))
    for row_sim, row_p in zip(sim.tolist(), probs.tolist(), strict=True):
        weights = [math.exp(3.0 * u / (2 * 2.0)) for u in row_sim]  # Δu = 2
        assert row_p == pytest.approx([w / sum(weights) for w in weights], rel=1e-5)
    assert probs.sum(-1).tolist() == pytest.approx([1.0, 1.0])


def test_em_probabilities_limits_and_per_row_budgets() -> None:
    sim = torch.tensor([[0.2, 1.0, -0.3, 0.9], [1.0, 0.1, 0.0, -1.0], [0.3, 0.3, 1.0, 0.3]])
    probs = em_probabilities(sim, torch.tensor([0.0, math.inf, 1e6]))
    assert probs[0].tolist() == pytest.approx([0.25] * 4)  # eps = 0: uniform
    assert probs[1].tolist() == [1.0, 0.0, 0.0, 0.0]  # eps = inf: the token itself
    assert probs[2].tolist() == pytest.approx([0.0, 0.0, 1.0, 0.0])  # huge eps: stable, no NaN
    assert not bool(probs.isnan().any())


def test_em_probabilities_rejects_negative_eps() -> None:
    with pytest.raises(ConfigError, match="eps"):
        em_probabilities(torch.zeros(2, 3), torch.tensor([1.0, -0.5]))


def test_em_is_eps_dp_for_every_pair_of_inputs() -> None:
    cset = hand_set(k=6, d=4)
    eps = 2.5
    log_p = em_probabilities(cset.similarity(torch.arange(6)), eps).log()  # (x, y)
    worst = (log_p[:, None, :] - log_p[None, :, :]).max()
    assert float(worst) <= eps + 1e-5


def test_reference_sensitivity_one_understates_epsilon() -> None:
    """Antipodal tokens, one of them in a crowd: with Δu = 1 the loss exceeds the stated eps."""
    emb = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.9, 0.436], [0.9, -0.436]])
    cset = CandidateSet("crowd", torch.arange(4), emb / emb.norm(dim=-1, keepdim=True))
    eps = 2.0
    worst = {}
    for sensitivity in (COSINE_SENSITIVITY, 1.0):
        log_p = em_probabilities(cset.similarity(torch.arange(4)), eps, sensitivity).log()
        worst[sensitivity] = float((log_p[:, None, :] - log_p[None, :, :]).max())
    assert worst[COSINE_SENSITIVITY] <= eps + 1e-5
    assert worst[1.0] > eps + 0.1


def test_em_sampling_frequencies_match_probabilities() -> None:
    cset = hand_set(k=5)
    n = 20_000
    probs = em_probabilities(cset.similarity(torch.tensor([2])), 3.0)[0]
    rows = sample_em(cset, torch.full((n,), 2), 3.0, torch.Generator().manual_seed(1))
    counts = torch.bincount(rows, minlength=5)
    assert chi2_statistic(counts, probs) < chi2_critical(4)
    assert not torch.allclose(probs, torch.full((5,), 0.2), atol=0.02)  # not trivially uniform


def test_em_sampling_at_eps_zero_is_uniform() -> None:
    cset = hand_set(k=5)
    rows = sample_em(cset, torch.arange(5).repeat(2000), 0.0, torch.Generator().manual_seed(2))
    counts = torch.bincount(rows, minlength=5)
    assert chi2_statistic(counts, torch.full((5,), 0.2)) < chi2_critical(4)


def test_sample_em_in_row_blocks_keeps_the_distribution() -> None:
    cset = hand_set(k=5)
    inputs = torch.arange(5).repeat(2000)
    rows = sample_em(cset, inputs, 2.0, torch.Generator().manual_seed(3), chunk_elements=7)
    marginal = em_probabilities(cset.similarity(torch.arange(5)), 2.0).mean(0)
    assert chi2_statistic(torch.bincount(rows, minlength=5), marginal) < chi2_critical(4)
    for x in range(5):  # and per input row, the conditional law
        picked = torch.bincount(rows[inputs == x], minlength=5)
        probs = em_probabilities(cset.similarity(torch.tensor([x])), 2.0)[0]
        assert chi2_statistic(picked, probs) < chi2_critical(4)


def test_allocate_budget_sums_and_shares() -> None:
    importance = torch.tensor([1.0, 3.0, 0.0, 4.0])
    budgets = allocate_budget(importance, 8.0, floor=0.2)
    assert float(budgets.sum()) == pytest.approx(8.0, rel=1e-15)
    expected = [8.0 * (0.8 * w / 8.0 + 0.2 / 4) for w in (1.0, 3.0, 0.0, 4.0)]
    assert budgets.tolist() == pytest.approx(expected)
    assert float(budgets.min()) >= 0.2 * 8.0 / 4 - 1e-12  # the floor: nobody gets 0


def test_allocate_budget_edge_cases() -> None:
    assert allocate_budget(torch.zeros(3), 3.0).tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert allocate_budget(torch.tensor([5.0]), 2.0).tolist() == [2.0]
    assert allocate_budget(torch.tensor([1.0, 2.0]), math.inf).tolist() == [math.inf] * 2
    assert allocate_budget(torch.empty(0), 3.0).numel() == 0
    odd = torch.rand(37, generator=torch.Generator().manual_seed(0))
    assert math.fsum(allocate_budget(odd, 0.3, floor=0.0).tolist()) == pytest.approx(0.3, rel=1e-14)


@pytest.mark.parametrize(
    ("importance", "total", "floor"),
    [
        (torch.tensor([1.0, -1.0]), 1.0, 0.1),
        (torch.tensor([1.0]), -1.0, 0.1),
        (torch.tensor([1.0]), 1.0, 1.5),
        (torch.tensor([[1.0]]), 1.0, 0.1),
    ],
)
def test_allocate_budget_rejects_bad_arguments(
    importance: torch.Tensor, total: float, floor: float
) -> None:
    with pytest.raises(ConfigError):
        allocate_budget(importance, total, floor=floor)


def test_allocate_segments_matches_per_prompt_calls() -> None:
    weights = torch.tensor([1.0, 2.0, 3.0, 0.5, 0.5, 7.0])
    segment = torch.tensor([0, 0, 0, 2, 2, 2])
    totals = torch.tensor([3.0, 1.0, 6.0], dtype=torch.float64)
    batched = allocate_segments(weights, segment, totals, floor=0.1)
    assert batched[:3].tolist() == pytest.approx(allocate_budget(weights[:3], 3.0).tolist())
    assert batched[3:].tolist() == pytest.approx(allocate_budget(weights[3:], 6.0).tolist())


def _prompt_log_probs(
    cset: CandidateSet, importance: torch.Tensor, total: float, m: int
) -> tuple[list[tuple[int, ...]], torch.Tensor, list[torch.Tensor]]:
    """log P(y | x) for every prompt x and output y of m tokens from `cset`: (k^m, k^m)."""
    k = cset.size
    prompts = list(itertools.product(range(k), repeat=m))
    log_p = torch.zeros(len(prompts), len(prompts), dtype=torch.float64)
    budgets_of = []
    for a, x in enumerate(prompts):
        budgets = allocate_budget(importance[list(x)], total, floor=0.1)
        budgets_of.append(budgets)
        per_token = em_probabilities(cset.similarity(torch.tensor(x)), budgets).double().log()
        for b, y in enumerate(prompts):
            log_p[a, b] = sum(per_token[i, y[i]] for i in range(m))
    return prompts, log_p, budgets_of


def test_aem_prompt_is_total_dp_although_the_split_depends_on_the_tokens() -> None:
    """Exhaustive check of the proof in fedkt.privacy.mechanisms on a 3-token, 3-word world."""
    cset = hand_set(k=3, d=3, seed=5)
    importance = torch.tensor([0.2, 1.0, 6.0])  # very unequal, so the split really moves
    total = 2.0
    prompts, log_p, budgets = _prompt_log_probs(cset, importance, total, m=3)
    worst = float((log_p[:, None, :] - log_p[None, :, :]).max())
    assert worst <= total + 1e-5
    # single-token neighbours: bounded by the larger of the changed token's two budgets
    for a, b in itertools.permutations(range(len(prompts)), 2):
        diff = [i for i in range(3) if prompts[a][i] != prompts[b][i]]
        if len(diff) == 1:
            j = diff[0]
            bound = max(float(budgets[a][j]), float(budgets[b][j]))
            assert float((log_p[a] - log_p[b]).max()) <= bound + 1e-5
