"""Tokenise (context, continuation) pairs exactly as lm-evaluation-harness does.

Training and evaluation must agree on where an answer starts, and scores only agree with
lm-eval when the token split agrees, so both use this one module. It mirrors
``TemplateLM._encode_pair`` / ``HFLM.tok_encode`` (lm-eval 0.4.13):

- trailing whitespace of the context moves to the front of the continuation;
- the pair is encoded as one string and split at ``len(tok(context))``, so a token that
  straddles the boundary belongs to the continuation;
- special tokens follow the tokenizer's own default (lm-eval's ``add_bos_token=None``), except
  that a string already starting with the prefix token's text gets none added;
- an empty context is replaced by the prefix token (BOS, else EOS).
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from fedkt.errors import DataError


def _prefix_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """lm-eval's ``prefix_token_id``: BOS, else EOS."""
    token_id = tokenizer.bos_token_id
    return token_id if token_id is not None else tokenizer.eos_token_id


def tok_encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """``HFLM.tok_encode`` with lm-eval's defaults (the tokenizer decides on special tokens)."""
    prefix_id = _prefix_id(tokenizer)
    # decode() of one id is a str; its annotation also allows the batched list form.
    prefix = str(tokenizer.decode(prefix_id)) if prefix_id is not None else ""
    add_special = not (prefix and text.startswith(prefix))
    return list(tokenizer.encode(text, add_special_tokens=add_special))


def _encode_without_context(
    tokenizer: PreTrainedTokenizerBase, continuation: str
) -> tuple[list[int], list[int]]:
    """lm-eval conditions an empty context on the prefix token (or the continuation's first)."""
    prefix_id = _prefix_id(tokenizer)
    if prefix_id is None:
        raise DataError(
            f"tokenizer {tokenizer.name_or_path!r} has neither a BOS nor an EOS token, so an "
            "empty context cannot be scored; give every example a non-empty context"
        )
    cont = list(tokenizer.encode(continuation, add_special_tokens=False))
    if cont and cont[0] == prefix_id:
        return cont[:1], cont[1:]
    return [prefix_id], cont


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, context: str, continuation: str
) -> tuple[list[int], list[int]]:
    """Split ``context + continuation`` into (context tokens, continuation tokens) like lm-eval."""
    if not context:
        return _encode_without_context(tokenizer, continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tok_encode(tokenizer, context + continuation)
    context_ids = tok_encode(tokenizer, context)
    return context_ids, whole[len(context_ids) :]
