"""Retention r(eps) against the exact keep probabilities, against what TextPerturber really
keeps, and the knee grid's bisection against k-RR's closed-form inverse."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from fedkt.errors import ConfigError
from fedkt.privacy import (
    PerturbationKit,
    TextPerturber,
    allocate_segments,
    build_kit,
    em_probabilities,
    public_importance,
)
from fedkt.privacy import retention as retention_module
from fedkt.privacy.custext import custext_keep_probability, kit_clusters
from fedkt.privacy.metric import metric_probabilities
from fedkt.privacy.retention import (
    KNEE_TARGETS,
    MEASURED_GRIDS,
    Retention,
    grid_from_knees,
    knee_grid,
    public_tokens,
    retention,
)

TEXTS = [
    "Which gas do plants absorb from the air?",
    "oxygen",
    "carbon dioxide",
    "Scientists launched a new satellite to study the sun.",
    "The team won the final match of the season, 48 to 72.",
]


def occurrences(tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit) -> list[tuple[int, int]]:
    """(set index, row) of every perturbed token of TEXTS, the slow way."""
    set_of, row_of = kit.lookup(len(tokenizer))
    out = []
    for text in TEXTS:
        for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
            if int(set_of[token]) >= 0:
                out.append((int(set_of[token]), int(row_of[token])))
    return out


def exact_keep(kit: PerturbationKit, strategy: str, s: int, row: int, eps: float) -> float:
    candidates = kit.sets[s]
    rows = torch.tensor([row])
    if strategy == "em":
        return float(em_probabilities(candidates.similarity(rows), eps)[0, row])
    if strategy == "metric":
        return float(metric_probabilities(candidates, rows, eps)[0, row])
    if strategy == "krr":
        return math.exp(eps) / (math.exp(eps) + candidates.size - 1)
    clusters = kit_clusters(kit, 4)[s]
    return float(custext_keep_probability(candidates, clusters, rows, eps, "em")[0])


@pytest.mark.parametrize("strategy", ["em", "metric", "krr", "custext"])
def test_retention_is_the_mean_exact_keep_probability(
    strategy: str, tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit
) -> None:
    tokens = public_tokens(tokenizer, kit, TEXTS)
    found = occurrences(tokenizer, kit)
    assert tokens.count == len(found) > 10 and tokens.passed_through > 0
    curve = Retention(tokens, strategy, cluster_size=4)
    for eps in (0.0, 0.8, 4.0, 25.0):
        expected = sum(exact_keep(kit, strategy, s, r, eps) for s, r in found) / len(found)
        assert curve(eps) == pytest.approx(expected, rel=1e-5)
    assert curve(math.inf) == 1.0


def test_aem_retention_uses_each_token_s_own_budget(
    tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit
) -> None:
    importance = public_importance(tokenizer, ["the sun and the sea", "water rock soil"])
    tokens = public_tokens(tokenizer, kit, TEXTS)
    eps = 3.0
    counts = torch.bincount(tokens.text_of, minlength=len(TEXTS)).double()
    budgets = allocate_segments(
        importance[tokens.token_ids].double(), tokens.text_of, counts * eps, floor=0.1
    )
    expected = [
        float(em_probabilities(kit.sets[s].similarity(torch.tensor([r])), float(b))[0, r])
        for s, r, b in zip(
            tokens.set_index.tolist(), tokens.rows.tolist(), budgets.tolist(), strict=True
        )
    ]
    curve = Retention(tokens, "aem", importance=importance)
    assert curve(eps) == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    with pytest.raises(ConfigError, match="importance"):
        Retention(tokens, "aem")


def test_the_binned_tail_stays_close_to_the_exact_sum(
    tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With only 4 exact neighbours per token, the rest of the set summed over bins."""
    monkeypatch.setattr(retention_module, "TOP", 4)
    tokens = public_tokens(tokenizer, kit, TEXTS)
    found = occurrences(tokenizer, kit)
    for strategy in ("em", "metric"):
        curve = Retention(tokens, strategy)
        for eps in (0.5, 5.0, 20.0):
            expected = sum(exact_keep(kit, strategy, s, r, eps) for s, r in found) / len(found)
            assert curve(eps) == pytest.approx(expected, rel=2e-3)


