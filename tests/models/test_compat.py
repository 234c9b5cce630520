from __future__ import annotations

import copy

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from fedkt.errors import ModelError, TokenizerMismatchError
from fedkt.models import check_same_vocabulary, vocabulary_fingerprint


def _other_family_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer from another corpus: different tokens, sizes and ids."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]"])
    tok.train_from_iterator(["a completely different corpus of words"] * 2, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )


def test_same_tokenizer_passes(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    check_same_vocabulary(tiny_tokenizer, tiny_tokenizer)
    check_same_vocabulary(tiny_tokenizer, copy.deepcopy(tiny_tokenizer))
    assert vocabulary_fingerprint(tiny_tokenizer) == vocabulary_fingerprint(
        copy.deepcopy(tiny_tokenizer)
    )


def test_other_family_is_refused(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    other = _other_family_tokenizer()
    with pytest.raises(TokenizerMismatchError) as caught:
        check_same_vocabulary(tiny_tokenizer, other, names=("server LLM", "client 2 SLM"))
    message = str(caught.value)
    assert "server LLM" in message and "client 2 SLM" in message
    assert f"vocabulary size {len(tiny_tokenizer)} vs {len(other)}" in message
    assert "tokens have different ids" in message
    assert "eos_token_id 0 vs 2" in message
    assert "smollm2-135m@layers=8" in message
    assert isinstance(caught.value, ModelError)


def test_special_token_difference_alone_is_refused(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    padded_with_eos = copy.deepcopy(tiny_tokenizer)
    padded_with_eos.pad_token = padded_with_eos.eos_token
    with pytest.raises(TokenizerMismatchError, match=r"pad_token_id 1 vs 0") as caught:
        check_same_vocabulary(tiny_tokenizer, padded_with_eos)
    assert "vocabulary size" not in str(caught.value)
    assert "different ids" not in str(caught.value)
