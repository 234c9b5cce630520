"""FDKT: federated domain-specific knowledge transfer through DP synthetic data, no transport.

Li, Zhao, Guo, Gu, Zeng, Han, Song, Fan, Yang, "Federated Domain-Specific Knowledge Transfer on
Large Language Models Using Synthetic Data", arXiv 2405.14212 (2024); spec ``specs/fdkt.md``.

State. Client k holds private labelled texts D_k, a generator LM (by default its SLM's base
with a fresh LoRA adapter) and its task SLM. The server holds an LLM and a sentence embedder.
No weights travel; the server never sees a private row, only DP synthetic samples.

One round trip:
  1. format       s_i = "{field}: {y_i} | Text:" + " " + x_i (+ EOS, added by the trainer)
  2. DP-train     G_k = DP-SGD(G, {s_i}) at (eps, delta), delta < 1/|D_k|, Poisson sampling
  3. synthesize   per label y: N_label texts ~ G_k("{field}: {y} | Text:"), cleaned    (-> server)
  4. curate       embed, drop near-duplicates / off-domain / label mismatches, k-means
  5. augment      prompts = instruction + k demonstrations per label (across clusters);
                  LLM answers parsed by marker (not by position), deduped vs the pool  (<- client)
  6. train        the SLM (LoRA) on D_k + the augmented samples, as the task's own examples
Everything sent (3) is post-processing of the DP generator, so it carries its (eps, delta).
Every label of the task is synthesised, not only the labels D_k holds: which labels a client
has is private too, and the DP guarantee covers only what the generator outputs.

Scope: classification-like tasks (one fixed label set, every row's choices = the label names,
``Example.question`` the raw text, e.g. AG News). Multiple-choice tasks, whose items would be
synthesised whole (`fedkt.data.synthetic.McItem`), are refused with a clear error.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedkt.data import Example
from fedkt.data.augmentation import LabelledText, augment, build_prompts
from fedkt.data.curation import CurationReport, CurationSettings, curate, pools_by_label
from fedkt.data.synthetic import format_sample, label_prefix
from fedkt.errors import ConfigError, DataError
from fedkt.generation import (
    Backend,
    GenerationSettings,
    Request,
    ResponseStore,
    TransformersBackend,
)
from fedkt.generation.synthesis import Synthesis, SynthesisSettings, synthesize
from fedkt.models.embeddings import embed
from fedkt.privacy.accounting import check_target
from fedkt.training import TrainReport, TrainSettings, train_answer_only
from fedkt.training.dp_generator import DPReport, DPSettings, train_generator_dp

_SLOT = "\x00TEXT\x00"
"""Stands for the text in a task's context template (no task text holds a NUL)."""


@dataclass(frozen=True)
class FDKTSettings:
    """FDKT hyperparameters (defaults: the reference code's, scaled to small models).

    Args:
        dp: the generator's DP-SGD (``target_epsilon``, ``delta`` < 1/N, epochs, batch, lr,
            clipping); ``target_epsilon = inf`` trains the same pipeline without noise.
        per_label: synthetic texts each client samples per label (reference: 2000).
        synthesis: sampling (temperature 1, top-p 0.9) and the minimum/maximum length.
        curation: the server's filters (near-duplicate, off-domain, label mismatch) and k-means.
        n_prompts: augmentation prompts the server's LLM answers (reference: 200-20000);
            0 sends the curated DP synthetic samples back instead (the "DP synthetic only"
            baseline, no LLM).
        demos_per_label: k demonstrations per label in each prompt (reference: 1-2).
        new_per_label: new samples per label each prompt asks for.
        augmentation: the LLM's decoding (sampled, so prompts with the same demonstrations
            still differ).
        min_words: augmented texts with fewer words are dropped.
        dedupe_threshold: word 3-gram Jaccard at which an augmented text copies a
            demonstration (`fedkt.data.augmentation.dedupe_against`).
        label_field: the label field of the prefix ("Topic", "Rating", ...).
        domain: words for the LLM's instruction, e.g. "of news articles".
        train: the SLM's LoRA training on private + augmented examples.
        seed: seeds the prompts' demonstrations (the clients offset theirs by partition).
    """

    dp: DPSettings = field(default_factory=DPSettings)
    per_label: int = 20
    synthesis: SynthesisSettings = field(
        default_factory=lambda: SynthesisSettings(max_new_tokens=64)
    )
    curation: CurationSettings = field(default_factory=CurationSettings)
    n_prompts: int = 8
    demos_per_label: int = 2
    new_per_label: int = 5
    augmentation: GenerationSettings = field(
        default_factory=lambda: GenerationSettings(max_new_tokens=256, temperature=0.7, top_p=0.9)
    )
    min_words: int = 3
    dedupe_threshold: float = 0.8
    label_field: str = "Label"
    domain: str = ""
    train: TrainSettings = field(default_factory=TrainSettings)
    seed: int = 0

    def __post_init__(self) -> None:
        problems = [
            f"{name}={getattr(self, name)!r} (need >= {low})"
            for name, low in (
                ("per_label", 1),
                ("n_prompts", 0),
                ("demos_per_label", 1),
                ("new_per_label", 1),
                ("min_words", 1),
            )
            if getattr(self, name) < low
        ]
        if not 0 < self.dedupe_threshold <= 1:
            problems.append(f"dedupe_threshold={self.dedupe_threshold} (need in (0, 1])")
        if problems:
            raise ConfigError(f"FDKTSettings: {'; '.join(problems)}")
        label_prefix("x", self.label_field)  # a field the prefix cannot hold fails here

    @property
    def eps(self) -> float:
        return self.dp.target_epsilon

    @property
    def delta(self) -> float:
        return self.dp.delta

    @property
    def uses_llm(self) -> bool:
        return self.n_prompts > 0

    @property
    def label(self) -> str:
        """How results name this setting, e.g. "fdkt@3" or "dp_synthetic_only@3"."""
        name = "fdkt" if self.uses_llm else "dp_synthetic_only"
        return f"{name}@{self.eps:g}"