@pytest.mark.parametrize("strategy", ["krr", "custext", "metric"])
def test_retention_predicts_what_the_perturber_keeps(
    strategy: str, tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit
) -> None:
    eps = {"krr": 3.0, "custext": 2.0, "metric": 6.0}[strategy]
    texts = TEXTS * 120
    perturber = TextPerturber(tokenizer, kit, strategy, cluster_size=4)  # type: ignore[arg-type]
    out = perturber.perturb(texts, eps, torch.Generator().manual_seed(0))
    set_of, _ = kit.lookup(len(tokenizer))
    kept = total = 0
    for sent in out:
        for source, output in zip(sent.source_ids, sent.output_ids, strict=True):
            if int(set_of[source]) >= 0:
                total += 1
                kept += source == output
    predicted = retention(strategy, eps, tokenizer, kit, TEXTS, cluster_size=4)
    stderr = math.sqrt(predicted * (1 - predicted) / total)
    assert abs(kept / total - predicted) < 4 * stderr + 1e-9


def test_knee_grid_inverts_krr_in_closed_form() -> None:
    k = 1000

    def krr(eps: float) -> float:
        return 1.0 / (1.0 + (k - 1) * math.exp(-eps))

    knees = knee_grid(krr, rtol=0.001)
    assert list(knees) == list(KNEE_TARGETS)
    for target, eps in knees.items():
        exact = math.log(target * (k - 1) / (1 - target))
        assert eps is not None and exact <= eps <= exact * 1.001 + 1e-12
    calls: list[float] = []

    def counted(eps: float) -> float:
        calls.append(eps)
        return krr(eps)

    seeded = knee_grid(counted, rtol=0.001, known={e: krr(e) for e in (4.0, 6.0, 7.0, 9.0)})
    assert seeded.keys() == knees.keys()
    for target, eps in seeded.items():  # known points only narrow the brackets
        exact = math.log(target * (k - 1) / (1 - target))
        assert eps is not None and exact <= eps <= exact * 1.001 + 1e-12
    assert len(calls) < 6 * 15  # not a full bisection of [1e-3, 1e5] per target
    floor = knee_grid(lambda e: max(0.3, krr(e)))  # never below 30 %: no knee under it
    assert floor[0.01] is None and floor[0.2] is None and floor[0.5] is not None
    assert knee_grid(lambda e: min(0.9, krr(e)))[0.95] is None  # never reaches 95 %
    assert grid_from_knees({0.2: 3.14159, 0.5: 12.345, 0.8: None}) == (3.1, 12.0, math.inf)
    with pytest.raises(ConfigError):
        knee_grid(krr, low=0.0)


def test_retention_of_a_vocabulary_kit_and_its_bad_arguments(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    emb = torch.randn(len(tokenizer), 8, generator=torch.Generator().manual_seed(1))
    kit = build_kit(tokenizer, emb, partition="vocabulary")
    tokens = public_tokens(tokenizer, kit, TEXTS)
    assert tokens.passed_through == 0  # every ordinary token is perturbed
    k = kit.sets[0].size
    assert Retention(tokens, "krr")(0.0) == pytest.approx(1.0 / k)
    assert Retention(tokens, "em")(0.0) == pytest.approx(1.0 / k, rel=1e-5)
    with pytest.raises(ConfigError):
        Retention(tokens, "dp")
    with pytest.raises(ConfigError):
        Retention(tokens, "em")(-1.0)
    assert Retention(public_tokens(tokenizer, kit, []), "em")(1.0) == 1.0


def test_the_documented_grids_are_the_bench_s_measurement() -> None:
    """MEASURED_GRIDS (and FedCoTConfig's docstring) quote bench/fedcot_retention.py."""
    path = Path(__file__).resolve().parents[2] / "bench" / "results" / "fedcot_retention.json"
    if not path.is_file():
        pytest.skip("bench/results/fedcot_retention.json not there")
    measured = json.loads(path.read_text())["grids"]
    as_floats = {
        partition: {name: tuple(float(e) for e in grid) for name, grid in grids.items()}
        for partition, grids in measured.items()
    }
    assert as_floats == MEASURED_GRIDS
