"""Retention r(eps): the share of public tokens a mechanism keeps unchanged, and its knees.

Before a FedCoT run, look at each mechanism's r(eps) on public text (the task's public
questions, tokenized with the client's tokenizer and perturbed over its kit) and run the eps
where r crosses about 1, 5, 20, 50, 80 and 95 %: below the first the server sees noise, above
the last it sees the question. The paper's eps in {1, 3, 5, 10} keeps about nothing for EM
over a ~30k-word set: any eps-DP mechanism keeps at most e^eps / (e^eps + k - 1) of the tokens.

r(eps) = mean over the perturbed public token occurrences x of P(x | x), the expectation, not
a sample:

- ``krr``: e^eps / (e^eps + k - 1), k the size of x's set;
- ``custext``: exact within x's cluster (`fedkt.privacy.custext.custext_keep_probability`);
- ``em`` / ``aem``: exp(s u(x, x)) / Σ_y exp(s u(x, y)), s = e / (2 Δu) (AEM: each occurrence at
  its own budget e = eps x c_i, c_i its prompt share, which does not depend on eps);
- ``metric``: 1 / Σ_y exp(-eps_d d(x, y) / 2).

For EM and metric DP the sum over the set runs over each distinct token's `TOP` most similar
candidates exactly (similarity and distance as the mechanisms compute them) and over the rest
in `BINS` similarity bins at the bin's mean (exact in count; the bin's spread, at most 1/1024
in cosine, changes each term by a factor exp(s w) ~ 1 at the eps where the far tail matters):
a few seconds of set-up per task, then a millisecond-scale r(eps), so a knee grid costs about
nothing. Tokens passed through (outside every set) are not counted: r is over perturbed ones.

`knee_grid` finds by bisection on log eps the smallest eps (to a relative `rtol`) where r
reaches each target; r is non-decreasing in eps for every mechanism here (the kept token has
the highest utility / smallest distance).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from fedkt.errors import ConfigError
from fedkt.privacy.candidates import CandidateSet, PerturbationKit
from fedkt.privacy.custext import (
    DEFAULT_CLUSTER_SIZE,
    INNERS,
    Inner,
    custext_keep_probability,
    kit_clusters,
)
from fedkt.privacy.krr import krr_keep_probability
from fedkt.privacy.mechanisms import COSINE_SENSITIVITY, allocate_segments, check_importance
from fedkt.privacy.perturb import STRATEGIES

KNEE_TARGETS: tuple[float, ...] = (0.01, 0.05, 0.2, 0.5, 0.8, 0.95)
CURVE_EPS: tuple[float, ...] = tuple(10.0 ** (i / 6) for i in range(-6, 19))
"""Where `measure_knees` samples r(eps) for a plot: 0.1 to 1000, six points a decade."""
_INF = math.inf
MEASURED_GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    "classes": {
        "em": (15.0, 27.0, 36.0, 50.0, 73.0, 100.0, _INF),
        "aem": (19.0, 30.0, 40.0, 54.0, 78.0, 110.0, _INF),
        "krr": (1.9, 5.9, 8.7, 10.0, 12.0, 13.0, _INF),
        "custext(em)": (11.0, 21.0, 35.0, 55.0, _INF),
        "custext(krr)": (1.5, 2.9, 4.3, 5.9, _INF),
        "metric": (4.0, 9.4, 13.0, 16.0, 19.0, 24.0, _INF),
    },
    "vocabulary": {
        "em": (23.0, 29.0, 37.0, 51.0, 75.0, 100.0, _INF),
        "aem": (25.0, 32.0, 42.0, 57.0, 83.0, 120.0, _INF),
        "krr": (6.2, 7.9, 9.4, 11.0, 12.0, 14.0, _INF),
        "custext(em)": (9.9, 20.0, 34.0, 56.0, _INF),
        "custext(krr)": (1.6, 3.0, 4.3, 5.9, _INF),
        "metric": (8.6, 11.0, 13.0, 16.0, 20.0, 24.0, _INF),
    },
}
"""Each mechanism's eps grid by partition, measured by bench/fedcot_retention.py (SmolLM2-135M
kit, min_letters 1, K = 20; per target the geometric mean of ARC-Easy's and AG News's knees
on 200 public questions, 2 significant figures): the eps where r crosses 1, 5, 20, 50, 80,
95 % (CusText never keeps below 1/K = 5 %, so its grid starts at 20 %), then inf. Another
tokenizer or task moves them: measure with `fedkt retention --config ...`."""
TOP = 256
BINS = 2048
_ROW_BLOCK = 128


@dataclass(frozen=True, eq=False)
class _Profile:
    """One set's distinct public tokens x: for its `TOP` most similar candidates y exactly,
    and for the rest per similarity bin (count, means), u(x, y) - u(x, x) (<= 0, so a large
    eps scales no cancellation) and d(x, y) (d(x, x) = 0; the mechanism's float64 has
    ~1e-8). float32: r needs no more, and AEM's per-occurrence sums run twice as fast."""

    rows: torch.Tensor  # (n,) distinct rows of the set
    top_u: torch.Tensor  # (n, M) u(x, y) - u(x, x)
    top_d: torch.Tensor  # (n, M) d(x, y)
    log_count: torch.Tensor  # (n, B) ln(count), -inf for empty bins
    tail_u: torch.Tensor  # (n, B) bin mean of u(x, y) - u(x, x)
    tail_d: torch.Tensor  # (n, B) bin mean of d(x, y)


