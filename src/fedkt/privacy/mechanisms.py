"""The exponential mechanism over a fixed candidate set, and adaptive (AEM) budget splits.

Exponential mechanism (McSherry & Talwar 2007) for one private token x of a candidate set V:

    P(y | x) = exp(eps * u(x, y) / (2 * Δu)) / Σ_{y' ∈ V} exp(eps * u(x, y') / (2 * Δu))

u is the cosine similarity of the two tokens' public input embeddings, so u ∈ [-1, 1] and the
sensitivity Δu = max_{x, x', y} |u(x, y) - u(x', y)| = 2 (`COSINE_SENSITIVITY`). The FedCoT
reference code used Δu = 1 with cosine, which silently doubles the real epsilon. The output is
eps-DP against replacing x by any other token of V; V is fixed before any private text is seen.

Adaptive budgets (fedkt's reading of FedCoT v2's "adaptive EM"; the paper's text is not
available). A prompt has m perturbed tokens x_1..x_m; which positions are perturbed, and from
which candidate set, is public (the output reveals it), so m is public. AEM splits a prompt total
T (= m * eps, so EM and AEM compare at equal prompt epsilon) as e_i = T * share_i with
share_i = (1 - floor) * w_i / Σ_j w_j + floor / m, w_i = importance[x_i] (a public IDF score).

Why the split is T-DP although it depends on the private tokens. Neighbouring prompts x, x' share
the public pattern and may differ at every perturbed position (the relation under which fixed
budgets compose to Σ e_i). Two facts about EM with a utility whose range is at most Δu:
  (A) same input, budgets e and e': |ln P_e(y|x) - ln P_e'(y|x)| <= |e - e'| / 2, because
      d/de ln P_e(y|x) = (u(x, y) - E_{P_e}[u(x, .)]) / (2 Δu) lies in [-1/2, 1/2];
  (B) same budget e, inputs x and x': |ln P_e(y|x) - ln P_e(y|x')| <= e (the EM guarantee).
At position i change the budget and the input in the cheaper order:
  |ln P_{e_i}(y_i|x_i) - ln P_{e_i'}(y_i|x_i')| <= min(e_i, e_i') + |e_i - e_i'| / 2
                                                  = (e_i + e_i') / 2.
Tokens are sampled independently given the budgets, so the prompt's privacy loss is at most
Σ_i (e_i + e_i') / 2 = (T + T) / 2 = T. What makes this work is that the budgets sum to exactly T
for EVERY input, not that the importance score is public: any allocation rule with that property
is T-DP. Public matters for two other things: (1) the importance TABLE must not be computed from
the private data set, or one prompt's tokens would move other prompts' budgets, outside this
per-prompt argument (hence IDF on public text); (2) the realised per-token budgets reveal the
importance of the private tokens, so `eps_per_token` of an AEM record stays on the client; only
the prompt total (a function of the public m) may be published.
For one changed token (single-token neighbours) the same steps give (e_j + e_j')/2 +
Σ_{i≠j} |e_i - e_i'|/2, which for proportional shares equals max(e_j, e_j'): AEM's guarantee for a
single token is the largest budget that token could have received, not its realised e_j.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fedkt.errors import ConfigError
from fedkt.privacy.candidates import RELEASED_IN_CLEAR, PerturbationKit
from fedkt.privacy.krr import krr_keep_probability

COSINE_SENSITIVITY: float = 2.0
"""Δu of the cosine utility: u ∈ [-1, 1]. (The reference code wrongly used 1.)"""


def check_eps(eps: float, name: str = "eps") -> float:
    """`eps` as a float, or ConfigError naming `name` when it is negative or NaN."""
    value = float(eps)
    if math.isnan(value) or value < 0:
        raise ConfigError(
            f"{name} must be a number >= 0 (math.inf for no perturbation), got {eps!r}."
        )
    return value


def em_probabilities(
    similarity: torch.Tensor,
    eps: torch.Tensor | float,
    sensitivity: float = COSINE_SENSITIVITY,
) -> torch.Tensor:
    """Exponential-mechanism output probabilities, (n, k) float32, rows summing to 1.

    similarity: (n, k) utility u(x_r, y) of each candidate y for the n inputs; eps: a scalar or
    (n,) per-row budgets. P[r, y] = softmax_y(eps_r * u[r, y] / (2 * sensitivity)) (softmax
    subtracts the row maximum, i.e. logsumexp-stable for any eps). eps = inf gives a one-hot on
    the row's highest utility (the token itself for cosine), eps = 0 the uniform distribution.
    """
    if similarity.dim() != 2 or similarity.shape[1] == 0:
        raise ValueError(f"similarity must be (n, k) with k >= 1, got {tuple(similarity.shape)}.")
    if sensitivity <= 0:
        raise ConfigError(f"sensitivity must be > 0, got {sensitivity}.")
    budgets = torch.as_tensor(eps, dtype=torch.float32, device=similarity.device)
    budgets = budgets.expand(similarity.shape[0]) if budgets.dim() == 0 else budgets
    if budgets.shape != similarity.shape[:1]:
        raise ValueError(
            f"eps must be a scalar or ({similarity.shape[0]},), got {tuple(budgets.shape)}."
        )
    if bool((budgets.isnan() | (budgets < 0)).any()):
        raise ConfigError("eps must be >= 0 for every row of em_probabilities, got a negative/NaN.")
    infinite = budgets.isinf()
    scale = torch.where(infinite, torch.zeros_like(budgets), budgets) / (2.0 * sensitivity)
    probs = torch.softmax(similarity.float() * scale[:, None], dim=-1)
    if bool(infinite.any()):
        one_hot = torch.zeros_like(probs)
        one_hot.scatter_(1, similarity.argmax(dim=-1, keepdim=True), 1.0)
        probs = torch.where(infinite[:, None], one_hot, probs)
    return probs


def allocate_budget(
    importance: torch.Tensor, eps_total: float, *, floor: float = 0.1
) -> torch.Tensor:
    """AEM per-token budgets of one prompt: (m,) float64, >= 0, summing to `eps_total`.

    share_i = (1 - floor) * importance_i / Σ importance + floor / m (uniform when all
    importances are 0), budget_i = eps_total * share_i; the floor keeps every token's budget at
    least floor * eps_total / m, so no token becomes pure noise. The rounding residue is put on
    the largest budget so the float64 sum is eps_total to the last ulp. eps_total = inf gives inf
    everywhere; m = 0 gives an empty tensor (nothing spent). See the module docstring for why any
    rule whose budgets always sum to eps_total keeps the prompt eps_total-DP.
    """
    weights = check_importance(importance, "importance")
    segment = torch.zeros(weights.shape[0], dtype=torch.long, device=weights.device)
    total = torch.tensor([check_eps(eps_total, "eps_total")], dtype=torch.float64)
    return allocate_segments(weights, segment, total.to(weights.device), floor=floor)


def allocate_segments(
    importance: torch.Tensor, segment: torch.Tensor, totals: torch.Tensor, *, floor: float = 0.1
) -> torch.Tensor:
    """`allocate_budget` for many prompts at once (the batched form TextPerturber uses).

    importance: (N,) non-negative weights of all perturbed tokens; segment: (N,) long, the prompt
    index of each token; totals: (S,) float64 budget of each prompt. Returns (N,) float64 budgets,
    each prompt's summing to its total.
    """
    if not 0.0 <= floor <= 1.0:
        raise ConfigError(f"floor must be in [0, 1], got {floor}.")
    weights = importance.to(torch.float64)
    n_segments = totals.shape[0]
    if weights.numel() == 0:
        return weights
    counts = torch.bincount(segment, minlength=n_segments).to(torch.float64)
    sums = torch.zeros(n_segments, dtype=torch.float64, device=weights.device)
    sums.index_add_(0, segment, weights)
    count, total = counts[segment], sums[segment]
    proportional = torch.where(total > 0, weights / total.clamp_min(1e-300), 1.0 / count)
    budgets = totals[segment] * ((1.0 - floor) * proportional + floor / count)
    residual = totals - torch.zeros_like(totals).index_add_(0, segment, budgets)
    largest = _first_argmax_per_segment(budgets, segment, n_segments)
    has_tokens = counts > 0
    budgets[largest[has_tokens]] += residual[has_tokens].nan_to_num(0.0, 0.0, 0.0)
    return torch.where(totals[segment].isinf(), torch.full_like(budgets, math.inf), budgets)


def _first_argmax_per_segment(
    values: torch.Tensor, segment: torch.Tensor, n_segments: int
) -> torch.Tensor:
    """(S,) index of the first maximal value of each segment (garbage for empty segments)."""
    peak = torch.full((n_segments,), -math.inf, dtype=values.dtype, device=values.device)
    peak = peak.scatter_reduce(0, segment, values, reduce="amax")
    positions = torch.arange(values.shape[0], device=values.device)
    candidates = torch.where(values == peak[segment], positions, values.shape[0])
    first = torch.full((n_segments,), values.shape[0], dtype=torch.long, device=values.device)
    return first.scatter_reduce(0, segment, candidates, reduce="amin")


def check_importance(importance: torch.Tensor, name: str) -> torch.Tensor:
    """`importance` as float64, or ConfigError naming `name` unless 1-D, finite and >= 0."""
    if importance.dim() != 1:
        raise ConfigError(f"{name} must be a 1-D tensor, got shape {tuple(importance.shape)}.")
    weights = importance.to(torch.float64)
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ConfigError(f"{name} must be finite and >= 0 (e.g. public_importance(...)).")
    return weights


def em_guarantee(kit: PerturbationKit, eps: float, *, adaptive: bool = False) -> dict[str, Any]:
    """EM's (``adaptive``: AEM's) guarantee at ``eps`` over ``kit``, in words and numbers, for
    a privacy report: which inputs are neighbours, what is released in clear, per-token and
    per-prompt eps, and the retention bound of each candidate set (the k-RR bound
    e^eps / (e^eps + k - 1), which no eps-DP mechanism over k tokens beats on average)."""
    eps = check_eps(eps)
    if adaptive:
        statement = (
            f"Adaptive EM: each prompt's total m x {eps:g} over its m perturbed tokens is split "
            "by public importance (IDF); the prompt is (m x eps)-DP against changing any of "
            "its perturbed tokens, each within its candidate set (cosine utility, Δu = 2). "
            "A single token is protected by the largest budget it could have received, not "
            "its realised one, and the realised budgets stay on the client."
        )
        per_token = f"{eps:g} on average; each token's realised budget stays on the client"
    else:
        statement = (
            f"Exponential mechanism: each perturbed token is {eps:g}-DP against replacing it "
            "by any other token of its candidate set (cosine utility, Δu = 2); a prompt of m "
            f"perturbed tokens is (m x {eps:g})-DP by sequential composition."
        )
        per_token = f"{eps:g}"
    return {
        "mechanism": "aem" if adaptive else "em",
        "statement": statement,
        "neighbours": (
            "prompts that release the same pattern in clear and differ in any perturbed "
            "tokens; per token: any other token of its candidate set"
        ),
        "released_in_clear": RELEASED_IN_CLEAR[kit.partition],
        "eps": eps,
        "eps_per_token": per_token,
        "prompt_eps": "the sum of the perturbed tokens' budgets: m x eps",
        "retention_bound": {s.name: float(krr_keep_probability(s.size, eps)) for s in kit.sets},
        "candidate_sets": kit.describe(),
    }