# ---- the task's format: classification rows <-> (label, text) -------------------------------


@dataclass(frozen=True)
class LabelFormat:
    """A classification task's label names and context template, read off its examples.

    ``template`` is a row's context with its text replaced by a slot, e.g.
    ``"Article: <slot>\\nTopic:"`` for AG News; `example` rebuilds a row from (label, text).
    """

    labels: tuple[str, ...]
    template: str

    @classmethod
    def of(cls, examples: Sequence[Example]) -> LabelFormat:
        """The format shared by ``examples``; anything but classification is refused."""
        if not examples:
            raise DataError("FDKT: no examples to read the task's labels from")
        labels = examples[0].choices
        templates = set()
        for example in examples:
            if example.is_generative or example.choices != labels or not example.question:
                raise ConfigError(
                    f"FDKT supports classification tasks only (every row's choices the same "
                    f"label names and its raw text in Example.question, e.g. ag_news); row "
                    f"{example.id!r} is not one. Synthesising whole multiple-choice items "
                    "(fedkt.data.synthetic.McItem) is not wired into FDKT yet."
                )
            if example.context.count(example.question) != 1:
                raise DataError(
                    f"FDKT: row {example.id!r}: its text does not appear exactly once in its "
                    "context, so the task's prompt format cannot be read off it"
                )
            templates.add(example.context.replace(example.question, _SLOT))
        if len(templates) != 1:
            raise DataError(f"FDKT: the rows use {len(templates)} prompt formats; need one")
        return cls(tuple(labels), templates.pop())

    def text_and_label(self, example: Example) -> tuple[str, str]:
        return example.question, self.labels[example.gold]

    def example(self, id: str, label: str, text: str) -> Example:
        """The task's row for (label, text): context from the template, gold = the label."""
        return Example(
            id=id,
            context=self.template.replace(_SLOT, text),
            choices=self.labels,
            gold=self.labels.index(label),
            question=text,
        )


# ---- client, steps 1-3: format, DP-train the generator, synthesize ------------------------


@dataclass(frozen=True)
class ClientSynthesis:
    """Steps 1-3's outcome. Only ``texts`` and ``labels`` leave the client; the DP report and
    the synthesis counts (they describe the private set) stay local."""

    texts: tuple[str, ...]
    labels: tuple[str, ...]
    dp: DPReport
    synthesis: Synthesis

    def local_report(self) -> dict[str, Any]:
        """The client's own record of what it spent and kept (never sent)."""
        return {
            "epsilon": self.dp.epsilon,
            "delta": self.dp.delta,
            "target_epsilon": self.dp.target_epsilon,
            "noise_multiplier": self.dp.noise_multiplier,
            "sample_rate": self.dp.sample_rate,
            "dp_steps": self.dp.steps,
            "private_rows": self.dp.n_rows,
            "truncated_rows": self.dp.truncated_rows,
            "noise_source": self.dp.noise_source,
            "dp_seconds": self.dp.seconds,
            "dp_first_loss": self.dp.losses[0] if self.dp.losses else float("nan"),
            "dp_last_loss": self.dp.losses[-1] if self.dp.losses else float("nan"),
            "synthetic": len(self.texts),
            "synthesis_rounds": self.synthesis.rounds,
            "short_labels": self.synthesis.short_labels,
        }


