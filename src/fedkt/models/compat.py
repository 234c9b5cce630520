"""Tokenizer compatibility: logit-level transfer (KD between an LLM and an SLM) compares
distributions position by position over token ids, which only means something when both models
map every string to the same ids.
"""

from __future__ import annotations

import hashlib
import json

from transformers import PreTrainedTokenizerBase

from fedkt.errors import TokenizerMismatchError

_SPECIAL_IDS = ("eos_token_id", "pad_token_id", "bos_token_id")


def vocabulary_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A sha256 over the token-to-id mapping and special ids.

    Equal fingerprints mean interchangeable token ids; two processes (a server and a client) can
    compare them without shipping tokenizers.
    """
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": [getattr(tokenizer, attr) for attr in _SPECIAL_IDS],
    }
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def check_same_vocabulary(
    a: PreTrainedTokenizerBase,
    b: PreTrainedTokenizerBase,
    *,
    names: tuple[str, str] = ("LLM", "SLM"),
) -> None:
    """Raise TokenizerMismatchError unless ``a`` and ``b`` share vocabulary and special ids."""
    if vocabulary_fingerprint(a) == vocabulary_fingerprint(b):
        return
    first, second = _label(names[0], a), _label(names[1], b)
    raise TokenizerMismatchError(
        f"the {first} and {second} tokenizers differ: {'; '.join(_differences(a, b))}. "
        f"Logit-level transfer needs one vocabulary: choose the {names[1]} from the {names[0]}'s "
        "family (e.g. 'smollm2-135m@layers=8' for 'smollm2-135m') or a text-level algorithm"
    )


def _label(role: str, tokenizer: PreTrainedTokenizerBase) -> str:
    return f"{role} ({tokenizer.name_or_path or 'unnamed'})"


def _differences(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> list[str]:
    found = []
    if len(a) != len(b):
        found.append(f"vocabulary size {len(a)} vs {len(b)}")
    vocab_a, vocab_b = a.get_vocab(), b.get_vocab()
    changed = sorted(t for t in vocab_a.keys() | vocab_b.keys() if vocab_a.get(t) != vocab_b.get(t))
    if changed:
        token = changed[0]
        found.append(
            f"{len(changed)} tokens have different ids (e.g. {token!r}: "
            f"{vocab_a.get(token)} vs {vocab_b.get(token)})"
        )
    for attr in _SPECIAL_IDS:
        if getattr(a, attr) != getattr(b, attr):
            found.append(f"{attr} {getattr(a, attr)} vs {getattr(b, attr)}")
    return found
