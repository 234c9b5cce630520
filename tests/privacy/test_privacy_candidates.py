"""build_kit: fixed, data-independent candidate sets read from the tokenizer and embeddings."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from conftest import build_tiny_tokenizer
from fedkt.errors import ConfigError
from fedkt.privacy import CandidateSet, PerturbationKit, build_kit


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer(600)  # enough merges for whole words like " water", " 48"


def embeddings(n: int, d: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def texts_of(tokenizer: PreTrainedTokenizerFast, cset: CandidateSet) -> list[str]:
    return [str(tokenizer.decode([i])) for i in cset.token_ids.tolist()]


def test_sets_by_class(tokenizer: PreTrainedTokenizerFast) -> None:
    kit = build_kit(tokenizer, embeddings(len(tokenizer)))
    assert set(kit.describe()) == {"words", "word_pieces", "numbers", "number_pieces"}
    words = texts_of(tokenizer, kit.set_named("words"))
    assert " water" in words and " the" in words
    assert all(w.startswith(" ") and w[1:].isalpha() and len(w) >= 4 for w in words)
    pieces = texts_of(tokenizer, kit.set_named("word_pieces"))
    assert all(p.isalpha() and len(p) >= 3 for p in pieces)
    assert " 48" in texts_of(tokenizer, kit.set_named("numbers"))
    digits = texts_of(tokenizer, kit.set_named("number_pieces"))
    assert set("0123456789") <= set(digits) and all(d.isdigit() for d in digits)
    passed = {" in", " a", ".", "?", "\n", "<|endoftext|>"}  # short words, punctuation, special
    everything = {t for s in kit.sets for t in texts_of(tokenizer, s)}
    assert not passed & everything


def test_unit_embeddings_and_lookup(tokenizer: PreTrainedTokenizerFast) -> None:
    emb = embeddings(len(tokenizer) + 8)  # padded embedding rows beyond the tokenizer are ignored
    kit = build_kit(tokenizer, emb)
    set_of, row_of = kit.lookup(len(tokenizer))
    for index, cset in enumerate(kit.sets):
        assert cset.unit_embeddings.dtype == torch.float32
        assert torch.allclose(cset.unit_embeddings.norm(dim=-1), torch.ones(cset.size))
        assert torch.allclose(cset.similarity(torch.tensor([0]))[0, 0], torch.tensor(1.0))
        assert (set_of[cset.token_ids] == index).all()
        assert row_of[cset.token_ids].tolist() == list(range(cset.size))
    assert int((set_of >= 0).sum()) == sum(kit.describe().values())


def test_min_letters_and_max_words(tokenizer: PreTrainedTokenizerFast) -> None:
    full = build_kit(tokenizer, embeddings(len(tokenizer)), min_letters=3)
    strict = build_kit(tokenizer, embeddings(len(tokenizer)), min_letters=5)
    assert strict.set_named("words").size < full.set_named("words").size
    capped = build_kit(tokenizer, embeddings(len(tokenizer)), max_words=10)
    for name in ("words", "word_pieces"):
        kept = capped.set_named(name).token_ids
        assert kept.tolist() == full.set_named(name).token_ids[:10].tolist()  # lowest ids
    assert capped.set_named("number_pieces").size == full.set_named("number_pieces").size


def test_zero_embeddings_are_left_out(tokenizer: PreTrainedTokenizerFast) -> None:
    emb = embeddings(len(tokenizer))
    water = tokenizer.convert_tokens_to_ids("Ġwater")
    emb[water] = 0.0
    kit = build_kit(tokenizer, emb)
    assert water not in kit.set_named("words").token_ids.tolist()


def test_kit_is_independent_of_any_text(tokenizer: PreTrainedTokenizerFast) -> None:
    a = build_kit(tokenizer, embeddings(len(tokenizer), seed=1))
    b = build_kit(tokenizer, embeddings(len(tokenizer), seed=2))
    assert a.describe() == b.describe()
    for x, y in zip(a.sets, b.sets, strict=True):
        assert torch.equal(x.token_ids, y.token_ids)


def test_errors(tokenizer: PreTrainedTokenizerFast) -> None:
    with pytest.raises(ConfigError, match="min_letters"):
        build_kit(tokenizer, embeddings(len(tokenizer)), min_letters=0)
    with pytest.raises(ConfigError, match="embedding_matrix"):
        build_kit(tokenizer, torch.zeros(len(tokenizer)))
    one = CandidateSet("a", torch.tensor([1, 2]), torch.eye(2))
    with pytest.raises(ConfigError, match="overlap"):
        PerturbationKit((one, CandidateSet("b", torch.tensor([2, 3]), torch.eye(2))))
    with pytest.raises(ConfigError, match="no candidate set"):
        PerturbationKit((one,)).set_named("words")
