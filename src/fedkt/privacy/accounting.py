"""DP-SGD privacy accounting: the noise for a target (eps, delta), and the eps a run spent.

Pure functions over opacus's RDP accountant (Mironov, "Rényi Differential Privacy", arXiv
1702.07476; the subsampled Gaussian mechanism's RDP, Mironov, Talwar & Zhang, arXiv
1908.10530), converted to (eps, delta)-DP by Balle et al.'s Theorem 21 (arXiv 1905.09982):

    eps(delta) = min_alpha  RDP(alpha) + log((alpha - 1) / alpha)
                            - (log delta + log alpha) / (alpha - 1)

with ``RDP(alpha) = steps * RDP_SGM(alpha; q, sigma)`` for `steps` compositions of the Poisson-
subsampled Gaussian mechanism (sample rate q, noise multiplier sigma = noise std / clipping
norm). At q = 1, ``RDP_SGM(alpha) = alpha / (2 sigma^2)``, the plain Gaussian mechanism.

The guarantee stated everywhere here: a DP-SGD run with these (sigma, q, steps), per-sample
clipping and Poisson sampling at rate q is (eps, delta)-DP for each client's whole private set
with respect to adding or removing one row, by the RDP accountant of the subsampled Gaussian
mechanism. Anything computed from the trained model (synthetic text included) is
post-processing and carries the same guarantee.

A target is refused (`ConfigError`) when eps <= 0 or delta >= 1/N (N = private rows): a delta
of 1/N allows a mechanism that publishes one whole row in the clear, which is no privacy.
``eps = inf`` is allowed and means no noise (sigma = 0): the same clipped pipeline, not private.
"""

from __future__ import annotations

import math
import warnings

from fedkt.errors import ConfigError

# opacus is imported inside the functions: it takes seconds to import, and `fedkt.privacy`
# (text DP for FedCoT) is imported by runs that never do DP-SGD.

SOLVE_TOLERANCE = 1e-3
"""`noise_for_target` stops its search once the spent eps is within this share below the
target (opacus's own default is an absolute 0.01, which is 1 % of eps = 1)."""


def check_target(eps: float, delta: float, n_rows: int) -> None:
    """Refuse a target (eps, delta) that is no DP guarantee for `n_rows` private rows.

    Raises `ConfigError` naming the value and the fix when eps <= 0 (or NaN), when delta is not
    in (0, 1/n_rows), or when `n_rows` < 1. eps = inf passes (no noise: not private).
    """
    if n_rows < 1:
        raise ConfigError(f"DP target: n_rows={n_rows} private rows; need at least one row.")
    if not eps > 0:  # also catches NaN
        raise ConfigError(
            f"DP target: eps={eps!r} must be > 0 (use e.g. 1, 3 or 8; inf trains without noise)."
        )
    if not 0 < delta < 1 / n_rows:
        raise ConfigError(
            f"DP target: delta={delta!r} must be in (0, 1/N) = (0, {1 / n_rows:.3g}) for "
            f"N={n_rows} private rows (delta >= 1/N allows publishing a row in the clear); "
            f"use delta <= {_suggested_delta(n_rows):.0e}."
        )


def noise_for_target(
    eps: float, delta: float, sample_rate: float, steps: int, *, n_rows: int
) -> float:
    """The smallest noise multiplier sigma (to 0.1 % in eps) whose run spends at most `eps`.

    With this sigma, `steps` DP-SGD steps at Poisson sample rate `sample_rate` are
    (eps, delta)-DP for each client's whole private set (`n_rows` rows) with respect to adding
    or removing one row, by the RDP accountant of the subsampled Gaussian mechanism (opacus's
    binary search, `get_noise_multiplier`, over its RDP accountant). ``eps = inf`` returns 0.0.
    Refuses (`ConfigError`) eps <= 0, delta >= 1/n_rows, a sample rate outside (0, 1] and
    steps < 1.
    """
    check_target(eps, delta, n_rows)
    _check_schedule(sample_rate, steps)
    if math.isinf(eps):
        return 0.0
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            # "Optimal order is the largest alpha" is expected for large sigma during the search.
            warnings.simplefilter("ignore", UserWarning)
            sigma = get_noise_multiplier(
                target_epsilon=eps,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant="rdp",
                epsilon_tolerance=SOLVE_TOLERANCE * eps,
            )
    except ValueError as err:  # opacus: "The privacy budget is too low." (sigma > 1e6)
        raise ConfigError(
            f"DP target eps={eps}, delta={delta} needs a noise multiplier above 1e6 for "
            f"{steps} steps at sample rate {sample_rate:.3g}: raise eps, or take fewer steps "
            "(fewer epochs) or a smaller sample rate."
        ) from err
    return float(sigma)


def epsilon_spent(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """The eps that `steps` DP-SGD steps spend at (noise multiplier, Poisson sample rate).

    The run is (returned eps, delta)-DP for each client's whole private set with respect to
    adding or removing one row, by the RDP accountant of the subsampled Gaussian mechanism
    (opacus's `RDPAccountant` over its default orders, so the number equals what a
    `PrivacyEngine(accountant="rdp")` reports for the same run). A noise multiplier of 0
    spends eps = inf; zero steps spend 0.
    """
    if not 0 < delta < 1:
        raise ConfigError(f"epsilon_spent: delta={delta!r} must be in (0, 1).")
    if noise_multiplier < 0:
        raise ConfigError(f"epsilon_spent: noise_multiplier={noise_multiplier!r} must be >= 0.")
    if steps == 0:
        return 0.0
    _check_schedule(sample_rate, steps)
    if noise_multiplier == 0:
        return math.inf
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(accountant.get_epsilon(delta=delta))


def poisson_schedule(n_rows: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """(sample rate q, steps) for `epochs` passes of Poisson batches of expected `batch_size`.

    An epoch is ``round(n_rows / batch_size)`` steps (at least 1) and ``q = 1 / steps per
    epoch``, so opacus's loader (which draws ``int(1 / q)`` batches per epoch) and its
    accountant (which records ``q = 1 / batches per epoch``) use exactly this q: the solved
    noise and the spent eps refer to the same schedule. The expected batch is ``n_rows * q``,
    within half a row per step of `batch_size`.
    """
    if n_rows < 1 or batch_size < 1 or epochs < 1:
        raise ConfigError(
            f"poisson_schedule: n_rows={n_rows}, batch_size={batch_size}, epochs={epochs}; "
            "each must be >= 1."
        )
    per_epoch = max(1, round(n_rows / batch_size))
    return 1.0 / per_epoch, per_epoch * epochs


def _check_schedule(sample_rate: float, steps: int) -> None:
    if not 0 < sample_rate <= 1:
        raise ConfigError(
            f"DP schedule: sample_rate={sample_rate!r} must be in (0, 1] "
            "(expected batch size / private rows)."
        )
    if steps < 1:
        raise ConfigError(f"DP schedule: steps={steps!r} must be >= 1.")


def _suggested_delta(n_rows: int) -> float:
    """A power of ten at most 1/(10 N): the usual 'delta well below 1/N'."""
    return 10.0 ** math.floor(math.log10(1 / (10 * n_rows)))
