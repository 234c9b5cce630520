"""Standard errors and paired tests against closed forms and hand computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedkt.evaluation import mcnemar_exact, mean_stderr, paired_test, sign_flip_test


def test_mean_stderr_is_sample_std_over_root_n():
    values = [1.0, 0.0, 1.0, 1.0]
    mean = 0.75
    by_hand = math.sqrt(sum((v - mean) ** 2 for v in values) / 3) / math.sqrt(4)
    assert mean_stderr(values) == pytest.approx((mean, by_hand))
    # 0/1 scores: sqrt(p (1 - p) / (n - 1)), lm-eval's acc_stderr
    assert mean_stderr(values)[1] == pytest.approx(math.sqrt(0.75 * 0.25 / 3))


def test_mean_stderr_of_one_value_has_no_spread():
    assert mean_stderr([0.4]) == (0.4, 0.0)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_mean_stderr_refuses_empty_and_non_finite(bad):
    with pytest.raises(ValueError):
        mean_stderr(bad)


@pytest.mark.parametrize(
    ("a_only", "b_only", "expected"),
    [
        (10, 0, 2 / 2**10),
        (0, 10, 2 / 2**10),
        (0, 0, 1.0),
        (1, 1, 1.0),  # 2 * P(X <= 1 | m=2) = 2 * 3/4 -> capped at 1
        (5, 1, 2 * (1 + 6) / 2**6),
        (8, 2, 2 * (1 + 10 + 45) / 2**10),
    ],
)
def test_mcnemar_exact_closed_forms(a_only, b_only, expected):
    assert mcnemar_exact(a_only, b_only) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_exact_agrees_with_scipy_binomtest():
    stats = pytest.importorskip("scipy.stats")
    for a_only, b_only in [(3, 9), (17, 30), (120, 80), (400, 450)]:
        expected = stats.binomtest(min(a_only, b_only), a_only + b_only, 0.5).pvalue
        assert mcnemar_exact(a_only, b_only) == pytest.approx(expected, rel=1e-9)


def test_mcnemar_exact_survives_large_counts():
    assert 0.0 <= mcnemar_exact(6000, 4000) < 1e-80  # big-int arithmetic, no overflow


def test_ten_to_zero_discordant_pairs_are_mcnemar_significant():
    a = [1] * 10 + [1] * 5 + [0] * 5  # 10 rows only A gets right, 10 concordant
    b = [0] * 10 + [1] * 5 + [0] * 5
    result = paired_test(a, b)
    assert result["test"] == "mcnemar-exact"
    assert result["p_value"] == pytest.approx(2 / 2**10)
    assert (result["a_better"], result["b_better"]) == (10, 0)
    assert result["significant"]
    assert result["diff"] == pytest.approx(0.5)
    assert result["ci95"][0] > 0


def test_identical_methods_do_not_differ():
    a = [1, 0, 1, 1, 0, 1, 0, 0]
    result = paired_test(a, a)
    assert result["diff"] == 0.0
    assert result["diff_stderr"] == 0.0
    assert result["ci95"] == [0.0, 0.0]
    assert result["p_value"] == 1.0
    assert not result["significant"]
    assert result["non_inferior"]  # 0 > -margin


def test_identical_fractional_scores_do_not_differ():
    a = [0.25, 0.5, 1.0, 0.0, 0.75]
    result = paired_test(a, a)
    assert result["test"] == "sign-flip"
    assert (result["diff"], result["p_value"], result["significant"]) == (0.0, 1.0, False)


def test_result_fields_and_json():
    result = paired_test([1, 0, 1], [0, 0, 1], margin=0.02, alpha=0.1)
    assert set(result) == {
        "n",
        "mean_a",
        "mean_b",
        "diff",
        "diff_stderr",
        "ci95",
        "p_value",
        "test",
        "significant",
        "alpha",
        "a_better",
        "b_better",
        "margin",
        "non_inferior",
    }
    assert result["n"] == 3
    assert result["mean_a"] == pytest.approx(2 / 3)
    assert result["mean_b"] == pytest.approx(1 / 3)
    assert result["diff"] == pytest.approx(result["mean_a"] - result["mean_b"])
    assert (result["margin"], result["alpha"]) == (0.02, 0.1)
    json.loads(json.dumps(result, allow_nan=False))  # plain JSON types only


def test_diff_stderr_is_the_paired_standard_error():
    a = [1.0, 0.5, 0.25, 1.0, 0.0]
    b = [0.5, 0.5, 0.0, 0.75, 0.25]
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(d) / 5
    by_hand = math.sqrt(sum((x - mean) ** 2 for x in d) / 4 / 5)
    assert paired_test(a, b)["diff_stderr"] == pytest.approx(by_hand)


def test_clear_fractional_difference_is_significant():
    rng = np.random.default_rng(1)
    b = rng.uniform(0.0, 0.6, size=200)
    a = np.clip(b + 0.2 + rng.normal(0.0, 0.05, size=200), 0.0, 1.0)
    result = paired_test(a, b)
    assert result["test"] == "sign-flip"
    assert result["p_value"] == pytest.approx(1 / 10_001)  # no sign flip reaches the data
    assert result["significant"]
    assert 0.15 < result["ci95"][0] < result["diff"] < result["ci95"][1] < 0.25


def test_sign_flip_is_exact_when_enumerable():
    # d = (1, 1, 1, 1): of the 16 sign patterns, only ++++ and ---- reach |sum| = 4
    assert sign_flip_test([0.5, 0.5, 0.5, 0.5, 0.0]) == pytest.approx(2 / 16)
    # d = (0.3, 0.1): |sum| >= 0.4 only for ++ and --: 2 / 4
    assert sign_flip_test([0.3, 0.1]) == pytest.approx(0.5)


def test_sign_flip_monte_carlo_is_close_to_exact():
    d = np.linspace(-0.2, 0.6, 20)  # 2^20 patterns: more than the resamples, so sampled
    codes = np.arange(2**20, dtype=np.int64)[:, None] >> np.arange(20)
    signs = 1.0 - 2.0 * (codes & 1)
    exact = float(np.mean(np.abs(signs @ d) >= abs(d.sum()) - 1e-12))
    assert sign_flip_test(d, resamples=20_000) == pytest.approx(exact, abs=0.01)


def test_non_inferiority_follows_the_margin():
    # A misses 2 of 400 rows B gets right (diff -0.005), nothing else differs
    b = [1] * 300 + [0] * 100
    a = [0, 0, *b[2:]]
    loose = paired_test(a, b, margin=0.05)
    strict = paired_test(a, b, margin=0.001)
    assert loose["ci95"] == strict["ci95"]
    assert -0.05 < loose["ci95"][0] < -0.001
    assert loose["non_inferior"]
    assert not strict["non_inferior"]
    assert not loose["significant"]  # 0 vs 2 discordant: p = 0.5


def test_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(7)
    a = rng.integers(0, 2, size=300)
    b = rng.integers(0, 2, size=300)
    first = paired_test(a, b, seed=3)
    assert paired_test(a, b, seed=3) == first
    assert paired_test(a, b, seed=4)["ci95"] != first["ci95"]


@pytest.mark.parametrize(("a", "b"), [([1, 0], [1]), ([], []), ([0.5, float("nan")], [0, 0])])
def test_bad_inputs_raise(a, b):
    with pytest.raises(ValueError):
        paired_test(a, b)
