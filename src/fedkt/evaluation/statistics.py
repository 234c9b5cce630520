"""How much to trust a score, and whether two methods really differ.

Pure numpy (and `math`) functions over per-row scores, so a result can carry its uncertainty:

- `mean_stderr`: the mean of per-row scores and its standard error, as lm-evaluation-harness
  reports ``acc_stderr`` for mean-aggregated metrics.
- `paired_test`: two methods scored on the *same* rows. Pairing removes the row-difficulty
  variance both share, so a paired test detects differences an unpaired comparison of two
  means with their standard errors would miss.

Notation: ``a_i``, ``b_i`` are the scores of methods A and B on row ``i`` (``i = 1..n``) and
``d_i = a_i - b_i``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

Values = Sequence[float] | NDArray[Any]
"""Per-row scores: any flat sequence of numbers, or a 1-D numpy array."""

_CHUNK_CELLS = 1 << 22
"""Resampled cells (resamples x rows) drawn at once: bounds memory at ~32 MiB per array."""


def mean_stderr(values: Values) -> tuple[float, float]:
    """Mean and standard error of the mean of `values`.

    ``mean = sum(x_i) / n`` and ``stderr = s / sqrt(n)`` with the sample standard deviation
    ``s = sqrt(sum((x_i - mean)^2) / (n - 1))`` (ddof=1), as lm-evaluation-harness's
    ``mean_stderr``. For 0/1 correctness this is ``sqrt(p (1 - p) / (n - 1))``. With one value
    there is no spread to estimate: stderr 0.0. Raises ValueError when `values` is empty.
    """
    x = _as_array(values, "values")
    if x.size < 2:
        return float(x[0]), 0.0
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p value from the discordant pair counts.

    `a_only` rows where only A is right, `b_only` where only B is. Under the null hypothesis
    (both methods equally accurate) each of the ``m = a_only + b_only`` discordant rows is a
    fair coin, so ``p = min(1, 2 * P(X <= min(a_only, b_only)))`` with ``X ~ Binomial(m, 1/2)``,
    i.e. ``2 * sum_{k <= min} C(m, k) / 2^m``; ``p = 1`` when there are no discordant rows.
    Computed in exact integer arithmetic (one rounding at the end).
    """
    if a_only < 0 or b_only < 0:
        raise ValueError(f"discordant counts must be non-negative, got {a_only}, {b_only}")
    m = a_only + b_only
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, k) for k in range(min(a_only, b_only) + 1))
    return min(1.0, 2 * tail / 2**m)


def sign_flip_test(differences: Values, *, resamples: int = 10_000, seed: int = 0) -> float:
    """Two-sided paired sign-flip (randomisation) test of ``mean(d) = 0``; returns the p value.

    Under the null hypothesis that A and B are exchangeable on every row, each ``d_i`` is as
    likely to be ``+|d_i|`` as ``-|d_i|``. The statistic is ``T = |sum(d_i)|``; the p value is
    the share of the ``2^m`` sign assignments of the ``m`` non-zero differences with
    ``T* >= T``. It is enumerated exactly when ``2^m <= resamples``; otherwise `resamples`
    random sign vectors are drawn (seeded) and ``p = (1 + #{T* >= T}) / (1 + resamples)``,
    which never reports 0 and keeps the test valid. Ties (``T* == T``, up to float rounding)
    count as extreme. No non-zero difference: p = 1.
    """
    d = _as_array(differences, "differences")
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    observed = abs(float(d.sum()))
    tolerance = 1e-9 * float(np.abs(d).sum())
    if d.size <= 62 and 2**d.size <= resamples:
        codes = np.arange(2**d.size, dtype=np.int64)[:, None] >> np.arange(d.size)
        signs = 1.0 - 2.0 * (codes & 1)
        return float(np.mean(np.abs(signs @ d) >= observed - tolerance))
    rng = np.random.default_rng(seed)
    extreme = 0
    for size in _chunks(resamples, d.size):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(size, d.size))
        extreme += int(np.count_nonzero(np.abs(signs @ d) >= observed - tolerance))
    return (1 + extreme) / (1 + resamples)