def client_synthesize(
    generator_model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    settings: FDKTSettings,
    *,
    noise: torch.Generator | None,
    seed: int | None,
) -> ClientSynthesis:
    """Steps 1-3 on ``generator_model`` (trained in place: pass one with a fresh LoRA adapter,
    fp32 trainable weights). ``noise`` seeds DP-SGD's sampling and noise and ``seed`` the
    sampling of texts: seeded in a simulation, None in a deployment (drawn from `secrets`).
    A misconfigured target (eps <= 0, delta >= 1/N) is refused before any training."""
    check_target(settings.eps, settings.delta, len(examples))
    fmt = LabelFormat.of(examples)
    prefixes = {label: label_prefix(label, settings.label_field) for label in fmt.labels}
    rows = [fmt.text_and_label(example) for example in examples]
    texts = [format_sample(prefixes[label], text) for text, label in rows if text.strip()]
    report = train_generator_dp(generator_model, tokenizer, texts, settings.dp, generator=noise)
    backend = TransformersBackend(generator_model, tokenizer)
    synthesis = synthesize(backend, prefixes, settings.per_label, settings.synthesis, seed=seed)
    return ClientSynthesis(
        texts=tuple(s.text for s in synthesis.samples),
        labels=tuple(s.label for s in synthesis.samples),
        dp=report,
        synthesis=synthesis,
    )


# ---- server, steps 4-5: curate and augment ------------------------------------------------


@dataclass(frozen=True)
class ServerAugmentation:
    """Steps 4-5's outcome: the samples returned to the clients, and the server's counts."""

    items: tuple[LabelledText, ...]
    curation: CurationReport
    report: dict[str, int]


def server_augment(
    backend: Backend | None,
    embedder: Any,
    texts: Sequence[str],
    labels: Sequence[str],
    label_names: Sequence[str],
    settings: FDKTSettings,
    store: ResponseStore | None = None,
) -> ServerAugmentation:
    """Steps 4-5 on the pooled synthetic samples of every client.

    Without LLM augmentation (``n_prompts = 0``; ``backend`` may then be None) the curated
    synthetic samples themselves are returned. With a `ResponseStore` on disk a restarted run
    does not answer a prompt twice (prompt ids depend only on the seed and their index).
    """
    if len(texts) != len(labels):
        raise DataError(f"server_augment: {len(texts)} texts but {len(labels)} labels")
    if not texts:
        raise DataError("server_augment: no synthetic samples arrived; nothing to curate")
    unknown = sorted(set(labels) - set(label_names))
    if unknown:
        raise DataError(f"server_augment: labels {unknown} are not the task's {list(label_names)}")
    vectors = np.asarray(embed(embedder, list(texts)))
    curated = curate(texts, labels, vectors, settings.curation)
    pool = [LabelledText(labels[i], texts[i]) for i in curated.kept]
    if not settings.uses_llm:
        return ServerAugmentation(tuple(pool), curated.report, {"kept": len(pool)})
    if backend is None:
        raise ConfigError("server_augment: n_prompts > 0 needs the LLM's backend")
    pools, clusters = pools_by_label(curated, list(texts))
    prompts = build_prompts(
        pools,
        settings.n_prompts,
        settings.demos_per_label,
        settings.seed,
        "label",
        clusters_by_label=clusters,
        per_label=settings.new_per_label,
        field=settings.label_field,
        domain=settings.domain,
    )
    # Ids by content: a restarted run (whose synthetic pool, and so prompts, may differ when
    # its seeds are secret) reuses an answer only for the very same prompt.
    unique = {_prompt_id(p.prompt): p.prompt for p in prompts}
    outcome = augment(
        backend,
        [Request(key, prompt) for key, prompt in unique.items()],
        settings.augmentation,
        store,
        labels=list(label_names),
        field=settings.label_field,
        min_words=settings.min_words,
        demonstrations=[item.text for item in pool],
        dedupe_threshold=settings.dedupe_threshold,
    )
    items = tuple(item for item in outcome.items if isinstance(item, LabelledText))
    return ServerAugmentation(items, curated.report, dict(Counter(outcome.report)))


def _prompt_id(prompt: str) -> str:
    return "aug-" + hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:24]


# ---- client, step 6: train the SLM --------------------------------------------------------


def training_examples(
    examples: Sequence[Example], received: Sequence[LabelledText]
) -> list[Example]:
    """The private examples followed by the received samples as the task's own rows (a
    received label the task does not have is skipped)."""
    fmt = LabelFormat.of(examples)
    extra = [
        fmt.example(f"augmented-{i}", item.label, item.text)
        for i, item in enumerate(received)
        if item.label in fmt.labels and item.text.strip()
    ]
    return [*examples, *extra]


def client_train(
    slm: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    received: Sequence[LabelledText],
    settings: FDKTSettings,
) -> TrainReport:
    """Step 6: answer-only training of the SLM (LoRA) on private + received examples."""
    return train_answer_only(
        slm, tokenizer, training_examples(examples, received), settings.train, progress=False
    )
