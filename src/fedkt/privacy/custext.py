"""CusText: a token is replaced within a fixed cluster of its nearest public neighbours.

Chen, Ding, Zhao, Chen, Liu & Wang, "A Customized Text Sanitization Mechanism with
Differential Privacy" (Findings of ACL 2023). Each candidate set V of the kit is cut ONCE, from
public embeddings only, into clusters: walking the set in public order (ascending token id,
i.e. BPE merge order), the first token not yet in a cluster opens one with itself and its
K - 1 nearest (cosine) tokens not yet in a cluster; once fewer than 2K tokens are left, they
all form the last cluster (so clusters hold K tokens, the last K to 2K - 1, a set smaller than
2K is one cluster). It is a partition, not the paper's overlapping top-K lists: with
overlapping lists the output's support would depend on the input in a way no fixed
neighbourhood covers. Inside the cluster C(x) of x the output is drawn by

- ``inner="em"``:  P(y | x) ∝ exp(eps u(x, y) / (2 Δu)) over y ∈ C(x), u the clamped cosine,
  Δu = 2 (as EM, fedkt.privacy.mechanisms);
- ``inner="krr"``: k-RR over C(x): keep with e^eps / (e^eps + |C| - 1), else uniform over
  the rest of C(x) (fedkt.privacy.krr).

Guarantee: eps-DP per token against replacing x by any token of the SAME cluster (for x, x'
in one cluster, P(y|x) <= e^eps P(y|x') for every y); a prompt of m perturbed tokens is
(m eps)-DP against such replacements by sequential composition. Against a token of another
cluster there is no guarantee at all: the output always lies in C(x), so the cluster of every
perturbed token is RELEASED IN CLEAR (beside what the kit's partition releases), and the
sequence of clusters says much of what the text is about. Retention bound: at most
e^eps / (e^eps + |C| - 1) on average over a cluster (the k-RR bound with k = |C|), which
inner="krr" attains for every token; never below 1/|C| (eps = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from fedkt.errors import ConfigError
from fedkt.privacy.candidates import RELEASED_IN_CLEAR, CandidateSet, PerturbationKit
from fedkt.privacy.mechanisms import COSINE_SENSITIVITY

Inner = Literal["em", "krr"]
INNERS: tuple[Inner, ...] = ("em", "krr")
DEFAULT_CLUSTER_SIZE = 20
"""K: the paper's default neighbourhood size."""


@dataclass(frozen=True, eq=False)
class Clusters:
    """A partition of one candidate set's rows: `members[c]` are cluster c's rows (padded
    with -1), `cluster_of[r]` is row r's cluster."""

    size: int  # the K it was built with
    cluster_of: torch.Tensor  # (k,) long
    members: torch.Tensor  # (C, W) long, W = the largest cluster, -1 = padding

    @property
    def count(self) -> int:
        return int(self.members.shape[0])

    def sizes(self) -> torch.Tensor:
        """(C,) long number of rows of each cluster."""
        return (self.members >= 0).sum(dim=1)


def build_clusters(candidates: CandidateSet, size: int, *, block: int = 256) -> Clusters:
    """The greedy public-order partition of the module docstring, for one set.

    Similarities of `block` upcoming anchors are computed in one matrix product; each anchor
    then takes its K - 1 nearest free rows (ties broken by topk, deterministically on one
    machine). Costs about k^2 d / K multiply-adds: seconds for SmolLM2's 49k tokens.
    """
    if size < 2:
        raise ConfigError(f"custext cluster_size must be >= 2, got {size}.")
    k = candidates.size
    embeddings = candidates.unit_embeddings
    device = embeddings.device
    free = torch.ones(k, dtype=torch.bool, device=device)
    groups: list[torch.Tensor] = []
    remaining, start = k, 0
    while remaining >= 2 * size:
        anchors = free[start:].nonzero().squeeze(1)[:block] + start
        similarity = (embeddings[anchors] @ embeddings.T).clamp_(-1.0, 1.0)
        for row, anchor in zip(similarity, anchors.tolist(), strict=True):
            if remaining < 2 * size:
                break
            if not bool(free[anchor]):
                continue
            scores = row.masked_fill(~free, -math.inf)
            scores[anchor] = math.inf  # the anchor opens its own cluster
            chosen = scores.topk(size).indices.sort().values
            free[chosen] = False
            groups.append(chosen)
            remaining -= size
        start = int(anchors[-1]) + 1
    if remaining:
        groups.append(free.nonzero().squeeze(1))  # the last cluster: everything left
    width = max(int(g.numel()) for g in groups)
    members = torch.full((len(groups), width), -1, dtype=torch.long, device=device)
    cluster_of = torch.full((k,), -1, dtype=torch.long, device=device)
    for c, rows in enumerate(groups):
        members[c, : rows.numel()] = rows
        cluster_of[rows] = c
    return Clusters(size, cluster_of, members)


