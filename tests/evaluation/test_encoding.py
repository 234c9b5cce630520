"""The token split of (context, continuation) pairs follows lm-eval exactly."""

from __future__ import annotations

import pytest

from fedkt.data import encode_pair
from fedkt.errors import DataError
from fedkt.evaluation import encode_request, resolve_max_length, score_requests

PAIRS = [
    ("Question: Which gas?\nAnswer:", " carbon dioxide"),
    ("Question: Which gas?\nAnswer: ", "carbon dioxide"),  # trailing space moves to the choice
    ("Topic:\n\n", " Sports"),
    ("Natalia sold 48 clips", "."),
]


@pytest.fixture
def hflm(tiny_llama, tiny_tokenizer):
    huggingface = pytest.importorskip("lm_eval.models.huggingface")
    return huggingface.HFLM(pretrained=tiny_llama, tokenizer=tiny_tokenizer, batch_size=2)


@pytest.mark.parametrize(("context", "continuation"), PAIRS)
def test_encode_pair_matches_lm_eval(hflm, tiny_tokenizer, context, continuation):
    assert encode_pair(tiny_tokenizer, context, continuation) == hflm._encode_pair(
        context, continuation
    )


def test_trailing_space_belongs_to_the_continuation(tiny_tokenizer):
    context_ids, cont_ids = encode_pair(tiny_tokenizer, "Answer: ", "oxygen")
    assert context_ids == tiny_tokenizer.encode("Answer:")
    assert tiny_tokenizer.decode(cont_ids) == " oxygen"


def test_empty_context_is_conditioned_on_the_prefix_token(hflm, tiny_llama, tiny_tokenizer):
    from lm_eval.api.instance import Instance

    request = encode_request(tiny_tokenizer, "", " oxygen", 256, name="unconditional")
    assert request.context == (tiny_tokenizer.eos_token_id,)  # no BOS: EOS stands in
    [(expected, _)] = hflm.loglikelihood(
        [Instance("loglikelihood", doc={}, arguments=("", " oxygen"), idx=0)], disable_tqdm=True
    )
    assert score_requests(tiny_llama, [request]) == pytest.approx([expected], abs=1e-4)


def test_long_pairs_lose_context_tokens_from_the_left(tiny_tokenizer):
    context, continuation = "Question: Which gas do plants absorb?\nAnswer:", " oxygen"
    context_ids, cont_ids = encode_pair(tiny_tokenizer, context, continuation)
    request = encode_request(tiny_tokenizer, context, continuation, 10, name="long")
    assert request.continuation == tuple(cont_ids)
    assert request.context == tuple((context_ids + cont_ids)[-11 : -len(cont_ids)])
    assert len(request.context) + len(request.continuation) - 1 == 10  # the model input


def test_continuation_longer_than_the_window_is_refused(tiny_tokenizer):
    with pytest.raises(DataError, match="'ex' choice 1: continuation is"):
        encode_request(tiny_tokenizer, "Q:", " carbon dioxide", 3, name="'ex' choice 1")


def test_max_length_comes_from_the_config(tiny_llama, tiny_tokenizer):
    assert resolve_max_length(tiny_llama.config, tiny_tokenizer) == 256
