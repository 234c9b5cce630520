"""Public token statistics: smoothed inverse document frequency (adaptive EM's importance)
and a smoothed unigram prior (the inversion audit's attacker).

Computed on PUBLIC text only (e.g. the public split, or any corpus the server may see), so the
score table itself carries nothing private. High IDF = rare, content-bearing token: AEM gives it
a larger share of the prompt budget, so the words that carry the question survive perturbation
more often, and frequent filler words absorb more noise. (Pass another public table, e.g. its
reciprocal, for the opposite policy; the prompt's DP guarantee does not depend on the table,
see fedkt.privacy.mechanisms.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase


def public_importance(
    tokenizer: PreTrainedTokenizerBase, public_texts: Sequence[str]
) -> torch.Tensor:
    """(len(tokenizer),) float32 smoothed IDF: ln((1 + N) / (1 + df_t)) + 1.

    df_t is the number of the N public texts containing token t (scikit-learn's smooth_idf);
    every value is >= 1, tokens never seen get the maximum, and N = 0 gives all ones (uniform).
    """
    vocab = len(tokenizer)
    texts = list(public_texts)
    if not texts:
        return torch.ones(vocab, dtype=torch.float32)
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([t for row in encoded for t in row], dtype=torch.long)
    docs = torch.repeat_interleave(
        torch.arange(len(texts)), torch.tensor([len(row) for row in encoded], dtype=torch.long)
    )
    pairs = torch.unique(docs * vocab + ids)  # one (document, token) pair per occurrence kind
    df = torch.bincount(pairs % vocab, minlength=vocab).to(torch.float64)
    idf = torch.log((1.0 + len(texts)) / (1.0 + df)) + 1.0
    return idf.to(torch.float32)


def public_unigram(
    tokenizer: PreTrainedTokenizerBase, public_texts: Sequence[str], *, smoothing: float = 1.0
) -> torch.Tensor:
    """(len(tokenizer),) float64 log-probabilities of a smoothed unigram model of public text.

    P(t) = (count_t + smoothing) / (N + smoothing * V) over the N tokens of ``public_texts``
    (add-one by default, so no token has probability 0); no text gives the uniform prior. The
    inversion audit's attacker uses it as its prior over the private tokens
    (`fedkt.privacy.audit`): public text only, like the importance table.
    """
    if smoothing <= 0:
        raise ValueError(f"public_unigram: smoothing must be > 0, got {smoothing}.")
    vocab = len(tokenizer)
    texts = list(public_texts)
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    ids = torch.tensor([t for row in encoded for t in row if t < vocab], dtype=torch.long)
    counts = torch.bincount(ids, minlength=vocab).to(torch.float64) + smoothing
    return counts.log() - counts.sum().log()
