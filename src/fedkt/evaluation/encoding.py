"""Tokenise (context, continuation) pairs exactly as lm-evaluation-harness does.

Scores only agree with lm-eval when the token split agrees, so this module mirrors
``TemplateLM._encode_pair`` / ``HFLM.tok_encode`` and the left truncation of
``HFLM._loglikelihood_tokens`` (lm-eval 0.4.13):

- trailing whitespace of the context moves to the front of the continuation;
- the pair is encoded as one string and split at ``len(tok(context))``, so a token that
  straddles the boundary belongs to the continuation;
  (the split itself lives in `fedkt.data.tokenization`, shared with training);
- a pair longer than ``max_length + 1`` tokens loses tokens from the left of the context.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PretrainedConfig, PreTrainedTokenizerBase

from fedkt.data.tokenization import encode_pair
from fedkt.errors import DataError

DEFAULT_MAX_LENGTH = 2048
"""lm-eval's fallback when neither the config nor the tokenizer states a context length."""

_TOKENIZER_INFINITY = int(1e30)  # transformers' "model_max_length not set" marker


@dataclass(frozen=True)
class Request:
    """One scored pair: the context tokens the model sees and the continuation it is scored on."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


def resolve_max_length(config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase) -> int:
    """The context window lm-eval's ``HFLM.max_length`` picks for a model with this config."""
    config = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    model_max = getattr(tokenizer, "model_max_length", None)
    if model_max is not None and model_max != _TOKENIZER_INFINITY:
        return int(model_max)
    return DEFAULT_MAX_LENGTH


def encode_request(
    tokenizer: PreTrainedTokenizerBase,
    context: str,
    continuation: str,
    max_length: int,
    *,
    name: str,
) -> Request:
    """Encode one pair and left-truncate it to ``max_length + 1`` tokens, as lm-eval does.

    The model input is ``(context + continuation)[-(max_length + 1):][:-1]``; keeping the
    truncated context separate lets requests that share it share one forward pass.
    `name` identifies the pair in error messages.
    """
    context_ids, cont_ids = encode_pair(tokenizer, context, continuation)
    if not cont_ids:
        raise DataError(
            f"{name}: continuation {continuation!r} adds no token after the context; "
            "choices must be non-empty text"
        )
    if len(cont_ids) > max_length:
        raise DataError(
            f"{name}: continuation is {len(cont_ids)} tokens, longer than the model's "
            f"{max_length}-token window; shorten the choice"
        )
    window = (context_ids + cont_ids)[-(max_length + 1) :]
    return Request(tuple(window[: len(window) - len(cont_ids)]), tuple(cont_ids))
