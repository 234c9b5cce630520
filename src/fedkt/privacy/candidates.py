"""Fixed candidate vocabularies for token-level text DP, built from public model weights only.

A candidate set V is chosen from the tokenizer's vocabulary before any private text is seen (the
FedCoT reference code picked candidates around a noisy embedding of the input, which makes V
depend on the input and breaks the EM guarantee). Sets built by `build_kit`:

- ``words``        space-prefixed alphabetic tokens (" cat"), >= min_letters letters;
- ``word_pieces``  the same without the leading space ("cat" continuing a word or opening a line);
- ``numbers``      space-prefixed all-digit tokens (" 12"), when the tokenizer has any;
- ``number_pieces`` bare all-digit tokens ("7"; SmolLM2 splits numbers into single digits).

A token is replaced only by a token of its own set, so word boundaries and digit runs survive.
The price is that the set each position belongs to (like its length class) is revealed, and so
are the tokens outside every set (punctuation, whitespace, words shorter than min_letters,
special tokens): those pass through unchanged and are counted in each PrivacyRecord. Numbers are
perturbed (the reference code passed them through); their utility is the cosine of the digit
embeddings as well, so Δu = 2 holds for every set. Sets with fewer than 2 tokens are dropped
(a one-token set cannot hide anything), so their tokens count as passed through.

That released pattern (punctuation, newlines, byte pieces, word and piece boundaries, digit
counts) identifies most questions on its own (`fedkt.privacy.audit.pattern_uniqueness`), at
every eps. ``partition="vocabulary"`` is the mode that does not release it, and the simplest
sound one: ONE set holding every ordinary token (all but special/added tokens and rows with
an all-zero embedding). Each token, punctuation and whitespace included, is replaced by EM over
the whole set with the same clamped cosine utility, so Δu = 2 and each token is eps-DP against
replacing it by ANY ordinary token; the only thing a position shows is that it exists, so a
field's token count is all that is released in clear, and `TextPerturber`'s ``pad_to`` rounds
it up with perturbed filler tokens (per-field token counts alone single out ~78 % of ARC-Easy's
questions; padded to a multiple of 8, ~2 %). (Word-level perturbation with a fixed
output length per word class would hide the pieces but still release the word count and the
class sequence, and needs a second tokenisation.) The price is utility: at a given eps, EM over
~49k tokens keeps fewer tokens than over a class, and the output may hold any symbol.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch
from transformers import PreTrainedTokenizerBase

from fedkt.errors import ConfigError

_SPACE_MARKERS = ("Ġ", "▁")  # byte-level BPE and SentencePiece word-start markers

T = TypeVar("T")

Partition = Literal["classes", "vocabulary"]
PARTITIONS: tuple[Partition, ...] = ("classes", "vocabulary")

RELEASED_IN_CLEAR: dict[str, str] = {
    "classes": (
        "tokens outside every candidate set (punctuation, symbols, whitespace and newlines, "
        "byte pieces, words shorter than min_letters, special tokens) exactly, and for each "
        "perturbed token its class (word / word piece / number / number piece): word and piece "
        "boundaries, digit counts, the token count"
    ),
    "vocabulary": (
        "the token count of each private field, rounded up to the perturber's pad_to (and "
        "special tokens or tokens with an all-zero embedding, if a field holds any)"
    ),
}
"""What each `build_kit` partition sends in clear beside the perturbed tokens (for reports)."""


@dataclass(frozen=True, eq=False)
class CandidateSet:
    """One fixed candidate vocabulary: token ids and their L2-normalised embeddings.

    Only the (k, d) unit embeddings are stored; a (k, k) similarity matrix of a 20k-token set
    would take gigabytes, so similarities are computed row block by row block on demand.
    """

    name: str
    token_ids: torch.Tensor  # (k,) long
    unit_embeddings: torch.Tensor  # (k, d) float32, rows of norm 1

    def __post_init__(self) -> None:
        k = self.token_ids.shape[0]
        if self.token_ids.dim() != 1 or k == 0:
            raise ConfigError(f"candidate set {self.name!r}: token_ids must be (k,) with k >= 1.")
        if self.unit_embeddings.dim() != 2 or self.unit_embeddings.shape[0] != k:
            raise ConfigError(
                f"candidate set {self.name!r}: unit_embeddings must be ({k}, d), got "
                f"{tuple(self.unit_embeddings.shape)}."
            )

    @property
    def size(self) -> int:
        return int(self.token_ids.shape[0])

    def similarity(self, rows: torch.Tensor) -> torch.Tensor:
        """(n,) row indices -> (n, k) cosine utility, clamped to [-1, 1] so Δu = 2 holds."""
        anchors = self.unit_embeddings[rows.to(self.unit_embeddings.device)]
        return (anchors @ self.unit_embeddings.T).clamp_(-1.0, 1.0)

    def to(self, device: torch.device | str) -> CandidateSet:
        return CandidateSet(self.name, self.token_ids.to(device), self.unit_embeddings.to(device))


@dataclass(frozen=True, eq=False)
class PerturbationKit:
    """What a client holds: disjoint candidate sets built from public model weights."""

    sets: tuple[CandidateSet, ...]
    _lookup_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(
        init=False, default_factory=dict, repr=False, compare=False
    )
    _derived: dict[Any, Any] = field(init=False, default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.sets:
            return
        ids = torch.cat([s.token_ids.cpu() for s in self.sets])
        if torch.unique(ids).numel() != ids.numel():
            raise ConfigError("PerturbationKit: candidate sets overlap; a token needs one set.")

    @property
    def max_token_id(self) -> int:
        return max((int(s.token_ids.max()) for s in self.sets), default=-1)

    def set_named(self, name: str) -> CandidateSet:
        for candidate_set in self.sets:
            if candidate_set.name == name:
                return candidate_set
        names = [s.name for s in self.sets]
        raise ConfigError(f"no candidate set named {name!r}; the kit has {names}.")

    def lookup(self, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(set_of, row_of), two (vocab_size,) long tensors on the kit's device.

        set_of[t] is the index in `sets` of token t's set (-1: passed through), row_of[t] its
        row in that set. Cached per size (the kit is immutable).
        """
        size = max(vocab_size, self.max_token_id + 1)
        if size not in self._lookup_cache:
            device = self.sets[0].token_ids.device if self.sets else torch.device("cpu")
            set_of = torch.full((size,), -1, dtype=torch.long, device=device)
            row_of = torch.full((size,), -1, dtype=torch.long, device=device)
            for index, candidate_set in enumerate(self.sets):
                set_of[candidate_set.token_ids] = index
                row_of[candidate_set.token_ids] = torch.arange(candidate_set.size, device=device)
            self._lookup_cache[size] = (set_of, row_of)
        return self._lookup_cache[size]

    def cached(self, key: Any, build: Callable[[], T]) -> T:
        """``build()``, computed once per kit and ``key``: for public structures derived from
        the kit alone (e.g. custext's clusters), which the kit's immutability keeps valid."""
        if key not in self._derived:
            self._derived[key] = build()
        value: T = self._derived[key]
        return value

    def to(self, device: torch.device | str) -> PerturbationKit:
        return PerturbationKit(tuple(s.to(device) for s in self.sets))

    @property
    def partition(self) -> Partition:
        """Which `build_kit` partition this kit looks like: one set named "vocabulary", or
        the class sets."""
        return "vocabulary" if [s.name for s in self.sets] == ["vocabulary"] else "classes"

    def describe(self) -> dict[str, int]:
        """{set name: size}, for logs and run reports."""
        return {s.name: s.size for s in self.sets}


