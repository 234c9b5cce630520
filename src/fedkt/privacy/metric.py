"""Metric DP (d_X-privacy) over a fixed candidate set: the exponential form with a true metric.

Chatzikokolakis, Andrés, Bordenabe & Palamidessi, "Broadening the Scope of Differential
Privacy Using Metrics" (PETS 2013); for words, Feyisetan et al., "Privacy- and Utility-
Preserving Textual Analysis via Calibrated Multivariate Perturbations" (WSDM 2020), which
adds multivariate Laplace noise to the embedding and takes the nearest word. fedkt samples the
exponential form over the candidate set instead, whose probabilities are exact and testable:

    P(y | x) = exp(-eps_d d(x, y) / 2) / Σ_{y' ∈ V} exp(-eps_d d(x, y') / 2)

with d(x, y) = ||e_x - e_y|| the Euclidean distance of the tokens' unit embeddings, i.e.
sqrt(2 - 2 cos(x, y)) ∈ [0, 2]. That is a metric (cosine DISTANCE 1 - cos is not: it breaks
the triangle inequality), and it is computed as a Euclidean distance in float64, so the
triangle inequality holds to rounding.

Guarantee (d_X-privacy): for every x, x', y of V,

    P(y | x) <= exp(eps_d d(x, x')) P(y | x'),

because the numerators differ by at most exp(eps_d d(x, x') / 2) (triangle inequality) and so
do the normalisers. Neighbours are ANY two tokens of the set, the bound scaling with their
distance: against the j-th nearest neighbour x_j of x the token is (eps_d d(x, x_j))-DP, and
against any token at all (2 eps_d)-DP, since d <= 2: that worst case is what a PrivacyRecord
records per token, so prompt eps sums 2 eps_d over the m perturbed tokens (and, in metric
terms, the prompt is eps_d-d_X-private for the sum of the per-token distances).
Retention: x is kept with probability 1 / Σ_y exp(-eps_d d(x, y) / 2); a d_X-private mechanism
that keeps every token with probability at least r has r <= 1 / Σ_y exp(-eps_d d(x, y)) for
every x (from P(y|x) >= exp(-eps_d d(x, y)) P(y|y), summed over y != x).
Unlike EM (Δu = 2 for any pair) the guarantee is weak between distant tokens only where
eps_d is large: `neighbour_distances` says what eps_d means against near neighbours.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch

from fedkt.errors import ConfigError
from fedkt.privacy.candidates import RELEASED_IN_CLEAR, CandidateSet, PerturbationKit

METRIC_DIAMETER: float = 2.0
"""The largest distance between two unit vectors: eps_d * 2 is the worst-case per-token eps."""

NEIGHBOUR_RANKS: tuple[int, ...] = (1, 10, 100)
"""The j-th nearest neighbours whose eps (eps_d * d(x, x_j)) a report states."""


def metric_distance(
    anchors: torch.Tensor, candidates: torch.Tensor, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """(n, k) Euclidean distances between n anchor and k candidate vectors.

    sqrt(max(0, |a|^2 + |b|^2 - 2 a.b)), in float64 by default (what the mechanism samples
    with): for unit vectors, sqrt(2 - 2 cos). The audit passes float32 (an estimate, 4x
    cheaper over a k x k pass; near d = 0 it errs by ~1e-3).
    """
    a = anchors.to(dtype)
    b = candidates.to(device=a.device, dtype=dtype)
    squared = (a * a).sum(-1)[:, None] + (b * b).sum(-1)[None, :] - 2.0 * (a @ b.T)
    return squared.clamp_(min=0.0).sqrt_()


def metric_probabilities(
    candidates: CandidateSet, rows: torch.Tensor, eps_d: torch.Tensor | float
) -> torch.Tensor:
    """(n, k) float64 P(y | x) of the module docstring for n input rows of one set; eps_d is a
    scalar or (n,) budgets. eps_d = 0: uniform; eps_d = inf: the input itself."""
    device = candidates.unit_embeddings.device
    rows = rows.to(device)
    budgets = _budgets(eps_d, rows.shape[0], device)
    embeddings = candidates.unit_embeddings
    distance = metric_distance(embeddings[rows], embeddings)
    infinite = budgets.isinf()
    scale = torch.where(infinite, torch.zeros_like(budgets), budgets) / 2.0
    probs = torch.softmax(-distance * scale[:, None], dim=-1)
    if bool(infinite.any()):
        one_hot = torch.zeros_like(probs)
        one_hot.scatter_(1, rows[:, None], 1.0)
        probs = torch.where(infinite[:, None], one_hot, probs)
    return probs


def sample_metric(
    candidates: CandidateSet,
    rows: torch.Tensor,
    eps_d: torch.Tensor | float,
    generator: torch.Generator,
    *,
    chunk_elements: int,
) -> torch.Tensor:
    """(n,) output rows drawn from `metric_probabilities`, max(1, chunk_elements // k) rows
    per multinomial (float64 probabilities). The generator must live on the set's device."""
    device = candidates.unit_embeddings.device
    rows = rows.to(device)
    budgets = _budgets(eps_d, rows.shape[0], device)
    step = max(1, chunk_elements // candidates.size)
    picked = [
        torch.multinomial(
            metric_probabilities(
                candidates, rows[start : start + step], budgets[start : start + step]
            ),
            1,
            generator=generator,
        ).squeeze(1)
        for start in range(0, rows.shape[0], step)
    ]
    return torch.cat(picked) if picked else rows.new_empty(0)


def neighbour_distances(
    candidates: CandidateSet,
    ranks: tuple[int, ...] = NEIGHBOUR_RANKS,
    *,
    sample: int = 1024,
) -> dict[int, float]:
    """{j: median over the set of d(x, x_j)}, x_j the j-th nearest OTHER token of x.

    The median is over `sample` rows evenly spaced through the set (public order: all of
    them for a small set), so it costs sample x k distances, not k^2. Ranks beyond k - 1 are
    left out. Data-independent: eps_d * d_j is the eps against a typical j-th neighbour.
    """
    return _sampled_profile(candidates, ranks, sample, eps_d=None)[0]


def metric_guarantee(
    kit: PerturbationKit,
    eps_d: float,
    *,
    ranks: tuple[int, ...] = NEIGHBOUR_RANKS,
    sample: int = 256,
) -> dict[str, Any]:
    """d_X-privacy's guarantee at ``eps_d`` for a privacy report (module docstring):
    neighbours, what is released in clear, per-token and per-prompt eps, per set the eps
    against the j-th nearest neighbours (eps_d x median d(x, x_j)) and the retention bound
    (median over `sample` evenly spaced tokens of 1 / Σ_y exp(-eps_d d(x, y)))."""
    eps_d = float(eps_d)
    if math.isnan(eps_d) or eps_d < 0:
        raise ConfigError(f"metric DP: eps_d must be >= 0, got {eps_d}.")
    against: dict[str, dict[str, float]] = {}
    bound: dict[str, float] = {}
    for candidate_set in kit.sets:
        distances, retention = _sampled_profile(candidate_set, ranks, sample, eps_d)
        against[candidate_set.name] = {f"j={j}": eps_d * d for j, d in distances.items()}
        bound[candidate_set.name] = retention
    worst = METRIC_DIAMETER * eps_d
    return {
        "mechanism": "metric",
        "statement": (
            f"Metric DP (d_X-privacy), exponential form over the candidate set with "
            f"d = sqrt(2 - 2 cos) (Euclidean distance of unit embeddings): for any two "
            f"tokens x, x' of a set and any output, P(y|x) <= exp({eps_d:g} d(x, x')) "
            f"P(y|x'). Against the j-th nearest neighbour a token is (eps_d d(x, x_j))-DP, "
            f"against any token of its set at worst {worst:g}-DP (d <= 2); a prompt of m "
            f"perturbed tokens is (m x {worst:g})-DP at worst, and {eps_d:g}-d_X-private "
            "for the sum of the per-token distances."
        ),
        "neighbours": (
            "prompts that release the same pattern in clear and differ in any perturbed "
            "tokens; the bound grows with the embedding distance of the replaced tokens"
        ),
        "released_in_clear": RELEASED_IN_CLEAR[kit.partition],
        "eps": eps_d,
        "eps_d": eps_d,
        "eps_per_token": f"{worst:g} against any token of the set (2 eps_d); less for near ones",
        "eps_vs_neighbour": against,
        "prompt_eps": "the sum of the perturbed tokens' worst-case budgets: m x 2 eps_d",
        "retention_bound": bound,
        "candidate_sets": kit.describe(),
    }


def _sampled_profile(
    candidates: CandidateSet, ranks: tuple[int, ...], sample: int, eps_d: float | None
) -> tuple[dict[int, float], float]:
    """({j: median d(x, x_j)}, median 1 / Σ_y exp(-eps_d d(x, y)) or nan without eps_d) over
    `sample` rows evenly spaced through the set."""
    k = candidates.size
    rows = torch.linspace(0, k - 1, min(sample, k)).round().long().unique()
    rows = rows.to(candidates.unit_embeddings.device)
    embeddings = candidates.unit_embeddings
    distance = metric_distance(embeddings[rows], embeddings)
    retention = math.nan
    if eps_d is not None:
        if math.isinf(eps_d):
            retention = 1.0
        else:
            log_z = torch.logsumexp(-distance * eps_d, dim=-1)
            retention = float(torch.exp(-log_z).median())
    wanted = [j for j in ranks if 1 <= j <= k - 1]
    if not wanted:
        return {}, retention
    distance.scatter_(1, rows[:, None], math.inf)  # the token itself is not a neighbour
    nearest = distance.topk(max(wanted), dim=-1, largest=False).values  # (s, j_max) ascending
    return {j: float(nearest[:, j - 1].median()) for j in wanted}, retention


def metric_inversion(
    candidates: CandidateSet,
    output_rows: torch.Tensor,
    eps_d: float,
    log_prior: torch.Tensor | None = None,
    *,
    chunk_elements: int,
) -> torch.Tensor:
    """(n,) MAP guesses of the inputs behind n outputs of one set, by an attacker who knows
    eps_d and the embeddings: argmax_x ln π(x) - eps_d d(x, y) / 2 - ln Z(x), with
    ln Z(x) = ln Σ_y' exp(-eps_d d(x, y') / 2) over the whole set (a k x k pass, cached per
    embeddings and eps_d). Distances in float32 (an audit estimate: the k x k pass in float64
    would take minutes on a CPU for a 49k-token set). Ties go to the output. eps_d = inf:
    the output itself."""
    device = candidates.unit_embeddings.device
    output_rows = output_rows.to(device)
    if math.isinf(eps_d) or output_rows.numel() == 0:
        return output_rows.clone()
    log_z = _log_partition(candidates, eps_d, chunk_elements)
    prior = None if log_prior is None else log_prior.to(device=device, dtype=torch.float32)
    step = max(1, chunk_elements // candidates.size)
    guesses = output_rows.clone()
    embeddings = candidates.unit_embeddings
    for start in range(0, output_rows.shape[0], step):
        rows = output_rows[start : start + step]
        distance = metric_distance(embeddings[rows], embeddings, torch.float32)
        score = -distance * (eps_d / 2.0) - log_z[None, :]
        if prior is not None:
            score += prior[None, :]
        best = score.max(dim=-1)
        own = score.gather(1, rows[:, None]).squeeze(1)
        tied = own >= best.values - 1e-5 * (1.0 + best.values.abs())
        guesses[start : start + step] = torch.where(tied, rows, best.indices)
    return guesses


_LOG_Z: dict[tuple[int, float], tuple[weakref.ref[torch.Tensor], torch.Tensor]] = {}


def _log_partition(candidates: CandidateSet, eps_d: float, chunk_elements: int) -> torch.Tensor:
    """(k,) float32 ln Z(x) of every input of the set at eps_d (cached: every client's audit
    at one eps_d needs the same)."""
    embeddings = candidates.unit_embeddings
    key = (id(embeddings), float(eps_d))
    entry = _LOG_Z.get(key)
    if entry is not None and entry[0]() is embeddings:
        return entry[1]
    k = candidates.size
    step = max(1, chunk_elements // k)
    log_z = torch.empty(k, dtype=torch.float32, device=embeddings.device)
    for start in range(0, k, step):
        distance = metric_distance(embeddings[start : start + step], embeddings, torch.float32)
        log_z[start : start + step] = torch.logsumexp(-distance * (eps_d / 2.0), dim=-1)
    _LOG_Z[key] = (weakref.ref(embeddings), log_z)
    return log_z


def _budgets(eps_d: torch.Tensor | float, n: int, device: torch.device) -> torch.Tensor:
    budgets = torch.as_tensor(eps_d, dtype=torch.float64, device=device)
    budgets = budgets.expand(n) if budgets.dim() == 0 else budgets
    if budgets.shape != (n,):
        raise ValueError(f"eps_d must be a scalar or ({n},), got {tuple(budgets.shape)}.")
    if bool((budgets.isnan() | (budgets < 0)).any()):
        raise ConfigError("metric DP: eps_d must be >= 0 (math.inf for no perturbation).")
    return budgets
