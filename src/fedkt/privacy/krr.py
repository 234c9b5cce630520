"""k-ary randomized response (k-RR) over a fixed candidate set: the most tokens kept at an eps.

Warner 1965; Kairouz, Oh & Viswanath, "Extremal Mechanisms for Local Differential Privacy"
(NeurIPS 2014) for its optimality. For a private token x of a candidate set V of k tokens:

    P(y | x) = e^eps / (e^eps + k - 1)   if y = x    (keep)
             = 1 / (e^eps + k - 1)       otherwise    (uniform over the other k - 1)

Guarantee: P(y | x) / P(y | x') <= e^eps for every x, x', y of V, so each token is eps-DP
against replacing it by ANY other token of its set (neighbours: two prompts that share the
public pattern and differ in that token); a prompt of m perturbed tokens is (m eps)-DP by
sequential composition. Retention bound: an eps-DP mechanism over k outputs cannot keep
tokens with probability above e^eps / (e^eps + k - 1) on average over V (from
P(x'|x) >= e^-eps P(x'|x'), summed over x' != x); k-RR keeps EVERY token with exactly that
probability, whatever its embedding, so it is the best any eps-DP mechanism over V can do. The
price: a replaced token is uniform over V, with no similarity to x (EM's replacements are
similar words, k-RR's are random ones). Embeddings play no part.

The keep probability is computed as 1 / (1 + (k - 1) e^-eps), finite for every eps >= 0
(eps = 0: 1/k, uniform; eps = inf: 1, the token itself).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fedkt.errors import ConfigError
from fedkt.privacy.candidates import RELEASED_IN_CLEAR, PerturbationKit


def krr_keep_probability(k: int, eps: torch.Tensor | float) -> torch.Tensor:
    """P(x | x) = e^eps / (e^eps + k - 1), float64 of eps's shape (a 0-d tensor for a float)."""
    if k < 1:
        raise ConfigError(f"k-RR needs k >= 1 candidates, got {k}.")
    budgets = torch.as_tensor(eps, dtype=torch.float64)
    _check_budgets(budgets)
    return 1.0 / (1.0 + (k - 1) * torch.exp(-budgets))


def krr_probabilities(k: int, rows: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor:
    """(n, k) float64 output distribution of the n input rows (module docstring); eps is a
    scalar or (n,) budgets. The exact probabilities `sample_krr` draws from."""
    rows = rows.to(torch.long)
    keep = krr_keep_probability(k, eps).to(rows.device).expand(rows.shape[0])
    other = (1.0 - keep) / max(k - 1, 1)
    probs = other[:, None].expand(rows.shape[0], k).clone()
    probs.scatter_(1, rows[:, None], keep[:, None])
    return probs


def sample_krr(
    k: int, rows: torch.Tensor, eps: torch.Tensor | float, generator: torch.Generator
) -> torch.Tensor:
    """(n,) output rows of k-RR for n input rows of a k-token set (not token ids).

    Keep with probability e^eps / (e^eps + k - 1), else draw uniformly among the k - 1 other
    rows (a uniform index of 0..k-2, shifted past the input row): exactly `krr_probabilities`
    in O(n), whatever k. The generator must live on the rows' device.
    """
    device = rows.device
    keep = krr_keep_probability(k, eps).to(device).expand(rows.shape[0])
    if rows.numel() == 0:
        return rows.new_empty(0)
    kept = torch.rand(rows.shape[0], generator=generator, device=device, dtype=torch.float64)
    if k == 1:
        return rows.clone()
    other = torch.randint(0, k - 1, rows.shape, generator=generator, device=device)
    other = other + (other >= rows).long()
    return torch.where(kept < keep, rows, other)


def krr_inversion(
    k: int,
    output_rows: torch.Tensor,
    eps: torch.Tensor | float,
    log_prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """(n,) MAP guesses of the input rows behind n k-RR outputs of one set.

    The likelihood is flat over every input but the output itself, so the MAP guess is the
    output when ln π(y) + ln P(keep) >= max_{x != y} ln π(x) + ln P(other), else the prior's
    most likely other token. Uniform prior (None): always the output, right with probability
    P(keep).
    """
    if log_prior is None:
        return output_rows.clone()
    keep = krr_keep_probability(k, eps).to(output_rows.device).expand(output_rows.shape[0])
    log_keep = keep.log()
    log_other = torch.log1p(-keep) - math.log(max(k - 1, 1))
    prior = log_prior.to(device=output_rows.device, dtype=torch.float64)
    top2 = prior.topk(min(2, k))
    best_other = torch.where(
        output_rows == top2.indices[0],
        top2.indices[-1].expand(output_rows.shape),
        top2.indices[0].expand(output_rows.shape),
    )
    own = prior[output_rows] + log_keep
    return torch.where(own >= prior[best_other] + log_other, output_rows, best_other)


def krr_guarantee(kit: PerturbationKit, eps: float) -> dict[str, Any]:
    """k-RR's guarantee at ``eps`` over ``kit`` for a privacy report (module docstring):
    neighbours, what is released in clear, per-token and per-prompt eps, and each set's
    retention, which is also the bound (k-RR attains it)."""
    _check_budgets(torch.tensor(float(eps)))
    return {
        "mechanism": "krr",
        "statement": (
            f"k-ary randomized response: each perturbed token is kept with probability "
            f"e^eps / (e^eps + k - 1), else replaced by a uniformly drawn other token of its "
            f"candidate set (k tokens); it is {eps:g}-DP against replacing it by any other "
            f"token of that set, and a prompt of m perturbed tokens is (m x {eps:g})-DP by "
            "sequential composition. No eps-DP mechanism keeps more tokens on average; "
            "a replacement carries no similarity to the original."
        ),
        "neighbours": (
            "prompts that release the same pattern in clear and differ in any perturbed "
            "tokens; per token: any other token of its candidate set"
        ),
        "released_in_clear": RELEASED_IN_CLEAR[kit.partition],
        "eps": float(eps),
        "eps_per_token": f"{eps:g}",
        "prompt_eps": "the sum of the perturbed tokens' budgets: m x eps",
        "retention_bound": {s.name: float(krr_keep_probability(s.size, eps)) for s in kit.sets},
        "candidate_sets": kit.describe(),
    }


def _check_budgets(budgets: torch.Tensor) -> None:
    if bool((budgets.isnan() | (budgets < 0)).any()):
        raise ConfigError("k-RR: eps must be >= 0 (math.inf for no perturbation).")
