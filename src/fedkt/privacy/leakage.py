"""FDKT's leakage audit: canary exposure, canaries in what a client sent, and DCR.

The spec (``shared/specs/fdkt.md``, "Leakage audit") asks what (eps, delta) alone does not
show: did the DP generator memorise individual private rows, and did any reach the server?

- Canaries (Carlini et al., "The Secret Sharer", arXiv 1802.08232): `make_canaries` writes
  private-looking sentences, each with a secret drawn uniformly from a known space of R values
  ("The account number of <name> is <6 digits>": R = 10^6). The experiment inserts their
  training texts (`Canary.training_text`) into one client's private rows
  (`fedkt.training.dp_synthesis.dp_synthesize`'s ``extra_texts``), so the accountant counts them.
- `canary_exposure`: how much more likely the trained generator finds a canary's true secret
  than other secrets from the same space. Only a model that saw the canary can tell its secret
  apart; the rank among same-template references measures exactly that and nothing else.
- `canaries_in`: whether a canary's secret, or most of its wording, appears in the texts the
  client sent (the DP synthetic samples): memorisation that actually left the client.
- `distance_to_closest_record` (DCR): are synthetic samples closer, in embedding space, to
  the rows the generator trained on than to held-out rows of the same distribution? If the
  generator copies or paraphrases its training rows, yes.

Everything here is a pure function of its inputs plus an explicit seed; results carry
``as_dict()`` for results.json (strict JSON: finite floats, or None where undefined).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedkt.data.synthetic import format_sample, label_prefix
from fedkt.errors import ConfigError, DataError, ModelError
from fedkt.generation.transformers_backend import eval_mode

DEFAULT_TEMPLATE = "The account number of {name} is {secret}."
"""A canary sentence: ``{name}`` is fixed per canary, ``{secret}`` is the random part."""

DEFAULT_DIGITS = 6
"""Secret digits: a randomness space of R = 10^6 secrets."""

# Names chosen to be uncommon together, so no pretrained model has a prior on the pairing.
_FIRST_NAMES = (
    "Aurelia", "Bastian", "Cosima", "Dorian", "Elodie", "Fabian", "Greta", "Hector",
    "Isolde", "Jasper", "Katrin", "Leopold", "Mireille", "Nikolai", "Odile", "Percival",
    "Quilla", "Rosalind", "Severin", "Thea", "Ulrich", "Valeska", "Wendelin", "Xenia",
)  # fmt: skip
_LAST_NAMES = (
    "Ashgrove", "Brightwater", "Castellane", "Dunmore", "Eversley", "Fairweather",
    "Galloway", "Hollingsworth", "Ingleby", "Jessamine", "Kettleborough", "Larkspur",
    "Merriweather", "Northcote", "Oakenshaw", "Pendlebury", "Quenby", "Ravensworth",
    "Silverthorne", "Thistlewood", "Underhill", "Vandermeer", "Whitlock", "Yarborough",
)  # fmt: skip

_WORD = re.compile(r"\w+")


# ---- canaries ----


@dataclass(frozen=True)
class Canary:
    """One canary: `text` is `template` with `name` and `secret` filled in.

    `secret` is a zero-padded string of `digits` digits, uniform over R = 10^digits values;
    `with_secret` writes the same sentence with another secret (the exposure references).
    """

    label: str
    name: str
    secret: str
    template: str = DEFAULT_TEMPLATE
    digits: int = DEFAULT_DIGITS

    @property
    def text(self) -> str:
        return self.with_secret(self.secret)

    @property
    def space_size(self) -> int:
        """R, the number of secrets this canary's secret was drawn from."""
        return 10**self.digits

    def with_secret(self, secret: str) -> str:
        return self.template.format(name=self.name, secret=secret)

    def training_text(self, label_field: str = "Label") -> str:
        """What the generator trains on (EOS is the trainer's): the FDKT sample format."""
        return format_sample(label_prefix(self.label, label_field), self.text)