def bootstrap_mean(
    values: Values, *, resamples: int = 10_000, seed: int = 0
) -> NDArray[np.float64]:
    """`resamples` means of `values` resampled with replacement (seeded; rows drawn i.i.d.)."""
    x = _as_array(values, "values")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    rng = np.random.default_rng(seed)
    means = [
        x[rng.integers(0, x.size, size=(size, x.size))].mean(axis=1)
        for size in _chunks(resamples, x.size)
    ]
    return np.concatenate(means)


def paired_test(
    a: Values,
    b: Values,
    *,
    margin: float = 0.01,
    resamples: int = 10_000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Compare methods A and B scored on the same rows in the same order.

    `a` and `b` hold one score per row: 0/1 correctness, or a fraction in [0, 1] such as the
    mean correctness over several clients. Returns a JSON-ready dict:

    - ``n``, ``mean_a``, ``mean_b``, ``diff = mean_a - mean_b``;
    - ``diff_stderr = sd(d_i, ddof=1) / sqrt(n)``, the standard error of the mean paired
      difference (`mean_stderr` of ``d``);
    - ``ci95 = [lo, hi]``: 2.5th and 97.5th percentiles of ``mean(d*)`` over `resamples`
      paired bootstrap resamples (rows drawn with replacement, each row keeping its (a, b)
      pair), seeded by `seed`, so it is reproducible;
    - ``p_value`` and ``test``: when every a_i and b_i is 0 or 1, the exact two-sided McNemar
      test on the discordant rows (``"mcnemar-exact"``, see `mcnemar_exact`); otherwise the
      two-sided paired sign-flip randomisation test of ``mean(d) = 0`` (``"sign-flip"``, see
      `sign_flip_test`), exact when the non-zero differences are few enough to enumerate;
    - ``significant = p_value < alpha``;
    - ``a_better`` / ``b_better``: rows where ``a_i > b_i`` / ``b_i > a_i`` (for 0/1 scores,
      the discordant counts McNemar uses);
    - ``margin`` and ``non_inferior = ci95[0] > -margin``: A is not worse than B by more than
      `margin` (in score units, e.g. 0.01 = one accuracy point), judged at the usual 2.5%
      one-sided level of the lower end of a 95% interval. It does not depend on `alpha`.

    Raises ValueError when the lengths differ, the input is empty or holds non-finite values.
    """
    x = _as_array(a, "a")
    y = _as_array(b, "b")
    if x.size != y.size:
        raise ValueError(f"a and b must score the same rows: {x.size} scores against {y.size}")
    d = x - y
    mean_a, mean_b = float(x.mean()), float(y.mean())
    _, stderr_d = mean_stderr(d)
    boot = bootstrap_mean(d, resamples=resamples, seed=seed)
    lo, hi = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    a_better = int(np.count_nonzero(d > 0))
    b_better = int(np.count_nonzero(d < 0))
    if _is_binary(x) and _is_binary(y):
        test, p_value = "mcnemar-exact", mcnemar_exact(a_better, b_better)
    else:
        test = "sign-flip"
        p_value = sign_flip_test(d, resamples=resamples, seed=seed + 1)
    return {
        "n": int(x.size),
        "mean_a": mean_a,
        "mean_b": mean_b,
        "diff": mean_a - mean_b,
        "diff_stderr": stderr_d,
        "ci95": [lo, hi],
        "p_value": p_value,
        "test": test,
        "significant": bool(p_value < alpha),
        "alpha": alpha,
        "a_better": a_better,
        "b_better": b_better,
        "margin": margin,
        "non_inferior": bool(lo > -margin),
    }


def _as_array(values: Values, name: str) -> NDArray[np.float64]:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of numbers, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} is empty: need at least one score")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds non-finite values (NaN or infinity)")
    return x


def _is_binary(x: NDArray[np.float64]) -> bool:
    return bool(np.isin(x, (0.0, 1.0)).all())


def _chunks(total: int, width: int) -> list[int]:
    """Split `total` resamples into chunks of at most `_CHUNK_CELLS` cells of `width` rows."""
    step = max(1, _CHUNK_CELLS // max(1, width))
    return [min(step, total - start) for start in range(0, total, step)]
