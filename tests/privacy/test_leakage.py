"""FDKT leakage audit: canaries, their exposure under a generator, canaries in sent texts, DCR."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from fedkt.data.synthetic import label_prefix
from fedkt.errors import ConfigError, DataError
from fedkt.privacy.leakage import (
    binomial_tail,
    canaries_in,
    canary_exposure,
    continuation_log_likelihoods,
    distance_to_closest_record,
    expected_unseen_exposure,
    exposure_from_rank,
    make_canaries,
)

LABELS = ("World", "Sports", "Business")


# ---- canaries ----


def test_canaries_are_unique_round_robin_and_look_private() -> None:
    canaries = make_canaries(7, LABELS, seed=1)
    assert [c.label for c in canaries] == [*LABELS, *LABELS, "World"]
    assert len({c.secret for c in canaries}) == 7
    assert len({c.name for c in canaries}) == 7
    assert len({c.text for c in canaries}) == 7
    for c in canaries:
        assert len(c.secret) == 6 and c.secret.isdigit()
        assert c.text == f"The account number of {c.name} is {c.secret}."
        assert c.space_size == 10**6
        assert c.training_text("Topic") == f"{label_prefix(c.label, 'Topic')} {c.text}"


def test_canaries_seeded_reproduce_unseeded_differ() -> None:
    assert make_canaries(5, LABELS, seed=3) == make_canaries(5, LABELS, seed=3)
    assert make_canaries(5, LABELS, seed=3) != make_canaries(5, LABELS, seed=4)
    a, b = make_canaries(5, LABELS), make_canaries(5, LABELS)
    assert [c.secret for c in a] != [c.secret for c in b]


def test_canary_template_and_digits() -> None:
    (canary,) = make_canaries(1, ["World"], seed=0, template="PIN {secret}", digits=4)
    assert canary.text == f"PIN {canary.secret}" and len(canary.secret) == 4
    assert canary.with_secret("0042") == "PIN 0042"


@pytest.mark.parametrize(
    ("n", "labels", "kwargs"),
    [
        (0, LABELS, {}),
        (2, (), {}),
        (2, ("a|b",), {}),
        (2, LABELS, {"template": "no secret here {name}"}),
        (2, LABELS, {"template": "{secret} {secret}"}),
        (2, LABELS, {"template": "{secret} {other}"}),
        (2, LABELS, {"digits": 0}),
        (11, LABELS, {"template": "{secret}", "digits": 1}),
    ],
)
def test_make_canaries_refuses_bad_requests(n: int, labels: tuple[str, ...], kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        make_canaries(n, labels, seed=0, **kwargs)


# ---- exposure ----


def test_exposure_formulas() -> None:
    assert exposure_from_rank(1, 63) == pytest.approx(6.0)
    assert exposure_from_rank(64, 63) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        exposure_from_rank(65, 63)
    # uniform rank: the mean of the exposures, and it tends to log2(e)
    exact = np.mean([exposure_from_rank(r, 9) for r in range(1, 11)])
    assert expected_unseen_exposure(9) == pytest.approx(exact)
    assert expected_unseen_exposure(10**6) == pytest.approx(math.log2(math.e), abs=1e-4)


def test_scores_skip_the_prefix_and_do_not_depend_on_batching(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    canaries = make_canaries(3, LABELS, seed=0)
    rows = [(label_prefix(c.label), c.training_text()) for c in canaries]
    rows.append((label_prefix("World"), label_prefix("World") + " short"))
    one = continuation_log_likelihoods(tiny_llama, tiny_tokenizer, rows, batch_size=1)
    many = continuation_log_likelihoods(tiny_llama, tiny_tokenizer, rows, batch_size=4)
    assert one == pytest.approx(many, abs=1e-4)
    prefix, text = rows[0]
    ids = [*tiny_tokenizer(text)["input_ids"], tiny_tokenizer.eos_token_id]
    start = len(tiny_tokenizer(prefix)["input_ids"])
    assert ids[:start] == tiny_tokenizer(prefix)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(tiny_llama(torch.tensor([ids])).logits[0].float(), dim=-1)
    manual = sum(float(logp[t - 1, ids[t]]) for t in range(start, len(ids)))
    assert one[0] == pytest.approx(manual, abs=1e-4)


def _train_on(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, text: str) -> None:
    """Plain Adam (no DP) on one training text + EOS until it is memorised."""
    ids = torch.tensor([[*tokenizer(text)["input_ids"], tokenizer.eos_token_id]])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(80):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    model.eval()


def test_exposure_high_for_a_memorised_canary_typical_otherwise(
    make_tiny_llama: Callable[..., LlamaForCausalLM], tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    canaries = make_canaries(8, LABELS, seed=5)
    untrained = canary_exposure(
        make_tiny_llama(), tiny_tokenizer, canaries, n_references=63, seed=0
    )
    assert untrained.max_exposure_possible == pytest.approx(6.0)
    assert untrained.mean_exposure < 3.5
    assert untrained.rank1_fraction <= 0.25

    model = make_tiny_llama()
    model.train()  # the audit must restore the caller's mode
    _train_on(model, tiny_tokenizer, canaries[0].training_text("Topic"))
    model.train()
    trained = canary_exposure(
        model, tiny_tokenizer, canaries, label_field="Topic", n_references=63, seed=0
    )
    assert model.training
    only, *others = trained.canaries
    assert only.rank == 1 and only.exposure == pytest.approx(6.0)
    assert only.log_likelihood > only.reference_mean + 5
    assert trained.max_exposure == pytest.approx(6.0)
    # the canaries it never saw keep typical exposures: the audit measures the secret
    assert np.mean([c.exposure for c in others]) < 3.5
    record = json.loads(json.dumps(trained.as_dict(), allow_nan=False))
    assert record["canaries"][0]["rank"] == 1
    assert record["n_references"] == 63 and record["max_exposure"] == pytest.approx(6.0)


def test_exposure_references_are_seeded(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    canaries = make_canaries(2, LABELS, seed=2)
    a = canary_exposure(tiny_llama, tiny_tokenizer, canaries, n_references=15, seed=7)
    b = canary_exposure(tiny_llama, tiny_tokenizer, canaries, n_references=15, seed=7)
    assert a == b


def test_exposure_refuses_bad_arguments(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    canaries = make_canaries(1, LABELS, seed=0, template="{secret}", digits=2)
    with pytest.raises(DataError):
        canary_exposure(tiny_llama, tiny_tokenizer, [])
    for bad in (0, 100):
        with pytest.raises(ConfigError):
            canary_exposure(tiny_llama, tiny_tokenizer, canaries, n_references=bad)
    with pytest.raises(ConfigError):
        canary_exposure(tiny_llama, tiny_tokenizer, canaries, n_references=5, batch_size=0)


def test_exposure_can_rank_every_other_secret(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    canaries = make_canaries(1, LABELS, seed=0, template="code {secret}", digits=2)
    report = canary_exposure(tiny_llama, tiny_tokenizer, canaries, n_references=99, seed=0)
    assert 1 <= report.canaries[0].rank <= 100


# ---- canaries in sent texts ----


def test_canaries_in_finds_verbatim_and_near_verbatim_copies() -> None:
    c0, c1, c2 = make_canaries(3, LABELS, seed=9)
    spaced = " ".join(c1.secret)
    sent = [
        "Stocks rose on Monday as the central bank held rates steady.",
        f"Breaking: {c0.text} Officials declined to comment.",  # verbatim inside a longer text
        f"the account number of {c1.name} is {spaced}",  # near-verbatim, digits spaced
        f"the account number of {c2.name} was changed last week",  # the name, not the secret
        "The account number of the club is 123456.",  # the template alone
    ]
    hits = canaries_in(sent, [c0, c1, c2])
    m0, m1, m2 = hits.matches
    assert m0.secret_in == (1,) and m0.text_in == (1,) and m0.max_overlap == 1.0
    assert m1.secret_in == (2,) and m1.text_in == (2,)
    assert m2.secret_in == () and m2.text_in == (3,)
    assert hits.found == (0, 1, 2) and hits.n_secret == 2 and hits.n_text == 3
    assert hits.n_texts_flagged == 3
    record = json.loads(json.dumps(hits.as_dict(), allow_nan=False))
    assert record["n_found"] == 3 and record["canaries"][0]["secret_in"] == [1]


def test_canaries_in_no_false_positives() -> None:
    canaries = make_canaries(4, LABELS, seed=11)
    others = make_canaries(4, LABELS, seed=12)  # same template, other names and secrets
    sent = [
        *(c.text for c in others),
        "The account number of the club is not public.",
        f"Call 0{canaries[0].secret}9 for details.",  # the digits inside a longer number
        "",
    ]
    hits = canaries_in(sent, canaries)
    assert hits.found == () and hits.n_texts_flagged == 0
    assert all(m.max_overlap < 0.5 for m in hits.matches)
    assert canaries_in([], canaries).found == ()


def test_canaries_in_refuses_bad_arguments() -> None:
    canaries = make_canaries(1, LABELS, seed=0)
    with pytest.raises(ConfigError):
        canaries_in(["x"], canaries, threshold=0)
    with pytest.raises(ConfigError):
        canaries_in(["x"], canaries, ngram=0)
    with pytest.raises(DataError):
        canaries_in("one string", canaries)


# ---- distance to closest record ----


def _unit(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    x = rng.standard_normal((n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_dcr_copies_of_train_rows_are_flagged() -> None:
    rng = np.random.default_rng(0)
    train, holdout = _unit(rng, 200), _unit(rng, 200)
    synthetic = train[:60] + 1e-3 * rng.standard_normal((60, 16))
    report = distance_to_closest_record(synthetic, train, holdout)
    assert report.closer_to_train == 1.0 and report.closer_to_train_stderr == 0.0
    assert report.p_value == pytest.approx(2.0**-60)
    assert report.median_train < 1e-4 < report.median_holdout
    assert (report.n_synthetic, report.n_train, report.n_holdout) == (60, 200, 200)
    record = json.loads(json.dumps(report.as_dict(), allow_nan=False))
    assert record["closer_to_train"] == 1.0 and record["n_compared"] == 200


def test_dcr_same_distribution_is_balanced() -> None:
    rng = np.random.default_rng(1)
    train, holdout, synthetic = _unit(rng, 300), _unit(rng, 300), _unit(rng, 400)
    report = distance_to_closest_record(synthetic, train, holdout, chunk_rows=64)
    assert 0.4 < report.closer_to_train < 0.6
    assert report.p_value > 0.05
    assert report.closer_to_train_stderr == pytest.approx(0.025, abs=0.002)
    assert report.mean_train == pytest.approx(report.mean_holdout, abs=0.02)


def test_dcr_subsamples_the_larger_set() -> None:
    rng = np.random.default_rng(2)
    train, holdout, synthetic = _unit(rng, 3000, 8), _unit(rng, 100, 8), _unit(rng, 300, 8)
    report = distance_to_closest_record(synthetic, train, holdout, seed=3)
    assert report.n_compared == 100 and (report.n_train, report.n_holdout) == (3000, 100)
    assert 0.4 < report.closer_to_train < 0.6
    assert report == distance_to_closest_record(synthetic, train, holdout, seed=3)
    # the bias the subsampling removes: against all 3000 rows, train would win most samples
    unequal = (synthetic @ train.T).max(axis=1) > (synthetic @ holdout.T).max(axis=1)
    assert unequal.mean() > 0.8


def test_dcr_ties_count_for_neither_side() -> None:
    rng = np.random.default_rng(4)
    shared = _unit(rng, 20)
    report = distance_to_closest_record(shared, shared, shared.copy())
    assert report.n_ties == 20 and report.closer_to_train == 0.0 and report.p_value == 1.0


def test_dcr_normalises_rows_itself() -> None:
    rng = np.random.default_rng(5)
    train, holdout, synthetic = _unit(rng, 50), _unit(rng, 50), _unit(rng, 30)
    plain = distance_to_closest_record(synthetic, train, holdout)
    scaled = distance_to_closest_record(3 * synthetic, 0.5 * train, holdout)
    assert plain.closer_to_train == scaled.closer_to_train
    assert plain.median_train == pytest.approx(scaled.median_train)


@pytest.mark.parametrize(
    ("synthetic", "train", "holdout"),
    [
        (np.ones((3, 4)), np.ones((3, 5)), np.ones((3, 4))),  # widths differ
        (np.ones((0, 4)), np.ones((3, 4)), np.ones((3, 4))),  # no synthetic rows
        (np.ones((3, 4)), np.ones((3, 4)), np.ones((0, 4))),  # no held-out rows
        (np.ones(4), np.ones((3, 4)), np.ones((3, 4))),  # 1-D
        (np.ones((3, 4)), np.zeros((3, 4)), np.ones((3, 4))),  # zero rows
        (np.full((3, 4), np.nan), np.ones((3, 4)), np.ones((3, 4))),  # NaN
    ],
)
def test_dcr_refuses_bad_inputs(
    synthetic: np.ndarray, train: np.ndarray, holdout: np.ndarray
) -> None:
    with pytest.raises(DataError):
        distance_to_closest_record(synthetic, train, holdout)


def test_dcr_refuses_bad_chunk() -> None:
    x = np.eye(3)
    with pytest.raises(ConfigError):
        distance_to_closest_record(x, x, x, chunk_rows=0)


def test_binomial_tail_is_the_exact_sign_test() -> None:
    assert binomial_tail(0, 0) == 1.0
    assert binomial_tail(0, 10) == 1.0
    assert binomial_tail(10, 10) == 2.0**-10
    assert binomial_tail(8, 10) == pytest.approx((45 + 10 + 1) / 1024)
    assert 0.0 <= binomial_tail(5000, 5000) < 1e-300
    with pytest.raises(ValueError):
        binomial_tail(11, 10)