def make_canaries(
    n: int,
    labels: Sequence[str],
    *,
    seed: int | None = None,
    template: str = DEFAULT_TEMPLATE,
    digits: int = DEFAULT_DIGITS,
) -> tuple[Canary, ...]:
    """`n` canaries with distinct names and distinct secrets, labels round-robin over `labels`.

    Secrets come from `random.SystemRandom` (os.urandom) when `seed` is None: in a deployment
    the canaries' secrets must be unguessable, or a high rank would prove nothing. A seed makes
    them reproducible (tests, simulations). Names are drawn from a fixed pool of
    24 x 24 first/last names; `template` must hold ``{secret}`` once and may hold ``{name}``.
    """
    _check_template(template)
    if digits < 1:
        raise ConfigError(f"make_canaries: digits={digits} must be >= 1.")
    names = [f"{first} {last}" for first in _FIRST_NAMES for last in _LAST_NAMES]
    limit = min(len(names), 10**digits) if "{name}" in template else 10**digits
    if not 1 <= n <= limit:
        raise ConfigError(
            f"make_canaries: n={n} must be between 1 and {limit} (distinct names and secrets)."
        )
    if not labels:
        raise ConfigError("make_canaries: no labels; pass the task's label names.")
    for label in labels:
        label_prefix(label)  # refuses a label the sample format cannot carry
    rng = _rng(seed)
    chosen = rng.sample(names, n) if "{name}" in template else [""] * n
    secrets = rng.sample(range(10**digits), n)
    return tuple(
        Canary(
            label=labels[i % len(labels)],
            name=chosen[i],
            secret=_secret(secrets[i], digits),
            template=template,
            digits=digits,
        )
        for i in range(n)
    )


def _check_template(template: str) -> None:
    fields = re.findall(r"{(\w*)}", template)
    if fields.count("secret") != 1 or set(fields) - {"secret", "name"} or fields.count("name") > 1:
        raise ConfigError(
            f"canary template {template!r} must hold {{secret}} exactly once, {{name}} at most "
            "once, and no other field."
        )


def _secret(value: int, digits: int) -> str:
    return f"{value:0{digits}d}"


def _rng(seed: int | None) -> random.Random:
    """Seeded `random.Random`, or `random.SystemRandom` (os.urandom) when `seed` is None."""
    return random.SystemRandom() if seed is None else random.Random(seed)


# ---- exposure ----


@dataclass(frozen=True)
class CanaryExposure:
    """One canary's rank among `n_references` same-template secrets, and its exposure (bits).

    `log_likelihood` is the canary's summed log-probability (nats) of everything after its
    label prefix, EOS included; `reference_mean` the references' mean of the same.
    """

    index: int
    label: str
    rank: int
    exposure: float
    log_likelihood: float
    reference_mean: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "label": self.label,
            "rank": self.rank,
            "exposure": _finite(self.exposure),
            "log_likelihood": _finite(self.log_likelihood),
            "reference_mean_log_likelihood": _finite(self.reference_mean),
        }


@dataclass(frozen=True)
class ExposureReport:
    """Exposure of every canary, with what a model that never saw them would score.

    `max_exposure_possible` = log2(n_references + 1) (rank 1: the resolution of the test);
    `expected_unseen` = the mean exposure of a canary the model never saw (rank uniform on
    1..n_references + 1), ~log2(e) = 1.44 bits for many references.
    """

    canaries: tuple[CanaryExposure, ...]
    n_references: int

    @property
    def max_exposure_possible(self) -> float:
        return math.log2(self.n_references + 1)

    @property
    def expected_unseen(self) -> float:
        return expected_unseen_exposure(self.n_references)

    @property
    def mean_exposure(self) -> float:
        return float(np.mean([c.exposure for c in self.canaries]))

    @property
    def max_exposure(self) -> float:
        return max(c.exposure for c in self.canaries)

    @property
    def rank1_fraction(self) -> float:
        """Share of canaries ranked above every reference; 1 / (n_references + 1) if unseen."""
        return sum(c.rank == 1 for c in self.canaries) / len(self.canaries)

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_canaries": len(self.canaries),
            "n_references": self.n_references,
            "max_exposure_possible": _finite(self.max_exposure_possible),
            "expected_unseen_exposure": _finite(self.expected_unseen),
            "mean_exposure": _finite(self.mean_exposure),
            "max_exposure": _finite(self.max_exposure),
            "rank1_fraction": _finite(self.rank1_fraction),
            "canaries": [c.as_dict() for c in self.canaries],
        }


