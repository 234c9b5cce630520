"""k-RR, CusText and metric DP as FedCoT strategies: TextPerturber's dispatch and records, the
MAP attacker, and the guarantee each one states in its privacy report."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from fedkt.algorithms.fedcot import (
    FedCoTSettings,
    client_encode,
    make_perturber,
    privacy_report,
)
from fedkt.data import Example
from fedkt.data.cot import private_fields
from fedkt.errors import ConfigError
from fedkt.privacy import (
    RELEASED_IN_CLEAR,
    PerturbationKit,
    TextPerturber,
    build_kit,
    public_unigram,
)
from fedkt.privacy.custext import kit_clusters
from fedkt.privacy.inversion import mechanism_recovery
from fedkt.privacy.metric import METRIC_DIAMETER
from fedkt.privacy.perturb import STRATEGIES, mechanism_guarantee

TEXTS = [
    "Which gas do plants absorb from the air?",
    "Scientists launched a new satellite to study the sun.",
    "Natalia sold 48 clips in April and half as many in May.",
]
ROWS = (
    Example(
        id="r1",
        context="Question: Which gas do plants absorb from the air?\nAnswer:",
        choices=("carbon dioxide", "helium"),
        gold=0,
        question="Which gas do plants absorb from the air?",
    ),
    Example(
        id="r2",
        context="Question: What do green plants need to grow?\nAnswer:",
        choices=("volcanic rock", "bright sunlight"),
        gold=1,
        question="What do green plants need to grow?",
    ),
)
GUARANTEE_KEYS = {
    "mechanism",
    "statement",
    "neighbours",
    "released_in_clear",
    "eps",
    "eps_per_token",
    "prompt_eps",
    "retention_bound",
}


@pytest.mark.parametrize("strategy", ["krr", "custext", "metric"])
def test_new_strategies_replace_tokens_within_their_set_and_record_eps(
    strategy: str, tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit
) -> None:
    perturber = TextPerturber(tokenizer, kit, strategy, cluster_size=4)  # type: ignore[arg-type]
    out = perturber.perturb(TEXTS * 5, 1.0, torch.Generator().manual_seed(0))
    set_of, row_of = kit.lookup(len(tokenizer))
    changed = 0
    for sent in out:
        for source, output in zip(sent.source_ids, sent.output_ids, strict=True):
            assert int(set_of[source]) == int(set_of[output])
            changed += source != output
            if strategy == "custext" and int(set_of[source]) >= 0:
                clusters = kit_clusters(kit, 4)[int(set_of[source])]
                assert clusters.cluster_of[row_of[source]] == clusters.cluster_of[row_of[output]]
        per_token = METRIC_DIAMETER if strategy == "metric" else 1.0
        assert sent.record.eps_per_token == (per_token,) * sent.record.tokens_perturbed
        assert sent.record.prompt_eps == pytest.approx(per_token * sent.record.tokens_perturbed)
    assert changed > 0
    same = perturber.perturb(TEXTS, math.inf, torch.Generator())
    assert [p.text for p in same] == TEXTS


def test_perturber_refuses_bad_custext_settings(
    tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit
) -> None:
    with pytest.raises(ConfigError):
        TextPerturber(tokenizer, kit, "custext", cluster_size=1)
    with pytest.raises(ConfigError):
        TextPerturber(tokenizer, kit, "custext", inner="gauss")  # type: ignore[arg-type]
    assert set(STRATEGIES) >= {"em", "aem", "krr", "custext", "metric"}


def test_krr_attacker_with_a_flat_prior_recovers_exactly_the_kept_tokens(
    tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit
) -> None:
    out = TextPerturber(tokenizer, kit, "krr").perturb(TEXTS * 4, 2.0, torch.Generator())
    rates = mechanism_recovery(out, kit, "krr", 2.0)
    set_of, _ = kit.lookup(len(tokenizer))
    pairs = [
        (s, o)
        for p in out
        for s, o in zip(p.source_ids, p.output_ids, strict=True)
        if int(set_of[s]) >= 0
    ]
    assert rates["protected_recovered"] == pytest.approx(sum(s == o for s, o in pairs) / len(pairs))
    assert rates["tokens_perturbed"] == len(pairs)
    with pytest.raises(ConfigError):
        mechanism_recovery(out, kit, "metric", 2.0)  # the records say krr
    with pytest.raises(ConfigError):
        mechanism_recovery(out, kit, "em", 2.0)


@pytest.mark.parametrize("strategy", ["custext", "metric"])
def test_attackers_recover_everything_at_a_huge_eps(
    strategy: str, tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit
) -> None:
    out = TextPerturber(tokenizer, kit, strategy, cluster_size=4).perturb(  # type: ignore[arg-type]
        TEXTS, 1e4, torch.Generator()
    )
    rates = mechanism_recovery(out, kit, strategy, 1e4, cluster_size=4)
    assert rates["protected_recovered"] == 1.0


@pytest.mark.parametrize(
    ("strategy", "inner"), [("krr", "em"), ("custext", "em"), ("custext", "krr"), ("metric", "em")]
)
def test_the_privacy_report_states_each_guarantee_and_audits_it(
    strategy: str, inner: str, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    embeddings = torch.randn(len(tiny_tokenizer), 16, generator=torch.Generator().manual_seed(0))
    kit = build_kit(tiny_tokenizer, embeddings, min_letters=1)
    settings = FedCoTSettings(
        strategy=strategy,  # type: ignore[arg-type]
        eps=2.0,
        cluster_size=4,
        custext_inner=inner,  # type: ignore[arg-type]
        noise_seed=0,
    )
    perturber = make_perturber(tiny_tokenizer, kit, settings)
    assert (perturber.strategy, perturber.cluster_size, perturber.inner) == (strategy, 4, inner)
    queries = client_encode(ROWS, perturber, settings, torch.Generator().manual_seed(0))
    prior = public_unigram(tiny_tokenizer, [row.question for row in ROWS])
    report = privacy_report(
        queries,
        kit,
        settings,
        perturber=perturber,
        log_prior=prior,
        reference=[private_fields(row) for row in ROWS],
    )
    guarantee = report["guarantee"]
    assert set(guarantee) >= GUARANTEE_KEYS and guarantee["mechanism"] == strategy
    assert guarantee == perturber.guarantee(2.0)
    for key in ("protected_recovered", "protected_recovered_prior", "prior_only_recovered"):
        assert 0.0 <= report[key] <= 1.0
    bound = guarantee["retention_bound"]
    assert set(bound) == set(kit.describe()) and all(0.0 < v <= 1.0 for v in bound.values())
    if strategy == "custext":
        assert "cluster" in report["released_in_clear"]
        assert report["released_in_clear"].startswith(RELEASED_IN_CLEAR["classes"])
        assert guarantee["cluster_size"] == 4 and guarantee["inner"] == inner
    else:
        assert report["released_in_clear"] == RELEASED_IN_CLEAR["classes"]
    if strategy == "metric":
        assert report["eps_per_token_max"] == 2 * 2.0  # the worst case, 2 eps_d
        near = guarantee["eps_vs_neighbour"]["words"]
        assert set(near) >= {"j=1", "j=10"} and near["j=1"] <= near["j=10"] <= 2 * 2.0
    if strategy == "krr":
        k = kit.describe()["words"]
        assert bound["words"] == pytest.approx(math.exp(2.0) / (math.exp(2.0) + k - 1))


def test_guarantees_of_every_strategy_and_a_mismatched_kit(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    embeddings = torch.randn(len(tiny_tokenizer), 8, generator=torch.Generator().manual_seed(2))
    vocabulary = build_kit(tiny_tokenizer, embeddings, partition="vocabulary")
    for strategy in STRATEGIES:
        entry = mechanism_guarantee(strategy, 3.0, vocabulary, cluster_size=5)
        assert set(entry) >= GUARANTEE_KEYS
        assert entry["released_in_clear"].startswith(RELEASED_IN_CLEAR["vocabulary"])
    with pytest.raises(ConfigError):
        mechanism_guarantee("paraphrase-ish", 3.0, vocabulary)
    settings = FedCoTSettings(strategy="krr", eps=1.0)  # candidates "classes"
    perturber = make_perturber(tiny_tokenizer, vocabulary, settings)
    queries = client_encode(ROWS, perturber, settings, torch.Generator())
    with pytest.raises(ConfigError, match="kit"):
        privacy_report(queries, vocabulary, settings)
    inf = FedCoTSettings(strategy="metric", eps=math.inf)
    plain = client_encode(ROWS, make_perturber(tiny_tokenizer, vocabulary, inf), inf, None)  # type: ignore[arg-type]
    assert privacy_report(plain, vocabulary, inf)["released_in_clear"] == "everything"
