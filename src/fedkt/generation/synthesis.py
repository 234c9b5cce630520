"""Sampling a DP generator's synthetic texts per label, or whole items (FDKT, arXiv 2405.14212,
step 3).

Each label's bare prefix (``"Topic: World | Text:"``) is continued by sampling (temperature 1,
top-p 0.9); generation stops at EOS, which the DP trainer taught the generator. Texts are
cleaned and filtered (`fedkt.data.synthetic.clean_synthetic`: prefix echoes stripped, cut at
a next sample, too short / too long / empty dropped, exact duplicates within a label dropped),
and sampling goes on in rounds until every label has its quota or has used its draws
(`max_draws_factor` times the quota). The counts are reported per label.

A multiple-choice task's generator writes whole items instead (`synthesize_items`): the same
rounds, settings and draw cap, from the bare `ITEM_PREFIX`, each text read by
`fedkt.data.synthetic.clean_item` (malformed items dropped) and exact repeats dropped.

Sampling a DP model is post-processing, so the texts carry the model's (eps, delta); the
sampling seeds need not be secret for that. Still, as every noise source in fedkt: a
simulation passes a seed (reproducible), a deployment passes None and the round seeds come
from `secrets`.
"""

from __future__ import annotations

import math
import secrets
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from fedkt.data.synthetic import (
    DROP_REASONS,
    ITEM_DROP_REASONS,
    ITEM_PREFIX,
    McItem,
    SyntheticFilter,
    clean_item,
    clean_synthetic,
)
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
    """Per label (or for all items): texts drawn, kept, and dropped by reason
    (`DROP_REASONS` or `ITEM_DROP_REASONS`, + "duplicate" and "over_quota")."""

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


@dataclass(frozen=True)
class ItemSynthesis:
    """The kept multiple-choice items (in draw order) and their counts."""

    items: list[McItem]
    counts: LabelCounts
    quota: int
    rounds: int
    seeded: bool

    @property
    def short(self) -> bool:
        """True when the draws ran out before the quota was met."""
        return self.counts.kept < self.quota


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
    kept, counts, rounds = _sample_in_rounds(
        backend,
        label_prefixes,
        per_label,
        settings,
        seed,
        clean=lambda text: clean_synthetic(text, prefixes, rule),
        key=str.casefold,
        reasons=DROP_REASONS,
    )
    samples = [SyntheticSample(label, text) for label, texts in kept.items() for text in texts]
    return Synthesis(samples, counts, per_label, rounds, seeded=seed is not None)


def synthesize_items(
    backend: Backend,
    n_items: int,
    settings: SynthesisSettings,
    *,
    seed: int | None,
    n_choices: int | None = None,
) -> ItemSynthesis:
    """Sample up to `n_items` well-formed multiple-choice items from the bare `ITEM_PREFIX`.

    The rounds, sampling, draw cap (``max_draws_factor * n_items``) and seeds are
    `synthesize`'s, with all items one group. Each text is read by `clean_item` (dropped as
    "empty", "malformed", "choice_count" with ``n_choices``, "too_short" by the question's
    words, "too_long" by the item's); an item equal to a kept one (question, choices and
    answer, ignoring case) is a "duplicate". ``n_choices`` must be a public property of the
    task (e.g. 5 for CommonsenseQA), never read off private rows: the filter would then depend
    on them, and the kept items would no longer be post-processing of the DP generator.
    """
    if n_items < 1:
        raise ConfigError(f"synthesize_items: n_items={n_items} must be >= 1.")
    if n_choices is not None and n_choices < 2:
        raise ConfigError(f"synthesize_items: n_choices={n_choices} must be >= 2 (or None).")
    rule = settings.filter
    kept, counts, rounds = _sample_in_rounds(
        backend,
        {_ITEMS: ITEM_PREFIX},
        n_items,
        settings,
        seed,
        clean=lambda text: clean_item(text, rule, n_choices=n_choices),
        key=_item_key,
        reasons=ITEM_DROP_REASONS,
    )
    return ItemSynthesis(kept[_ITEMS], counts[_ITEMS], n_items, rounds, seeded=seed is not None)


_ITEMS = "item"
"""The one group of `synthesize_items`."""


def _item_key(item: McItem) -> Hashable:
    return (item.question.casefold(), tuple(c.casefold() for c in item.choices), item.answer)


_T = TypeVar("_T")


def _sample_in_rounds(
    backend: Backend,
    prompts: Mapping[str, str],
    quota: int,
    settings: SynthesisSettings,
    seed: int | None,
    *,
    clean: Callable[[str], tuple[_T | None, str]],
    key: Callable[[_T], Hashable],
    reasons: tuple[str, ...],
) -> tuple[dict[str, list[_T]], dict[str, LabelCounts], int]:
    """The quota loop shared by texts and items: (kept per group, counts per group, rounds).

    Each group (a label, or the items) is sampled from its prompt until it keeps ``quota``
    values or has drawn its cap. ``clean`` turns a text into (value, "kept") or (None, one of
    ``reasons``); a value whose ``key`` equals a kept one's is a "duplicate"; texts a group
    draws after meeting its quota in the same round are "over_quota".
    """
    cap = math.ceil(settings.max_draws_factor * quota)
    kept: dict[str, list[_T]] = {group: [] for group in prompts}
    seen: dict[str, set[Hashable]] = {group: set() for group in prompts}
    drawn: Counter[str] = Counter()
    dropped: dict[str, Counter[str]] = {group: Counter() for group in prompts}
    rng = None if seed is None else torch.Generator().manual_seed(seed)
    rounds = 0
    while True:
        asks = {
            group: _ask(quota - len(kept[group]), drawn[group], len(kept[group]), cap, settings)
            for group in prompts
        }
        asks = {group: n for group, n in asks.items() if n > 0}
        if not asks:
            break
        batch = [prompts[group] for group, n in asks.items() for _ in range(n)]
        owners = [group for group, n in asks.items() for _ in range(n)]
        texts = backend.generate(batch, settings.generation(_round_seed(rng)))
        rounds += 1
        for group, text in zip(owners, texts, strict=True):
            drawn[group] += 1
            if len(kept[group]) >= quota:
                dropped[group]["over_quota"] += 1
                continue
            value, reason = clean(text)
            if value is None:
                dropped[group][reason] += 1
            elif (value_key := key(value)) in seen[group]:
                dropped[group]["duplicate"] += 1
            else:
                seen[group].add(value_key)
                kept[group].append(value)
    counts = {
        group: LabelCounts(
            drawn=drawn[group],
            kept=len(kept[group]),
            dropped={r: dropped[group][r] for r in (*reasons, "duplicate", "over_quota")},
        )
        for group in prompts
    }
    return kept, counts, rounds


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