@dataclass(frozen=True, eq=False)
class PublicTokens:
    """The perturbed token occurrences of public texts under a kit (no padding).

    ``set_index``, ``rows``, ``text_of``: (N,) per occurrence; ``passed_through``: tokens
    outside every set. Profiles for EM and metric DP are built on first use and cached.
    """

    kit: PerturbationKit
    token_ids: torch.Tensor
    set_index: torch.Tensor
    rows: torch.Tensor
    text_of: torch.Tensor
    n_texts: int
    passed_through: int
    _profiles: dict[int, tuple[_Profile, torch.Tensor]] = field(
        init=False, default_factory=dict, repr=False
    )

    @property
    def count(self) -> int:
        return int(self.token_ids.shape[0])

    def profile(self, index: int) -> tuple[_Profile, torch.Tensor]:
        """(profile of set ``index``, (N_s,) each of its occurrences' row in the profile)."""
        if index not in self._profiles:
            mine = self.rows[self.set_index == index]
            distinct, where = torch.unique(mine, return_inverse=True)
            self._profiles[index] = (_build_profile(self.kit.sets[index], distinct), where)
        return self._profiles[index]


def public_tokens(
    tokenizer: PreTrainedTokenizerBase, kit: PerturbationKit, texts: Sequence[str]
) -> PublicTokens:
    """Tokenize ``texts`` as `TextPerturber` does (no special tokens, no padding) and keep
    the occurrences that fall in a candidate set of ``kit``."""
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    set_of, row_of = kit.lookup(len(tokenizer))
    ids = torch.tensor([t for row in encoded for t in row], dtype=torch.long)
    text_of = torch.repeat_interleave(
        torch.arange(len(encoded)), torch.tensor([len(row) for row in encoded], dtype=torch.long)
    )
    ids, text_of = ids.to(set_of.device), text_of.to(set_of.device)
    sets = set_of[ids]
    inside = sets >= 0
    return PublicTokens(
        kit=kit,
        token_ids=ids[inside],
        set_index=sets[inside],
        rows=row_of[ids[inside]],
        text_of=text_of[inside],
        n_texts=len(encoded),
        passed_through=int((~inside).sum()),
    )