def exposure_from_rank(rank: int, n_references: int) -> float:
    """Rank-based exposure estimate, log2(n_references + 1) - log2(rank), in bits.

    With every other secret of the space as a reference (n_references = R - 1) this is
    Carlini et al.'s exposure exactly; with fewer it is capped at log2(n_references + 1).
    """
    if not 1 <= rank <= n_references + 1:
        raise ValueError(f"rank={rank} must be in 1..{n_references + 1}")
    return math.log2(n_references + 1) - math.log2(rank)


def expected_unseen_exposure(n_references: int) -> float:
    """Mean exposure when the rank is uniform on 1..n+1 (a canary the model never saw):
    log2(n + 1) - log2((n + 1)!) / (n + 1), which tends to log2(e) ~ 1.44 bits."""
    m = n_references + 1
    return math.log2(m) - math.lgamma(m + 1) / math.log(2) / m


def canary_exposure(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    canaries: Sequence[Canary],
    *,
    label_field: str = "Label",
    n_references: int = 999,
    seed: int | None = None,
    batch_size: int = 32,
) -> ExposureReport:
    """Rank each canary's secret among `n_references` other secrets under the generator.

    For every canary the generator scores its training text (`Canary.training_text` with
    `label_field`) and `n_references` copies that differ only in the secret, drawn uniformly
    without replacement from the rest of the same space; the score is the summed log-prob of
    the tokens after the label prefix, EOS included, as the generator was trained (the prefix
    is the same for all, so it is context only). rank = 1 + the references scoring strictly
    higher; exposure = log2(n_references + 1) - log2(rank) bits (`exposure_from_rank`).

    Reading it: a model that never saw a canary ranks it uniformly, so its exposure averages
    `expected_unseen_exposure` (~1.44 bits), reaches k bits with probability ~2^-k, and rank
    1 happens with probability 1 / (n_references + 1): around 0-2 bits means no sign of
    memorisation. Exposure near `max_exposure_possible` (rank 1) on most canaries means the
    generator memorised them; DP-SGD at a small eps should keep exposure at the unseen level.
    More references give a higher ceiling (999: ~10 bits) at one scored sequence each.

    `seed` draws the references (None: `random.SystemRandom`). The model runs in eval mode
    under `torch.no_grad`, `batch_size` sequences per forward pass; its mode is restored.
    """
    if not canaries:
        raise DataError("canary_exposure: no canaries to score.")
    if batch_size < 1:
        raise ConfigError(f"canary_exposure: batch_size={batch_size} must be >= 1.")
    space = min(c.space_size for c in canaries)
    if not 1 <= n_references < space:
        raise ConfigError(
            f"canary_exposure: n_references={n_references} must be between 1 and R - 1 = "
            f"{space - 1} (the other secrets of the canaries' space)."
        )
    rng = _rng(seed)
    rows: list[tuple[str, str]] = []  # (label prefix, training text)
    for canary in canaries:
        prefix = label_prefix(canary.label, label_field)
        texts = [
            canary.text,
            *(canary.with_secret(s) for s in _references(canary, n_references, rng)),
        ]
        rows += [(prefix, format_sample(prefix, text)) for text in texts]
    scores = continuation_log_likelihoods(model, tokenizer, rows, batch_size=batch_size)
    width = n_references + 1
    results = []
    for index, canary in enumerate(canaries):
        own, *refs = scores[index * width : (index + 1) * width]
        rank = 1 + sum(r > own for r in refs)
        results.append(
            CanaryExposure(
                index=index,
                label=canary.label,
                rank=rank,
                exposure=exposure_from_rank(rank, n_references),
                log_likelihood=own,
                reference_mean=float(np.mean(refs)),
            )
        )
    return ExposureReport(tuple(results), n_references)


