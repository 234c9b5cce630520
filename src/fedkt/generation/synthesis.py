"""Sampling a DP generator's synthetic texts per label (FDKT, arXiv 2405.14212, step 3).

Each label's bare prefix (``"Topic: World | Text:"``) is continued by sampling (temperature 1,
top-p 0.9); generation stops at EOS, which the DP trainer taught the generator. Texts are
cleaned and filtered (`fedkt.data.synthetic.clean_synthetic`: prefix echoes stripped, cut at
a next sample, too short / too long / empty dropped, exact duplicates within a label dropped),
and sampling goes on in rounds until every label has its quota or has used its draws
(`max_draws_factor` times the quota). The counts are reported per label.

Sampling a DP model is post-processing, so the texts carry the model's (eps, delta); the
sampling seeds need not be secret for that. Still, as every noise source in fedkt: a
simulation passes a seed (reproducible), a deployment passes None and the round seeds come
from `secrets`.
"""

from __future__ import annotations

import math
import secrets
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from fedkt.data.synthetic import DROP_REASONS, SyntheticFilter, clean_synthetic
from fedkt.errors import ConfigError
from fedkt.generation.backends import Backend
from fedkt.generation.settings import GenerationSettings


@dataclass(frozen=True)
class SynthesisSettings:
    """How synthetic texts are sampled and filtered (FDKT: temperature 1, top-p 0.9).

    Args:
        temperature: sampling temperature (> 0: this samples, it never decodes greedily).
        top_p: nucleus mass kept.
        max_new_tokens: tokens per text at most; a text that reaches it never stopped and is
            usually caught by `max_words`.
        batch_size: prompts per forward pass.
        min_words: shorter texts are dropped (the spec's minimum length).
        max_words: longer texts are dropped.
        max_draws_factor: a label stops after ``ceil(factor * per_label)`` draws even if its
            quota is not met (a generator that rarely writes a usable text must not loop).
        stop: extra stop strings (EOS always stops).
    """

    temperature: float = 1.0
    top_p: float = 0.9
    max_new_tokens: int = 128
    batch_size: int = 32
    min_words: int = 5
    max_words: int = 200
    max_draws_factor: float = 3.0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple(self.stop))
        if not self.temperature > 0 or not self.max_draws_factor >= 1:
            raise ConfigError(
                f"SynthesisSettings: temperature={self.temperature!r} must be > 0 and "
                f"max_draws_factor={self.max_draws_factor!r} >= 1."
            )
        # Build both once so a bad value fails here, with the field's own message.
        SyntheticFilter(min_words=self.min_words, max_words=self.max_words)
        self.generation(0)

    @property
    def filter(self) -> SyntheticFilter:
        return SyntheticFilter(min_words=self.min_words, max_words=self.max_words)

    def generation(self, seed: int) -> GenerationSettings:
        return GenerationSettings(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=self.stop,
            batch_size=self.batch_size,
            seed=seed,
        )


@dataclass(frozen=True)
class SyntheticSample:
    """One kept synthetic text (without its prefix) and the label it was sampled for."""

    label: str
    text: str


@dataclass(frozen=True)
class LabelCounts:
    """Per label: texts drawn, kept, and dropped by reason (`DROP_REASONS` + "duplicate")."""

    drawn: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Synthesis:
    """The kept samples (each label's in draw order, labels in the order given) and counts."""

    samples: list[SyntheticSample]
    counts: dict[str, LabelCounts]
    per_label: int
    rounds: int
    seeded: bool

    @property
    def short_labels(self) -> list[str]:
        """Labels that used their draws without reaching the quota."""
        return [label for label, c in self.counts.items() if c.kept < self.per_label]


def synthesize(
    backend: Backend,
    label_prefixes: Mapping[str, str],
    per_label: int,
    settings: SynthesisSettings,
    *,
    seed: int | None,
) -> Synthesis:
    """Sample up to `per_label` cleaned texts for each label from its bare prefix.

    `backend` wraps the trained generator (`TransformersBackend(model, tokenizer)`, or vLLM).
    Every round asks each short label for as many texts as it still needs, scaled up by the
    label's rejection rate so far (at least `settings.batch_size`, at most its remaining
    draws), in one `generate` call; round r samples with a seed drawn from `seed` (a
    simulation) or from `secrets` (``seed=None``).
    """
    if per_label < 1:
        raise ConfigError(f"synthesize: per_label={per_label} must be >= 1.")
    if not label_prefixes:
        raise ConfigError("synthesize: no labels; pass {label: prefix} for every label.")
    rule = settings.filter
    prefixes = list(label_prefixes.values())
    cap = math.ceil(settings.max_draws_factor * per_label)
    kept: dict[str, list[str]] = {label: [] for label in label_prefixes}
    seen: dict[str, set[str]] = {label: set() for label in label_prefixes}
    drawn: Counter[str] = Counter()
    dropped: dict[str, Counter[str]] = {label: Counter() for label in label_prefixes}
    rng = None if seed is None else torch.Generator().manual_seed(seed)
    rounds = 0
    while True:
        asks = {
            label: _ask(per_label - len(kept[label]), drawn[label], len(kept[label]), cap, settings)
            for label in label_prefixes
        }
        asks = {label: n for label, n in asks.items() if n > 0}
        if not asks:
            break
        prompts = [label_prefixes[label] for label, n in asks.items() for _ in range(n)]
        owners = [label for label, n in asks.items() for _ in range(n)]
        texts = backend.generate(prompts, settings.generation(_round_seed(rng)))
        rounds += 1
        for label, text in zip(owners, texts, strict=True):
            drawn[label] += 1
            if len(kept[label]) >= per_label:
                dropped[label]["over_quota"] += 1
                continue
            body, reason = clean_synthetic(text, prefixes, rule)
            if body is None:
                dropped[label][reason] += 1
            elif (key := body.casefold()) in seen[label]:
                dropped[label]["duplicate"] += 1
            else:
                seen[label].add(key)
                kept[label].append(body)
    counts = {
        label: LabelCounts(
            drawn=drawn[label],
            kept=len(kept[label]),
            dropped={r: dropped[label][r] for r in (*DROP_REASONS, "duplicate", "over_quota")},
        )
        for label in label_prefixes
    }
    samples = [SyntheticSample(label, text) for label, texts in kept.items() for text in texts]
    return Synthesis(samples, counts, per_label, rounds, seeded=seed is not None)


def _ask(need: int, drawn: int, kept: int, cap: int, settings: SynthesisSettings) -> int:
    """How many texts a label asks for this round: its need over its acceptance so far."""
    if need <= 0 or drawn >= cap:
        return 0
    acceptance = kept / drawn if drawn else 1.0
    want = math.ceil(need / max(acceptance, 0.1))
    return min(max(want, settings.batch_size), cap - drawn)


def _round_seed(rng: torch.Generator | None) -> int:
    if rng is None:
        return secrets.randbits(63)
    return int(torch.randint(0, 2**62, (1,), generator=rng))