class Retention:
    """r(eps) of one mechanism over `PublicTokens` (module docstring); call it with eps.

    ``importance`` (a public IDF table, `public_importance`) and ``floor`` are AEM's;
    ``cluster_size`` and ``inner`` CusText's, as `TextPerturber` takes them.
    """

    def __init__(
        self,
        tokens: PublicTokens,
        strategy: str,
        *,
        importance: torch.Tensor | None = None,
        floor: float = 0.1,
        cluster_size: int = DEFAULT_CLUSTER_SIZE,
        inner: Inner = "em",
    ) -> None:
        if strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {STRATEGIES}, got {strategy!r}.")
        if inner not in INNERS:
            raise ConfigError(f"custext inner must be one of {list(INNERS)}, got {inner!r}.")
        self.tokens = tokens
        self.strategy = strategy
        self.cluster_size = cluster_size
        self.inner: Inner = inner
        self._shares: torch.Tensor | None = None
        if strategy == "aem":
            if importance is None:
                raise ConfigError("retention of 'aem' needs the public importance table.")
            weights = check_importance(importance, "importance").to(tokens.token_ids.device)
            counts = torch.bincount(tokens.text_of, minlength=tokens.n_texts).to(torch.float64)
            self._shares = allocate_segments(
                weights[tokens.token_ids], tokens.text_of, counts, floor=floor
            )  # each occurrence's budget at eps = 1: its budget is eps times this

    @property
    def name(self) -> str:
        """The strategy, with CusText's inner mechanism: "custext(em)", "custext(krr)"."""
        return f"custext({self.inner})" if self.strategy == "custext" else self.strategy

    def __call__(self, eps: float) -> float:
        if math.isnan(eps) or eps < 0:
            raise ConfigError(f"retention: eps must be >= 0, got {eps}.")
        tokens = self.tokens
        if tokens.count == 0 or math.isinf(eps):
            return 1.0
        total = 0.0
        for index, candidates in enumerate(tokens.kit.sets):
            mask = tokens.set_index == index
            if not bool(mask.any()):
                continue
            total += float(self._kept(index, candidates, mask, eps).sum())
        return total / tokens.count

    def _kept(
        self, index: int, candidates: CandidateSet, mask: torch.Tensor, eps: float
    ) -> torch.Tensor:
        """(N_s,) P(x | x) of every occurrence of set ``index``."""
        rows = self.tokens.rows[mask]
        if self.strategy == "krr":
            return krr_keep_probability(candidates.size, eps).expand(rows.shape[0])
        if self.strategy == "custext":
            clusters = kit_clusters(self.tokens.kit, self.cluster_size)[index]
            distinct, where = torch.unique(rows, return_inverse=True)
            kept = custext_keep_probability(candidates, clusters, distinct, eps, self.inner)
            return kept[where]
        profile, where = self.tokens.profile(index)
        if self.strategy == "metric":
            return _profile_keep(profile, -eps / 2.0, metric=True)[where]
        if self._shares is None:  # em: one budget for all
            return _profile_keep(profile, eps / (2.0 * COSINE_SENSITIVITY), metric=False)[where]
        scales = self._shares[mask] * eps / (2.0 * COSINE_SENSITIVITY)
        return _profile_keep(profile, scales, metric=False, at=where)


def retention(
    strategy: str,
    eps: float,
    tokenizer: PreTrainedTokenizerBase,
    kit: PerturbationKit,
    texts: Sequence[str],
    **options: Any,
) -> float:
    """r(eps) of ``strategy`` on ``texts`` in one call (`Retention`'s options pass through)."""
    return Retention(public_tokens(tokenizer, kit, texts), strategy, **options)(eps)


def knee_grid(
    mechanism: Callable[[float], float],
    targets: Sequence[float] = KNEE_TARGETS,
    *,
    low: float = 1e-3,
    high: float = 1e5,
    rtol: float = 0.01,
    known: Mapping[float, float] | None = None,
) -> dict[float, float | None]:
    """{target: the smallest eps in [low, high] (to relative ``rtol``) with r(eps) >= target}
    for a non-decreasing r (a `Retention`), by bisection on log eps.

    None where r(low) already reaches the target (the mechanism never keeps less, e.g.
    custext's 1/K) or r(high) does not (e.g. tokens sharing an embedding cap EM's retention).
    Each bisection starts from the tightest bracket r has been evaluated on so far (``known``:
    {eps: r(eps)} already measured, e.g. a curve for a plot), so r is evaluated at most
    ~log2(ln(high / low) / rtol) times per target, usually far fewer.
    """
    if not 0 < low < high or rtol <= 0:
        raise ConfigError(f"knee_grid needs 0 < low < high and rtol > 0, got {low}, {high}.")
    memo = {math.log(e): r for e, r in (known or {}).items() if low <= e <= high}

    def r(log_eps: float) -> float:
        if log_eps not in memo:
            memo[log_eps] = mechanism(math.exp(log_eps))
        return memo[log_eps]

    lowest, highest = math.log(low), math.log(high)
    knees: dict[float, float | None] = {}
    for target in targets:
        if r(lowest) >= target or r(highest) < target:
            knees[target] = None
            continue
        # the tightest known bracket: r(lo) < target <= r(hi) (r is non-decreasing)
        lo = max(x for x, value in memo.items() if value < target)
        hi = min(x for x, value in memo.items() if value >= target)
        while hi - lo > math.log1p(rtol):
            mid = (lo + hi) / 2.0
            if r(mid) >= target:
                hi = mid
            else:
                lo = mid
        knees[target] = math.exp(hi)
    return knees


def grid_from_knees(knees: dict[float, float | None], digits: int = 2) -> tuple[float, ...]:
    """The knees' eps rounded to ``digits`` significant figures, ascending, distinct, then inf:
    a mechanism's eps grid for a run."""
    values = sorted({_round(e, digits) for e in knees.values() if e is not None})
    return (*values, math.inf)