def _references(canary: Canary, k: int, rng: random.Random) -> list[str]:
    """`k` distinct secrets of the canary's space, its own excluded."""
    drawn = [_secret(v, canary.digits) for v in rng.sample(range(canary.space_size), k + 1)]
    others = [s for s in drawn if s != canary.secret]
    return others[:k]


def continuation_log_likelihoods(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[tuple[str, str]],
    *,
    batch_size: int = 32,
) -> list[float]:
    """Summed log-prob (nats) of each ``(prefix, text)`` row's tokens after `prefix`, + EOS.

    `text` starts with `prefix` and is tokenised whole, as `train_generator_dp` tokenises it,
    then EOS is appended; the tokens it shares with ``tokenizer(prefix)`` are context only (a
    token straddling the boundary is scored). Rows are right-padded in batches.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ModelError(
            f"tokenizer {tokenizer.name_or_path!r} has no EOS token; the generator was trained "
            "with one, so the canaries cannot be scored as trained."
        )
    encoded = [_encode_row(tokenizer, prefix, text, eos) for prefix, text in rows]
    device = next(model.parameters()).device
    out: list[float] = []
    with eval_mode(model), torch.no_grad():
        for batch in _batches(encoded, batch_size):
            out += _score_batch(model, batch, device)
    return out


def _encode_row(
    tokenizer: PreTrainedTokenizerBase, prefix: str, text: str, eos: int
) -> tuple[list[int], int]:
    """(token ids + EOS, index of the first scored token)."""
    if not text.startswith(prefix):
        raise DataError(f"scored text {text[:60]!r} does not start with its prefix {prefix!r}.")
    ids = [*tokenizer(text)["input_ids"], eos]
    context = list(tokenizer(prefix)["input_ids"])
    shared = 0
    while shared < min(len(context), len(ids) - 1) and ids[shared] == context[shared]:
        shared += 1
    return ids, max(shared, 1)  # the first token has no left context to be scored from


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _score_batch(
    model: nn.Module, batch: list[tuple[list[int], int]], device: torch.device
) -> list[float]:
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.zeros((len(batch), width), dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    scored = torch.zeros((len(batch), width), dtype=torch.bool)
    for i, (ids, start) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        scored[i, start : len(ids)] = True
    logits = model(
        input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=False
    ).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = input_ids[:, 1:].to(device)
    token = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    token = torch.where(scored[:, 1:].to(device), token, torch.zeros_like(token))
    return [float(v) for v in token.sum(dim=1).double().cpu()]


# ---- canaries in what a client sent ----


@dataclass(frozen=True)
class CanaryMatch:
    """Where one canary turned up: indices of the sent texts that hold its secret verbatim
    (`secret_in`) or at least the threshold share of its word n-grams (`text_in`)."""

    index: int
    label: str
    secret_in: tuple[int, ...]
    text_in: tuple[int, ...]
    max_overlap: float

    @property
    def found(self) -> bool:
        return bool(self.secret_in or self.text_in)

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "label": self.label,
            "secret_in": list(self.secret_in),
            "text_in": list(self.text_in),
            "max_overlap": _finite(self.max_overlap),
        }


@dataclass(frozen=True)
class CanaryHits:
    """Which canaries appear in the `n_texts` sent texts, by secret and by wording."""

    matches: tuple[CanaryMatch, ...]
    n_texts: int
    ngram: int
    threshold: float

    @property
    def n_secret(self) -> int:
        """Canaries whose secret digits appear in some sent text."""
        return sum(bool(m.secret_in) for m in self.matches)

    @property
    def n_text(self) -> int:
        """Canaries whose wording appears (near-)verbatim in some sent text."""
        return sum(bool(m.text_in) for m in self.matches)

    @property
    def found(self) -> tuple[int, ...]:
        """Indices of the canaries found either way."""
        return tuple(m.index for m in self.matches if m.found)

    @property
    def n_texts_flagged(self) -> int:
        return len({t for m in self.matches for t in (*m.secret_in, *m.text_in)})

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_canaries": len(self.matches),
            "n_texts": self.n_texts,
            "ngram": self.ngram,
            "threshold": self.threshold,
            "n_found": len(self.found),
            "n_secret_found": self.n_secret,
            "n_text_found": self.n_text,
            "n_texts_flagged": self.n_texts_flagged,
            "found": list(self.found),
            "canaries": [m.as_dict() for m in self.matches],
        }


def canaries_in(
    sent_texts: Sequence[str],
    canaries: Sequence[Canary],
    *,
    ngram: int = 3,
    threshold: float = 0.5,
) -> CanaryHits:
    """Which canaries appear in `sent_texts` (what a client sent), verbatim or nearly.

    Two tests per (canary, text):

    - secret: the secret's digits in order, bounded by non-digits, with at most one space or
      hyphen between digits ("281934", "2 8 1 9 3 4", "281-934"). A 6-digit secret turns up
      by chance in a given text with probability ~1e-6 per 6-digit number it holds; a hit
      without `text_in` may be such a chance match.
    - wording: the share of the canary's word `ngram`-grams (lower-cased ``\\w+`` words) that
      occur in the text is >= `threshold`. Containment, not Jaccard: a sent sample may embed
      the canary inside a longer text. The template alone (no name, no secret) stays below
      0.5 for the default template and n = 3 (2 of 6 trigrams).
    """
    if ngram < 1 or not 0 < threshold <= 1:
        raise ConfigError(
            f"canaries_in: need ngram >= 1 and 0 < threshold <= 1, got {ngram}, {threshold}."
        )
    if isinstance(sent_texts, str):
        raise DataError("canaries_in takes a sequence of sent texts, not one string.")
    words = [_words(t) for t in sent_texts]
    matches = []
    for index, canary in enumerate(canaries):
        pattern = _secret_pattern(canary.secret)
        secret_in = tuple(i for i, t in enumerate(sent_texts) if pattern.search(t))
        own = _words(canary.text)
        n = max(1, min(ngram, len(own)))
        grams = _ngrams(own, n)
        overlaps = [len(grams & _ngrams(w, n)) / len(grams) if grams else 0.0 for w in words]
        text_in = tuple(i for i, o in enumerate(overlaps) if o >= threshold)
        matches.append(
            CanaryMatch(index, canary.label, secret_in, text_in, max(overlaps, default=0.0))
        )
    return CanaryHits(tuple(matches), len(sent_texts), ngram, threshold)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _secret_pattern(secret: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\d)" + r"[ \-]?".join(re.escape(d) for d in secret) + r"(?!\d)")


# ---- distance to closest record ----


@dataclass(frozen=True)
class DCRReport:
    """Distance to closest record: synthetic -> train against synthetic -> held-out.

    Distances are cosine distances (1 - cosine similarity, in [0, 2]). `closer_to_train` is
    the share of synthetic samples strictly closer to a train row than to any held-out row;
    `p_value` the one-sided exact sign test of "share > 1/2" over the samples that are not
    tied (ties, e.g. a row present in both sets, count for neither side).
    """

    n_synthetic: int
    n_train: int
    n_holdout: int
    n_compared: int  # rows of each reference set actually used (the smaller size)
    median_train: float
    median_holdout: float
    mean_train: float
    mean_holdout: float
    closer_to_train: float
    closer_to_train_stderr: float
    n_ties: int
    p_value: float

    def as_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: _finite(v) if isinstance(v, float) else v for k, v in values.items()}


def distance_to_closest_record(
    synthetic_vectors: NDArray[Any],
    train_vectors: NDArray[Any],
    holdout_vectors: NDArray[Any],
    *,
    seed: int = 0,
    chunk_rows: int = 1024,
) -> DCRReport:
    """Compare each synthetic sample's closest train row with its closest held-out row.

    Inputs are embedding matrices (n, dim) (`fedkt.models.embeddings.embed`, L2-normalised;
    rows are normalised again here, as cosine distance ignores length). The train rows are
    those the generator trained on; the held-out rows come from the same distribution but
    were never seen. A generator that learned the distribution and not the rows leaves each
    synthetic sample as likely to be closest to either set: share ~0.5, p not small. Copies
    or close paraphrases of training rows push the share towards 1 and p towards 0.

    The two sets must be the same size: the closest of more rows is closer (the minimum
    distance shrinks with the set size), which would favour the larger set with no
    memorisation at all. The larger one is subsampled (without replacement, `seed`) to the
    smaller one's size; `n_compared` says how many rows each side kept. Pairwise similarities
    are computed `chunk_rows` synthetic rows at a time, bounding memory.
    """
    synthetic = _unit_rows(synthetic_vectors, "synthetic_vectors")
    train = _unit_rows(train_vectors, "train_vectors")
    holdout = _unit_rows(holdout_vectors, "holdout_vectors")
    dims = {synthetic.shape[1], train.shape[1], holdout.shape[1]}
    if len(dims) != 1:
        raise DataError(
            f"distance_to_closest_record: embedding widths differ (synthetic "
            f"{synthetic.shape[1]}, train {train.shape[1]}, holdout {holdout.shape[1]}); embed "
            "all three with the same embedder."
        )
    if chunk_rows < 1:
        raise ConfigError(f"distance_to_closest_record: chunk_rows={chunk_rows} must be >= 1.")
    rng = np.random.default_rng(seed)
    size = min(len(train), len(holdout))
    train_used = _subsample(train, size, rng)
    holdout_used = _subsample(holdout, size, rng)
    to_train = _closest_distances(synthetic, train_used, chunk_rows)
    to_holdout = _closest_distances(synthetic, holdout_used, chunk_rows)
    wins = int(np.sum(to_train < to_holdout))
    losses = int(np.sum(to_train > to_holdout))
    share = wins / len(synthetic)
    return DCRReport(
        n_synthetic=len(synthetic),
        n_train=len(train),
        n_holdout=len(holdout),
        n_compared=size,
        median_train=float(np.median(to_train)),
        median_holdout=float(np.median(to_holdout)),
        mean_train=float(np.mean(to_train)),
        mean_holdout=float(np.mean(to_holdout)),
        closer_to_train=share,
        closer_to_train_stderr=math.sqrt(share * (1 - share) / len(synthetic)),
        n_ties=len(synthetic) - wins - losses,
        p_value=binomial_tail(wins, wins + losses),
    )


def binomial_tail(successes: int, trials: int) -> float:
    """P(X >= successes) for X ~ Binomial(trials, 1/2): the one-sided exact sign test.

    Exact integer arithmetic, one rounding at the end (underflows to 0.0 below ~1e-308);
    no trials gives 1.0.
    """
    if not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes}, {trials}")
    term = math.comb(trials, successes)
    tail = 0
    for k in range(successes, trials + 1):
        tail += term
        term = term * (trials - k) // (k + 1)
    return tail / 2**trials


def _unit_rows(vectors: NDArray[Any], name: str) -> NDArray[np.float64]:
    array = np.asarray(vectors, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(
            f"distance_to_closest_record: {name} must be a non-empty (n, dim) matrix, got "
            f"shape {array.shape}."
        )
    if not np.all(np.isfinite(array)):
        raise DataError(f"distance_to_closest_record: {name} holds NaN or infinite values.")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise DataError(
            f"distance_to_closest_record: {name} has {int(np.sum(norms == 0))} zero rows, "
            "which have no direction; drop them (an empty text embeds to nothing useful)."
        )
    return array / norms


def _subsample(rows: NDArray[np.float64], size: int, rng: np.random.Generator) -> NDArray[Any]:
    if len(rows) == size:
        return rows
    return rows[np.sort(rng.choice(len(rows), size=size, replace=False))]


def _closest_distances(
    queries: NDArray[np.float64], records: NDArray[np.float64], chunk_rows: int
) -> NDArray[np.float64]:
    """Cosine distance from each query row to its closest record row."""
    best = np.empty(len(queries))
    for start in range(0, len(queries), chunk_rows):
        similarity = queries[start : start + chunk_rows] @ records.T
        best[start : start + chunk_rows] = similarity.max(axis=1)
    return np.clip(1.0 - best, 0.0, 2.0)


def _finite(value: float) -> float | None:
    """`value` as a JSON-safe float: None when NaN or infinite."""
    return float(value) if math.isfinite(value) else None
