"""TextPerturber end to end on a tiny BPE tokenizer with random embeddings."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from fedkt.errors import ConfigError
from fedkt.privacy import (
    PerturbationKit,
    PrivacyRecord,
    TextPerturber,
    build_kit,
    join_perturbed,
    privacy_summary,
    public_importance,
    secure_generator,
    unperturbed,
)

TEXTS = [
    "Question: Which gas do plants absorb from the air?\nChoices: oxygen, carbon dioxide",
    "Natalia sold 48 clips in April and half as many in May. #### 72",
    "Scientists launched a new satellite to study the sun.",
    "",
    "  odd   spacing\tand\ttabs, unicode café ☀ 100 degrees  ",
]


@pytest.fixture(scope="module")
def importance(tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    return public_importance(tokenizer, ["the sun and the sea", "water rock soil", "the gas"])


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_infinite_eps_returns_the_text_exactly(
    tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit, importance: torch.Tensor
) -> None:
    for perturber in (
        TextPerturber(tokenizer, kit, "em"),
        TextPerturber(tokenizer, kit, "aem", importance),
    ):
        out = perturber.perturb(TEXTS, math.inf, gen())
        assert [p.text for p in out] == TEXTS
        assert all(p.output_ids == p.source_ids for p in out)
        assert all(p.record.strategy == perturber.strategy for p in out)
        assert out[0].record.prompt_eps == math.inf and out[3].record.prompt_eps == 0.0


@pytest.mark.parametrize("strategy", ["em", "aem"])
def test_outputs_stay_in_the_token_s_candidate_set(
    strategy: str,
    tokenizer: PreTrainedTokenizerFast,
    kit: PerturbationKit,
    importance: torch.Tensor,
) -> None:
    perturber = TextPerturber(tokenizer, kit, strategy, importance)  # type: ignore[arg-type]
    set_of, _ = kit.lookup(len(tokenizer))
    out = perturber.perturb(TEXTS * 5, 0.5, gen())
    changed = 0
    for p in out:
        src, dst = (
            torch.tensor(p.source_ids, dtype=torch.long),
            torch.tensor(p.output_ids, dtype=torch.long),
        )
        assert src.shape == dst.shape
        assert torch.equal(set_of[src], set_of[dst])  # same class (or both passed through)
        assert torch.equal(src[set_of[src] < 0], dst[set_of[src] < 0])  # pass-through untouched
        changed += int((src != dst).sum())
        if p.source_ids != p.output_ids:
            assert p.text == tokenizer.decode(list(p.output_ids))
    assert changed > 0


def test_numbers_are_perturbed_not_passed_through(
    tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit
) -> None:
    out = TextPerturber(tokenizer, kit, "em").perturb(["I have 48 apples"] * 60, 0.0, gen())
    numbers = {tokenizer.decode([i]) for i in kit.set_named("numbers").token_ids.tolist()}
    sent = [p.text.split()[2] for p in out]
    assert {f" {s}" for s in sent} <= numbers
    assert set(sent) != {"48"}  # at eps = 0 the number is uniform over the set
    assert all(p.record.tokens_perturbed >= 1 for p in out)


def test_eps_zero_is_uniform_over_the_set(
    tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit
) -> None:
    words = kit.set_named("words")
    k, n = words.size, 40 * words.size
    out = TextPerturber(tokenizer, kit, "em").perturb([" water"] * n, 0.0, gen(4))
    picked = torch.tensor([p.output_ids[0] for p in out])
    counts = (picked[:, None] == words.token_ids[None, :]).sum(0).double()
    assert int(counts.sum()) == n
    expected = n / k
    statistic = float(((counts - expected) ** 2 / expected).sum())
    df = k - 1
    h = 2.0 / (9.0 * df)
    assert statistic < df * (1.0 - h + 3.09 * math.sqrt(h)) ** 3  # chi-square 0.999 quantile


def test_same_seed_same_output_other_seed_differs(
    tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit, importance: torch.Tensor
) -> None:
    for strategy in ("em", "aem"):
        perturber = TextPerturber(tokenizer, kit, strategy, importance)
        a = [p.text for p in perturber.perturb(TEXTS, 1.0, gen(7))]
        b = [p.text for p in perturber.perturb(TEXTS, 1.0, gen(7))]
        c = [p.text for p in perturber.perturb(TEXTS, 1.0, gen(8))]
        assert a == b and a != c


def test_records_add_up(tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit) -> None:
    out = TextPerturber(tokenizer, kit, "em").perturb(TEXTS, 3.0, gen())
    for text, p in zip(TEXTS, out, strict=True):
        r = p.record
        assert r.tokens_perturbed + r.tokens_passed_through == len(p.source_ids)
        assert len(p.source_ids) == len(tokenizer(text, add_special_tokens=False)["input_ids"])
        assert r.eps_per_token == (3.0,) * r.tokens_perturbed
        assert r.prompt_eps == pytest.approx(3.0 * r.tokens_perturbed)
        assert r.to_dict()["prompt_eps"] == r.prompt_eps
    assert out[3].record == PrivacyRecord("em", (), 0, 0, 0.0)
    summary = privacy_summary([p.record for p in out])
    assert summary["tokens_perturbed"] == sum(p.record.tokens_perturbed for p in out)
    assert summary["eps_per_token_max"] == 3.0


def test_aem_budgets_sum_to_the_prompt_budget(
    tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit, importance: torch.Tensor
) -> None:
    out = TextPerturber(tokenizer, kit, "aem", importance).perturb(TEXTS, 3.0, gen())
    spread = False
    for p in out:
        r = p.record
        assert len(r.eps_per_token) == r.tokens_perturbed
        assert r.prompt_eps == pytest.approx(3.0 * r.tokens_perturbed, rel=1e-12)
        assert math.fsum(r.eps_per_token) == pytest.approx(r.prompt_eps, rel=1e-12)
        assert all(e >= 0.1 * 3.0 - 1e-12 for e in r.eps_per_token)  # the floor share
        spread |= len(set(r.eps_per_token)) > 1
    assert spread  # importance really moved budget between tokens


def test_unperturbed_baseline_records_infinite_eps(tokenizer: PreTrainedTokenizerFast) -> None:
    out = unperturbed(tokenizer, TEXTS[:2])
    assert [p.text for p in out] == TEXTS[:2]
    assert out[0].record.strategy == "none" and out[0].record.prompt_eps == math.inf


def test_public_importance_is_smoothed_idf(tokenizer: PreTrainedTokenizerFast) -> None:
    idf = public_importance(tokenizer, [" the sun", " the sea", " rock"])
    the, sun = tokenizer.convert_tokens_to_ids("Ġthe"), tokenizer.convert_tokens_to_ids("Ġsun")
    assert idf.shape == (len(tokenizer),)
    assert float(idf[the]) == pytest.approx(math.log(4 / 3) + 1)
    assert float(idf[sun]) == pytest.approx(math.log(4 / 2) + 1)
    assert float(idf.min()) >= 1.0 and float(idf.max()) == pytest.approx(math.log(4) + 1)
    assert torch.equal(public_importance(tokenizer, []), torch.ones(len(tokenizer)))


def test_bad_arguments(
    tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit, importance: torch.Tensor
) -> None:
    with pytest.raises(ConfigError, match="eps"):
        TextPerturber(tokenizer, kit, "em").perturb(TEXTS, -0.1, gen())
    with pytest.raises(ConfigError, match="eps"):
        TextPerturber(tokenizer, kit, "em").perturb(TEXTS, math.nan, gen())
    with pytest.raises(ConfigError, match="importance"):
        TextPerturber(tokenizer, kit, "aem")
    with pytest.raises(ConfigError, match="importance"):
        TextPerturber(tokenizer, kit, "aem", importance[:10])
    with pytest.raises(ConfigError, match="strategy"):
        TextPerturber(tokenizer, kit, "dp")  # type: ignore[arg-type]


def test_secure_generators_draw_fresh_noise_the_seed_cannot_replay() -> None:
    # Why seeding with secrets.randbits(64) is not enough: the CPU generator keeps 32 bits.
    low, high = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5 + 2**32)
    assert torch.equal(torch.rand(4, generator=low), torch.rand(4, generator=high))
    first, second = secure_generator(), secure_generator()
    draws = torch.rand(64, generator=first)
    assert not torch.equal(draws, torch.rand(64, generator=second))
    replay = torch.Generator().manual_seed(first.initial_seed())
    assert not torch.equal(torch.rand(64, generator=replay)[:8], draws[:8])
    out = torch.multinomial(torch.ones(50), 20, generator=secure_generator())
    assert out.unique().numel() == 20  # a working generator: sampling without replacement


def test_the_vocabulary_kit_perturbs_every_token_and_keeps_only_the_count(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    emb = torch.randn(len(tokenizer), 16, generator=torch.Generator().manual_seed(0))
    kit = build_kit(tokenizer, emb, partition="vocabulary")
    assert [s.name for s in kit.sets] == ["vocabulary"]
    assert kit.sets[0].size == len(tokenizer) - len(tokenizer.all_special_ids)
    out = TextPerturber(tokenizer, kit, "em").perturb(TEXTS[:3] * 20, 0.0, gen(3))
    for p in out:
        assert p.record.tokens_passed_through == 0
        assert p.record.tokens_perturbed == len(p.source_ids) == len(p.output_ids)
    first = [p for p in out if p.source_ids == out[0].source_ids]
    assert sum("?" in p.text for p in first) < len(first) / 2  # punctuation is replaced too
    with pytest.raises(ConfigError, match="max_words"):
        build_kit(tokenizer, emb, partition="vocabulary", max_words=10)
    padded = TextPerturber(tokenizer, kit, "em", pad_to=8)
    space = tokenizer(" ", add_special_tokens=False)["input_ids"]
    assert padded.pad_id == space[0]
    for p in padded.perturb(TEXTS, 1.0, gen()):
        assert len(p.source_ids) % 8 == 0 and len(p.output_ids) == len(p.source_ids)
        assert p.record.tokens_perturbed == len(p.source_ids)  # the pads are spent budget


def test_join_perturbed_counts_the_fields_only(
    tokenizer: PreTrainedTokenizerFast, kit: PerturbationKit
) -> None:
    parts = TextPerturber(tokenizer, kit, "em").perturb(["the sun", "sea water"], 2.0, gen())
    joined = join_perturbed(parts, f"{parts[0].text}\nChoices: {parts[1].text}")
    assert joined.record.eps_per_token == parts[0].record.eps_per_token + (
        parts[1].record.eps_per_token
    )
    assert joined.record.prompt_eps == pytest.approx(2.0 * joined.record.tokens_perturbed)
    assert joined.source_ids == parts[0].source_ids + parts[1].source_ids
    with pytest.raises(ConfigError, match="one strategy"):
        join_perturbed([parts[0], *unperturbed(tokenizer, ["x"])], "x")