def measure_knees(
    curve: Retention,
    targets: Sequence[float] = KNEE_TARGETS,
    curve_eps: Sequence[float] = CURVE_EPS,
) -> dict[str, Any]:
    """One mechanism's retention summary: {"mechanism", "r0" (r at eps = 0), "knees"
    ({target as text: eps or None}), "grid" (`grid_from_knees`), "curve" ([[eps, r], ...] at
    ``curve_eps``, which also seed the bisection's brackets)}."""
    points = {eps: curve(eps) for eps in curve_eps}
    knees = knee_grid(curve, targets, known=points)
    return {
        "mechanism": curve.name,
        "r0": curve(0.0),
        "knees": {f"{target:g}": eps for target, eps in knees.items()},
        "grid": list(grid_from_knees(knees)),
        "curve": [[eps, r] for eps, r in points.items()],
    }


def _round(value: float, digits: int) -> float:
    return float(f"{value:.{digits}g}")


def _profile_keep(
    profile: _Profile, scale: torch.Tensor | float, *, metric: bool, at: torch.Tensor | None = None
) -> torch.Tensor:
    """(n,) float64 P(x | x) = 1 / Σ_y exp(scale (v(x, y) - v(x, x))) from a profile, with
    v = cosine and scale = eps / (2 Δu) (EM), or v = distance and scale = -eps_d / 2 (metric).
    One value per profile row, or with ``at`` one per entry of a per-occurrence ``scale``
    (AEM), ``at`` giving its profile row."""
    top, tail = (profile.top_d, profile.tail_d) if metric else (profile.top_u, profile.tail_u)
    rows = torch.arange(top.shape[0]) if at is None else at
    scales = torch.as_tensor(scale, dtype=torch.float32).expand(rows.shape[0])
    out = torch.empty(rows.shape[0], dtype=torch.float64)
    for start in range(0, rows.shape[0], 4096):
        pick, s = rows[start : start + 4096], scales[start : start + 4096, None]
        terms = torch.cat([top[pick] * s, tail[pick] * s + profile.log_count[pick]], dim=1)
        out[start : start + 4096] = torch.exp(-terms.logsumexp(dim=1)).double()
    return out


def _build_profile(candidates: CandidateSet, rows: torch.Tensor) -> _Profile:
    """`_Profile` of ``rows`` of one set, `_ROW_BLOCK` rows at a time."""
    k = candidates.size
    m = min(TOP, k)
    embeddings = candidates.unit_embeddings
    parts: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, rows.shape[0], _ROW_BLOCK):
        block = rows[start : start + _ROW_BLOCK]
        similarity = candidates.similarity(block)  # (b, k) as EM computes it
        own = similarity.gather(1, block[:, None]).double()  # (b, 1)
        top_u, top_at = similarity.topk(m, dim=1)
        anchors = embeddings[block].double()
        near = embeddings[top_at].double()  # (b, m, d)
        squared = (
            (anchors * anchors).sum(-1)[:, None]
            + (near * near).sum(-1)
            - 2.0 * torch.bmm(near, anchors[:, :, None]).squeeze(-1)
        )
        top_d = squared.clamp_(min=0.0).sqrt_()  # as fedkt.privacy.metric.metric_distance
        counts = torch.zeros(block.shape[0], BINS, dtype=torch.float64)
        sum_u, sum_d = torch.zeros_like(counts), torch.zeros_like(counts)
        if k > m:
            tail = similarity.scatter(1, top_at, math.nan)
            keep = ~tail.isnan()
            bins = ((tail + 1.0) * (BINS / 2.0)).long().clamp_(0, BINS - 1)
            bins = torch.where(keep, bins, 0)
            u = torch.where(keep, tail, 0.0).double()
            d = (2.0 - 2.0 * u).clamp_(min=0.0).sqrt_()
            weight = keep.double()
            counts.scatter_add_(1, bins, weight)
            sum_u.scatter_add_(1, bins, (u - own) * weight)
            sum_d.scatter_add_(1, bins, d * weight)
        filled = counts.clamp(min=1.0)
        part = (top_u.double() - own, top_d, counts.log(), sum_u / filled, sum_d / filled)
        parts.append(tuple(t.float() for t in part))
    top_u, top_d, log_count, tail_u, tail_d = (torch.cat(p) for p in zip(*parts, strict=True))
    return _Profile(rows, top_u, top_d, log_count, tail_u, tail_d)