def kit_clusters(kit: PerturbationKit, size: int) -> tuple[Clusters, ...]:
    """`build_clusters` of every set of the kit, built once per kit and size (cached)."""
    return kit.cached(("custext", size), lambda: tuple(build_clusters(s, size) for s in kit.sets))


def cluster_kit(kit: PerturbationKit, size: int) -> PerturbationKit:
    """A kit whose candidate sets are the clusters: what an observer of custext's output
    sees of each perturbed token (its cluster), for `pattern_uniqueness` and the prior-only
    baseline (the prior's best guess within the released cluster). Cached per kit."""

    def build() -> PerturbationKit:
        sets = []
        for candidate_set, clusters in zip(kit.sets, kit_clusters(kit, size), strict=True):
            for c, row in enumerate(clusters.members):
                rows = row[row >= 0]
                sets.append(
                    CandidateSet(
                        f"{candidate_set.name}/{c}",
                        candidate_set.token_ids[rows],
                        candidate_set.unit_embeddings[rows],
                    )
                )
        return PerturbationKit(tuple(sets))

    return kit.cached(("custext-kit", size), build)


def custext_probabilities(
    candidates: CandidateSet,
    clusters: Clusters,
    rows: torch.Tensor,
    eps: torch.Tensor | float,
    inner: Inner = "em",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(members, probs): (n, W) rows of each input's cluster (-1 padded) and the float64
    probability of each (0 on padding), the exact distribution `sample_custext` draws from."""
    device = candidates.unit_embeddings.device
    rows = rows.to(device)
    budgets = torch.as_tensor(eps, dtype=torch.float64, device=device).expand(rows.shape[0])
    if bool((budgets.isnan() | (budgets < 0)).any()):
        raise ConfigError("custext: eps must be >= 0 (math.inf for no perturbation).")
    members = clusters.members[clusters.cluster_of[rows]]
    valid = members >= 0
    infinite = budgets.isinf()
    if inner == "em":
        similarity = cluster_similarity(candidates, rows, members).double()
        scale = torch.where(infinite, torch.zeros_like(budgets), budgets) / (
            2.0 * COSINE_SENSITIVITY
        )
        logits = (similarity * scale[:, None]).masked_fill(~valid, -math.inf)
        probs = torch.softmax(logits, dim=-1)
    elif inner == "krr":
        size = valid.sum(dim=1)
        keep = 1.0 / (1.0 + (size - 1) * torch.exp(-budgets))
        other = (1.0 - keep) / (size - 1).clamp(min=1)
        probs = torch.where(valid, other[:, None], torch.zeros_like(other)[:, None])
        probs = torch.where(members == rows[:, None], keep[:, None], probs)
    else:
        raise ConfigError(f"custext inner mechanism must be one of {list(INNERS)}, got {inner!r}.")
    own = (members == rows[:, None]).double()
    return members, torch.where(infinite[:, None], own, probs)


def sample_custext(
    candidates: CandidateSet,
    clusters: Clusters,
    rows: torch.Tensor,
    eps: torch.Tensor | float,
    generator: torch.Generator,
    inner: Inner = "em",
) -> torch.Tensor:
    """(n,) output rows (of the set, not token ids) drawn within each input's cluster."""
    if rows.numel() == 0:
        return rows.new_empty(0)
    members, probs = custext_probabilities(candidates, clusters, rows, eps, inner)
    picked = torch.multinomial(probs, 1, generator=generator)
    return members.gather(1, picked).squeeze(1)


def custext_keep_probability(
    candidates: CandidateSet,
    clusters: Clusters,
    rows: torch.Tensor,
    eps: torch.Tensor | float,
    inner: Inner = "em",
) -> torch.Tensor:
    """(n,) float64 P(x | x) of each input row: exact, one cluster each (cheap)."""
    members, probs = custext_probabilities(candidates, clusters, rows, eps, inner)
    own = members == rows.to(members.device)[:, None]
    return (probs * own).sum(dim=1)


def custext_retention_bound(clusters: Clusters, rows: torch.Tensor, eps: float) -> torch.Tensor:
    """(n,) the k-RR bound e^eps / (e^eps + |C(x)| - 1) of each input row's cluster."""
    sizes = clusters.sizes()[clusters.cluster_of[rows.to(clusters.members.device)]]
    return 1.0 / (1.0 + (sizes.double() - 1.0) * math.exp(-eps))


def custext_inversion(
    candidates: CandidateSet,
    clusters: Clusters,
    output_rows: torch.Tensor,
    eps: float,
    inner: Inner = "em",
    log_prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """(n,) MAP guesses of the inputs behind n outputs: the attacker knows the cluster (it is
    released) and scores each member x by ln π(x) + ln P(y | x). Ties go to the output."""
    device = candidates.unit_embeddings.device
    output_rows = output_rows.to(device)
    if math.isinf(eps) or output_rows.numel() == 0:
        return output_rows.clone()
    members = clusters.members[clusters.cluster_of[output_rows]]  # (n, W) candidate inputs
    valid = members >= 0
    safe = members.clamp(min=0)
    flat = safe.reshape(-1)
    _, probs = custext_probabilities(candidates, clusters, flat, eps, inner)  # P(. | x)
    probs = probs.reshape(*members.shape, -1)  # (n, W inputs, W outputs), same cluster order
    at = (members == output_rows[:, None]).long().argmax(dim=1)  # where y sits in the cluster
    index = at[:, None, None].expand(*members.shape, 1)
    score = probs.gather(2, index).squeeze(2).log()  # (n, W) ln P(y | x)
    if log_prior is not None:
        score = score + log_prior.to(device=device, dtype=torch.float64)[safe]
    score = score.masked_fill(~valid, -math.inf)
    best = score.max(dim=-1)
    own = score.gather(1, at[:, None]).squeeze(1)
    tied = own >= best.values - 1e-9 * (1.0 + best.values.abs())
    return torch.where(tied, output_rows, members.gather(1, best.indices[:, None]).squeeze(1))


def custext_guarantee(
    kit: PerturbationKit, eps: float, size: int = DEFAULT_CLUSTER_SIZE, inner: Inner = "em"
) -> dict[str, Any]:
    """CusText's guarantee at ``eps`` for a privacy report (module docstring): neighbours,
    what is released in clear (the clusters too), per-token and per-prompt eps, and each
    set's retention bound (the k-RR bound at the clusters' sizes, averaged over the set)."""
    if math.isnan(eps) or eps < 0:
        raise ConfigError(f"custext: eps must be >= 0, got {eps}.")
    clusters = kit_clusters(kit, size)
    bound = {}
    for candidate_set, parts in zip(kit.sets, clusters, strict=True):
        rows = torch.arange(candidate_set.size, device=parts.members.device)
        bound[candidate_set.name] = float(custext_retention_bound(parts, rows, eps).mean())
    inside = (
        "the exponential mechanism (cosine utility, Δu = 2)"
        if inner == "em"
        else "k-ary randomized response"
    )
    return {
        "mechanism": "custext",
        "statement": (
            f"CusText: every candidate set is cut once, from public embeddings in public "
            f"order, into clusters of {size} nearest tokens; each perturbed token is replaced "
            f"within its own cluster by {inside}. It is {eps:g}-DP against replacing it by "
            "any token of the SAME cluster and not protected against tokens of other "
            "clusters: the cluster of every perturbed token is released. A prompt of m "
            f"perturbed tokens is (m x {eps:g})-DP against same-cluster replacements."
        ),
        "neighbours": (
            "prompts that release the same pattern and the same cluster sequence and differ "
            "in any perturbed tokens; per token: any other token of its cluster"
        ),
        "released_in_clear": (
            f"{RELEASED_IN_CLEAR[kit.partition]}; and the custext cluster (one of "
            f"{sum(c.count for c in clusters)}, {size} public nearest neighbours each) of "
            "every perturbed token"
        ),
        "eps": float(eps),
        "eps_per_token": f"{eps:g} (against tokens of the same cluster only)",
        "prompt_eps": "the sum of the perturbed tokens' budgets: m x eps",
        "retention_bound": bound,
        "candidate_sets": kit.describe(),
        "clusters": {s.name: c.count for s, c in zip(kit.sets, clusters, strict=True)},
        "cluster_size": size,
        "inner": inner,
    }


def cluster_similarity(
    candidates: CandidateSet, rows: torch.Tensor, members: torch.Tensor
) -> torch.Tensor:
    """(n, W) clamped cosine of each input row with its cluster's members (0 on padding)."""
    embeddings = candidates.unit_embeddings
    anchors = embeddings[rows][:, :, None]  # (n, d, 1)
    others = embeddings[members.clamp(min=0)]  # (n, W, d)
    similarity = torch.bmm(others, anchors).squeeze(-1).clamp_(-1.0, 1.0)
    return similarity.masked_fill(members < 0, 0.0)