def build_kit(
    tokenizer: PreTrainedTokenizerBase,
    embedding_matrix: torch.Tensor,
    *,
    min_letters: int = 3,
    max_words: int | None = None,
    partition: Partition = "classes",
) -> PerturbationKit:
    """Candidate sets from a tokenizer and its model's (public) input embedding matrix.

    ``partition="classes"``: the four sets of the module docstring. Classification reads each
    token's decoded text once (string work, done one time per kit); the decision depends on
    the vocabulary alone, never on private text. `max_words` caps each word set at its lowest
    token ids: BPE merge order roughly follows public corpus frequency, so this keeps common
    words and stays data-independent. ``partition="vocabulary"``: one set of every ordinary
    token (`min_letters` and `max_words` do not apply). Tokens with an all-zero embedding
    (unused rows) are left out, since cosine is undefined for them.
    """
    if min_letters < 1:
        raise ConfigError(f"min_letters must be >= 1, got {min_letters}.")
    if max_words is not None and max_words < 2:
        raise ConfigError(f"max_words must be None or >= 2, got {max_words}.")
    if partition not in PARTITIONS:
        raise ConfigError(f"partition must be one of {list(PARTITIONS)}, got {partition!r}.")
    if partition == "vocabulary" and max_words is not None:
        raise ConfigError("max_words caps the word sets of partition 'classes' only.")
    if embedding_matrix.dim() != 2:
        raise ConfigError(
            f"embedding_matrix must be (vocab, d), got shape {tuple(embedding_matrix.shape)}."
        )
    vocab = min(len(tokenizer), embedding_matrix.shape[0])
    weights = embedding_matrix[:vocab].detach().float().cpu()
    norms = weights.norm(dim=-1)
    if partition == "vocabulary":
        excluded = _excluded(tokenizer)
        ids = torch.tensor([i for i in range(vocab) if i not in excluded], dtype=torch.long)
        ids = ids[norms[ids] > 0] if ids.numel() else ids
        if ids.numel() < 2:
            return PerturbationKit(())
        return PerturbationKit((CandidateSet("vocabulary", ids, weights[ids] / norms[ids, None]),))
    classes = _classify_vocabulary(tokenizer, vocab, min_letters)
    sets: list[CandidateSet] = []
    for name in ("words", "word_pieces", "numbers", "number_pieces"):
        ids = torch.tensor([i for i, c in enumerate(classes) if c == name], dtype=torch.long)
        ids = ids[norms[ids] > 0] if ids.numel() else ids
        if max_words is not None and name.startswith("word"):
            ids = ids[:max_words]  # ids ascend: lowest ids = earliest merges
        if ids.numel() >= 2:
            sets.append(CandidateSet(name, ids, weights[ids] / norms[ids, None]))
    return PerturbationKit(tuple(sets))


def _classify_vocabulary(
    tokenizer: PreTrainedTokenizerBase, vocab: int, min_letters: int
) -> list[str | None]:
    """Each id's set name (see the module docstring) or None (passed through)."""
    ids = list(range(vocab))
    raw = tokenizer.convert_ids_to_tokens(ids)
    decoded = tokenizer.batch_decode(
        [[i] for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    excluded = _excluded(tokenizer)
    return [
        None if i in excluded else _token_class(str(r), d, min_letters)
        for i, r, d in zip(ids, raw, decoded, strict=True)
    ]


def _excluded(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Special and added tokens: never candidates (they pass through, counted)."""
    return set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))


def _token_class(raw: str, decoded: str, min_letters: int) -> str | None:
    spaced = decoded.startswith(" ") or raw.startswith(_SPACE_MARKERS)
    body = decoded[1:] if decoded.startswith(" ") else decoded
    if body.isascii() and body.isdigit():
        return "numbers" if spaced else "number_pieces"
    if body.isalpha() and len(body) >= min_letters:
        return "words" if spaced else "word_pieces"
    return None
