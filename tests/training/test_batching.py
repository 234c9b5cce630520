"""Answer-only encoding must split context and answer exactly where lm-eval does."""

from __future__ import annotations

import pytest
import torch
from tokenizers import processors
from transformers import PreTrainedTokenizerFast

from fedkt.errors import DataError
from fedkt.training import IGNORE_INDEX, collate, encode_answer_only

CONTEXT = "Question: Which gas do plants absorb from the air?\nAnswer:"
ANSWER = " carbon dioxide"


@pytest.fixture(scope="module")
def bos_tokenizer(tiny_tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """The tiny tokenizer, but prepending a BOS itself, as Llama-2 tokenizers do."""
    backend = tiny_tokenizer.backend_tokenizer.__class__.from_str(
        tiny_tokenizer.backend_tokenizer.to_str()
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
    )


def lm_eval_split(tokenizer: PreTrainedTokenizerFast, context: str, continuation: str) -> tuple:
    """lm-eval's own `_encode_pair` + `tok_encode`, on an HFLM shell holding only a tokenizer."""
    huggingface = pytest.importorskip("lm_eval.models.huggingface")
    lm = huggingface.HFLM.__new__(huggingface.HFLM)
    lm.tokenizer, lm.backend = tokenizer, "causal"
    lm.add_bos_token, lm.custom_prefix_token_id = None, None  # HFLM's defaults
    return lm._encode_pair(context, continuation)


def test_mask_is_exact_and_eos_is_learned(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    context_ids = tiny_tokenizer.encode(CONTEXT)
    whole_ids = tiny_tokenizer.encode(CONTEXT + ANSWER)
    eos = tiny_tokenizer.eos_token_id

    encoded = encode_answer_only(tiny_tokenizer, CONTEXT, ANSWER, max_length=512)

    assert encoded["input_ids"] == [*whole_ids, eos]
    n_context = len(context_ids)
    assert encoded["labels"][:n_context] == [IGNORE_INDEX] * n_context
    assert encoded["labels"][n_context:] == encoded["input_ids"][n_context:]
    assert encoded["labels"][-1] == eos
    learned = [t for t in encoded["labels"] if t != IGNORE_INDEX]
    assert tiny_tokenizer.decode(learned) == ANSWER + tiny_tokenizer.eos_token


@pytest.mark.parametrize("tokenizer_name", ["tiny_tokenizer", "bos_tokenizer"])
@pytest.mark.parametrize(
    ("context", "continuation"),
    [(CONTEXT, ANSWER), (CONTEXT + " ", "carbon dioxide"), ("Topic:  ", " Sports")],
)
def test_split_matches_lm_eval(
    request: pytest.FixtureRequest, tokenizer_name: str, context: str, continuation: str
) -> None:
    tokenizer = request.getfixturevalue(tokenizer_name)
    context_ids, answer_ids = lm_eval_split(tokenizer, context, continuation)

    encoded = encode_answer_only(tokenizer, context, continuation, max_length=512)

    assert encoded["input_ids"] == [*context_ids, *answer_ids, tokenizer.eos_token_id]
    assert encoded["labels"] == [IGNORE_INDEX] * len(context_ids) + [
        *answer_ids,
        tokenizer.eos_token_id,
    ]


def test_trailing_space_moves_to_the_answer(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    moved = encode_answer_only(tiny_tokenizer, CONTEXT + " ", ANSWER.lstrip(), max_length=512)
    assert moved == encode_answer_only(tiny_tokenizer, CONTEXT, ANSWER, max_length=512)


def test_bos_is_context_not_label(bos_tokenizer: PreTrainedTokenizerFast) -> None:
    encoded = encode_answer_only(bos_tokenizer, CONTEXT, ANSWER, max_length=512)
    assert encoded["input_ids"][0] == bos_tokenizer.bos_token_id
    assert encoded["input_ids"][1] != bos_tokenizer.bos_token_id
    assert encoded["labels"][0] == IGNORE_INDEX


def test_truncation_cuts_context_from_the_left(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    full = encode_answer_only(tiny_tokenizer, CONTEXT, ANSWER, max_length=512)
    n_answer = sum(t != IGNORE_INDEX for t in full["labels"])

    cut = encode_answer_only(tiny_tokenizer, CONTEXT, ANSWER, max_length=n_answer + 2)

    assert cut["input_ids"] == full["input_ids"][-(n_answer + 2) :]
    assert cut["labels"] == [IGNORE_INDEX] * 2 + full["labels"][-n_answer:]


def test_answer_that_does_not_fit_is_an_error(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    full = encode_answer_only(tiny_tokenizer, CONTEXT, ANSWER, max_length=512)
    n_answer = sum(t != IGNORE_INDEX for t in full["labels"])
    with pytest.raises(DataError, match="max_length"):
        encode_answer_only(tiny_tokenizer, CONTEXT, ANSWER, max_length=n_answer)


def test_empty_context_is_an_error(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    with pytest.raises(DataError, match="empty context"):
        encode_answer_only(tiny_tokenizer, "", ANSWER, max_length=512)


def test_collate_right_pads() -> None:
    batch = [
        {"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]},
        {"input_ids": [8, 9], "labels": [IGNORE_INDEX, 9]},
    ]
    out = collate(batch, pad_id=1)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 9, 1]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert out["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX, 9, IGNORE_INDEX]]
    assert all(t.dtype == torch.long for t in out.values())
