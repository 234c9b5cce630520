"""k-RR, CusText and metric DP against their closed forms: the sampled output distribution
matches the formula (chi-square, fixed seed, p > 0.001), and the eps bound holds for every pair
of neighbouring inputs and every output of a small vocabulary, computed from the exact
probabilities the implementation samples from."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy.stats import chisquare

from fedkt.errors import ConfigError
from fedkt.privacy import CandidateSet, PerturbationKit
from fedkt.privacy.custext import (
    build_clusters,
    cluster_kit,
    custext_keep_probability,
    custext_probabilities,
    kit_clusters,
    sample_custext,
)
from fedkt.privacy.krr import (
    krr_inversion,
    krr_keep_probability,
    krr_probabilities,
    sample_krr,
)
from fedkt.privacy.metric import (
    metric_distance,
    metric_inversion,
    metric_probabilities,
    neighbour_distances,
    sample_metric,
)

DRAWS = 20_000


def unit_set(k: int, d: int = 4, seed: int = 0) -> CandidateSet:
    emb = torch.randn(k, d, generator=torch.Generator().manual_seed(seed))
    return CandidateSet("hand", torch.arange(100, 100 + k), emb / emb.norm(dim=-1, keepdim=True))


def assert_matches(rows: torch.Tensor, expected: list[float]) -> None:
    """Chi-square goodness of fit of the drawn rows to ``expected`` at p > 0.001."""
    counts = torch.bincount(rows, minlength=len(expected)).double()
    want = torch.tensor(expected, dtype=torch.float64) * counts.sum()
    assert counts[want == 0].sum() == 0  # nothing where the formula puts no mass
    support = want > 0
    p_value = chisquare(counts[support].numpy(), want[support].numpy()).pvalue
    assert p_value > 0.001, p_value


def worst_log_ratio(probs: torch.Tensor, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """(len(pairs),) max over outputs y of ln P(y|x) - ln P(y|x') for each (x, x')."""
    log_p = probs.double().log()
    return torch.stack([(log_p[a] - log_p[b]).max() for a, b in pairs])


# ---- k-RR ----------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.0, 0.7, 2.0])
def test_krr_samples_follow_the_formula(eps: float) -> None:
    k, x = 8, 3
    keep = math.exp(eps) / (math.exp(eps) + k - 1)
    expected = [keep if y == x else 1.0 / (math.exp(eps) + k - 1) for y in range(k)]
    rows = sample_krr(k, torch.full((DRAWS,), x), eps, torch.Generator().manual_seed(1))
    assert_matches(rows, expected)
    assert krr_probabilities(k, torch.tensor([x]), eps)[0].tolist() == pytest.approx(expected)


def test_krr_is_eps_dp_for_every_pair_and_output_and_attains_the_bound() -> None:
    k, eps = 7, 1.3
    probs = krr_probabilities(k, torch.arange(k), eps)  # (x, y)
    pairs = list(itertools.permutations(range(k), 2))
    worst = worst_log_ratio(probs, pairs)
    assert float(worst.max()) <= eps + 1e-12
    assert float(worst.min()) == pytest.approx(eps)  # tight for every pair: y = x
    keep = probs.diagonal()
    assert keep.tolist() == pytest.approx([math.exp(eps) / (math.exp(eps) + k - 1)] * k)


def test_krr_keep_probability_limits_and_stability() -> None:
    assert float(krr_keep_probability(10, 0.0)) == pytest.approx(0.1)
    assert float(krr_keep_probability(10, math.inf)) == 1.0
    assert float(krr_keep_probability(49_000, 1e4)) == 1.0  # no overflow
    with pytest.raises(ConfigError):
        krr_keep_probability(10, -1.0)


def test_krr_inversion_trusts_the_output_unless_the_prior_outweighs_it() -> None:
    k = 5
    outputs = torch.tensor([0, 1, 4])
    assert torch.equal(krr_inversion(k, outputs, 0.5), outputs)  # uniform prior
    prior = torch.tensor([0.0, -1.0, -1.0, -1.0, -8.0]).log_softmax(0)
    # eps = 0: the output says nothing, the prior's favourite (row 0) wins everywhere
    assert krr_inversion(k, outputs, 0.0, prior).tolist() == [0, 0, 0]
    # large eps: the output is almost surely the input
    assert krr_inversion(k, outputs, 20.0, prior).tolist() == [0, 1, 4]


# ---- metric DP -----------------------------------------------------------------------------


def test_metric_distance_is_a_metric_and_cosine_distance_is_not() -> None:
    cset = unit_set(9, d=3, seed=2)
    d = metric_distance(cset.unit_embeddings, cset.unit_embeddings)
    e = cset.unit_embeddings.double()
    assert torch.allclose(d, (e[:, None, :] - e[None, :, :]).norm(dim=-1), atol=1e-7)
    off = ~torch.eye(9, dtype=torch.bool)  # = sqrt(2 - 2 cos) for unit vectors
    assert torch.allclose(d[off], (2.0 - 2.0 * (e @ e.T)).sqrt()[off], atol=1e-5)
    assert float(d.diagonal().abs().max()) < 1e-7
    triangle = d[:, None, :] - (d[:, :, None] + d[None, :, :])  # d(a,c) - d(a,b) - d(b,c)
    assert float(triangle.max()) <= 1e-12
    # three directions 60 degrees apart: 1 - cos breaks the triangle inequality
    angles = torch.tensor([0.0, math.pi / 3, 2 * math.pi / 3], dtype=torch.float64)
    points = torch.stack([angles.cos(), angles.sin()], dim=1)
    cosine_distance = 1.0 - points @ points.T
    assert float(cosine_distance[0, 2]) > float(cosine_distance[0, 1] + cosine_distance[1, 2])
    euclid = metric_distance(points, points)
    assert float(euclid[0, 2]) <= float(euclid[0, 1] + euclid[1, 2])


@pytest.mark.parametrize("eps_d", [0.0, 1.5, 6.0])
def test_metric_samples_follow_the_formula(eps_d: float) -> None:
    cset = unit_set(7, seed=3)
    x = 2
    e = cset.unit_embeddings.double()
    weights = [math.exp(-eps_d * float((e[x] - e[y]).norm()) / 2.0) for y in range(7)]
    expected = [w / sum(weights) for w in weights]
    rows = sample_metric(
        cset, torch.full((DRAWS,), x), eps_d, torch.Generator().manual_seed(4), chunk_elements=50
    )
    assert_matches(rows, expected)
    probs = metric_probabilities(cset, torch.tensor([x]), eps_d)[0]
    assert probs.tolist() == pytest.approx(expected, rel=1e-9)


def test_metric_is_d_x_private_for_every_pair_and_output() -> None:
    cset = unit_set(8, seed=5)
    eps_d = 2.5
    probs = metric_probabilities(cset, torch.arange(8), eps_d)
    distance = metric_distance(cset.unit_embeddings, cset.unit_embeddings)
    log_p = probs.log()
    for x, other in itertools.permutations(range(8), 2):
        bound = eps_d * float(distance[x, other])
        assert float((log_p[x] - log_p[other]).max()) <= bound + 1e-9
    # the worst case over all pairs is below 2 eps_d (d <= 2), what a record states
    assert float((log_p[:, None, :] - log_p[None, :, :]).max()) <= 2 * eps_d
    assert probs.diagonal().tolist() == pytest.approx(
        (1.0 / torch.exp(-eps_d * distance / 2.0).sum(dim=1)).tolist()
    )


def test_metric_limits_and_neighbour_distances() -> None:
    cset = unit_set(6, seed=6)
    assert metric_probabilities(cset, torch.tensor([1]), 0.0)[0].tolist() == pytest.approx(
        [1 / 6] * 6
    )
    assert metric_probabilities(cset, torch.tensor([1]), math.inf)[0].tolist() == [
        0.0,
        1.0,
        0.0,
        0.0,
        0.0,
        0.0,
    ]
    distance = metric_distance(cset.unit_embeddings, cset.unit_embeddings)
    distance.fill_diagonal_(math.inf)
    ordered = distance.sort(dim=1).values
    near = neighbour_distances(cset, (1, 3, 100))
    assert set(near) == {1, 3}  # no 100th neighbour in a 6-token set
    assert near[1] == pytest.approx(float(ordered[:, 0].median()))
    assert near[3] == pytest.approx(float(ordered[:, 2].median()))


def test_metric_inversion_is_the_likelihood_argmax() -> None:
    cset = unit_set(6, seed=7)
    eps_d = 3.0
    likelihood = metric_probabilities(cset, torch.arange(6), eps_d)  # (x, y)
    outputs = torch.arange(6)
    expected = likelihood.argmax(dim=0)
    own = likelihood[outputs, outputs] >= likelihood.max(dim=0).values - 1e-12
    expected = torch.where(own, outputs, expected)
    assert torch.equal(metric_inversion(cset, outputs, eps_d, chunk_elements=12), expected)


# ---- CusText -------------------------------------------------------------------------------


def test_clusters_are_a_public_order_partition_of_nearest_neighbours() -> None:
    cset = unit_set(23, seed=8)
    clusters = build_clusters(cset, 4, block=3)
    sizes = clusters.sizes().tolist()
    assert sum(sizes) == 23 and sizes[:-1] == [4] * (len(sizes) - 1) and 4 <= sizes[-1] < 8
    members = clusters.members[clusters.members >= 0]
    assert sorted(members.tolist()) == list(range(23))  # each row exactly once
    for c, row in enumerate(clusters.members):
        assert all(clusters.cluster_of[r] == c for r in row[row >= 0].tolist())
    # the first cluster: row 0 (public order) and its 3 nearest rows by cosine
    similarity = cset.similarity(torch.tensor([0]))[0]
    nearest = similarity.topk(4).indices.sort().values
    assert clusters.members[0, :4].tolist() == nearest.tolist()
    again = build_clusters(cset, 4, block=256)  # the block size changes nothing
    assert torch.equal(again.members, clusters.members)
    small = build_clusters(unit_set(5), 4)  # fewer than 2K rows: one cluster
    assert small.count == 1 and small.sizes().tolist() == [5]
    with pytest.raises(ConfigError):
        build_clusters(cset, 1)


@pytest.mark.parametrize(("inner", "eps"), [("em", 0.0), ("em", 2.0), ("krr", 1.0)])
def test_custext_samples_follow_the_formula(inner: str, eps: float) -> None:
    cset = unit_set(16, seed=9)
    clusters = build_clusters(cset, 4)
    x = 5
    cluster = clusters.members[clusters.cluster_of[x]]
    cluster = cluster[cluster >= 0].tolist()
    e = cset.unit_embeddings
    if inner == "em":
        weights = [math.exp(eps * float(e[x] @ e[y]) / 4.0) for y in cluster]  # Δu = 2
    else:
        weights = [math.exp(eps) if y == x else 1.0 for y in cluster]
    expected = [0.0] * 16
    for y, w in zip(cluster, weights, strict=True):
        expected[y] = w / sum(weights)
    rows = sample_custext(
        cset, clusters, torch.full((DRAWS,), x), eps, torch.Generator().manual_seed(10), inner
    )  # type: ignore[arg-type]
    assert_matches(rows, expected)


@pytest.mark.parametrize("inner", ["em", "krr"])
def test_custext_is_eps_dp_within_a_cluster_and_releases_it(inner: str) -> None:
    cset = unit_set(14, seed=11)
    clusters = build_clusters(cset, 3)
    eps = 1.7
    members, probs = custext_probabilities(cset, clusters, torch.arange(14), eps, inner)  # type: ignore[arg-type]
    dense = torch.zeros(14, 14, dtype=torch.float64)
    dense.scatter_add_(1, members.clamp(min=0), probs)  # padding carries probability 0
    same = [
        (a, b)
        for a, b in itertools.permutations(range(14), 2)
        if clusters.cluster_of[a] == clusters.cluster_of[b]
    ]
    inside = dense.log()
    for a, b in same:
        support = dense[a] > 0
        assert torch.equal(support, dense[b] > 0)  # same cluster, same support
        assert float((inside[a, support] - inside[b, support]).max()) <= eps + 1e-9
    for a, b in itertools.permutations(range(14), 2):  # other clusters: disjoint outputs
        if clusters.cluster_of[a] != clusters.cluster_of[b]:
            assert float((dense[a] * dense[b]).sum()) == 0.0
    keep = custext_keep_probability(cset, clusters, torch.arange(14), eps, inner)  # type: ignore[arg-type]
    assert keep.tolist() == pytest.approx(dense.diagonal().tolist())
    if inner == "krr":  # k-RR inside a cluster attains the bound e^eps / (e^eps + |C| - 1)
        sizes = clusters.sizes()[clusters.cluster_of].double()
        bound = math.exp(eps) / (math.exp(eps) + sizes - 1)
        assert keep.tolist() == pytest.approx(bound.tolist())


def test_custext_clusters_are_cached_per_kit_and_form_a_kit() -> None:
    kit = PerturbationKit((unit_set(12, seed=12),))
    first = kit_clusters(kit, 3)
    assert kit_clusters(kit, 3) is first
    observed = cluster_kit(kit, 3)
    assert observed.describe() == {f"hand/{c}": 3 for c in range(4)}
    with pytest.raises(ConfigError, match="inner"):
        custext_probabilities(kit.sets[0], first[0], torch.tensor([0]), 1.0, "gauss")  # type: ignore[arg-type]
