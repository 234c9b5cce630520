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

Scope: classification tasks (one fixed label set, every row's choices = the label names,
``Example.question`` the raw text, e.g. AG News) as above, and multiple-choice tasks (each row
its own choices: ARC-Easy/Challenge, OpenBookQA, CommonsenseQA), whose items travel whole
(`fedkt.data.synthetic.McItem`, one line ``"Question: ... | Choices: A) ... B) ... | Answer:
B"`` each): the generator learns whole private items (1) and writes new ones from the bare
``"Question:"`` (3), well-formed ones only (with the task's number of choices when all its
public rows share one); the server curates the items as one group (the answer letter is no
class: near-duplicates and off-domain items only) on the embeddings of their formatted text
(4), its LLM writes new items from k demonstrations per prompt (5), and each client trains on
its private rows plus the items written back as the task's own rows (6,
`fedkt.data.formats.ItemFormat.example`). The task's format and number of choices are read off
its public (evaluation) rows, never off a client's private rows, so what a client sends stays
post-processing of its DP generator. Generative tasks (e.g. GSM8K) are refused with a clear
error; so is the canary audit for a multiple-choice task (its canaries are labelled texts).
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
from fedkt.data.augmentation import (
    Item,
    Kind,
    LabelledText,
    augment,
    build_prompts,
    build_zero_shot_item_prompts,
    build_zero_shot_prompts,
)
from fedkt.data.curation import CurationReport, CurationSettings, curate, pools_by_label
from fedkt.data.formats import ItemFormat, LabelFormat, TaskFormat, task_format
from fedkt.data.synthetic import McItem, format_item, label_prefix
from fedkt.errors import ConfigError, DataError
from fedkt.generation import (
    Backend,
    GenerationSettings,
    Request,
    ResponseStore,
)
from fedkt.generation.synthesis import SynthesisSettings
from fedkt.models.embeddings import embed
from fedkt.privacy.leakage import Canary, canaries_in, canary_exposure
from fedkt.training import TrainReport, TrainSettings, train_answer_only
from fedkt.training.dp_generator import DPSettings
from fedkt.training.dp_synthesis import DPSynthesis, dp_synthesize

ITEM_GROUP = "item"
"""The one label group of a multiple-choice task's items in curation and prompts: the answer
letter is no class, so items are neither split nor judged by it."""

AUDIT_REFERENCES = 499
"""Other secrets each canary is ranked against: exposure is then at most log2(500) = 9 bits,
and an unseen canary averages ~1.4 bits (`fedkt.privacy.leakage.expected_unseen_exposure`)."""


@dataclass(frozen=True)
class FDKTSettings:
    """FDKT hyperparameters (defaults: the reference code's, scaled to small models).

    Args:
        dp: the generator's DP-SGD (``target_epsilon``, ``delta`` < 1/N, epochs, batch, lr,
            clipping); ``target_epsilon = inf`` trains the same pipeline without noise.
        per_label: synthetic texts each client samples per label (reference: 2000); for a
            multiple-choice task, the items each client samples in all.
        synthesis: sampling (temperature 1, top-p 0.9) and the minimum/maximum length.
        curation: the server's filters (near-duplicate, off-domain, label mismatch) and k-means.
        n_prompts: augmentation prompts the server's LLM answers (reference: 200-20000);
            0 sends the curated DP synthetic samples back instead (the "DP synthetic only"
            baseline, no LLM).
        demos_per_label: k demonstrations per label in each prompt (reference: 1-2); for a
            multiple-choice task, k items in each prompt.
        new_per_label: new samples per label each prompt asks for (multiple choice: new
            items per prompt).
        augmentation: the LLM's decoding (sampled, so prompts with the same demonstrations
            still differ).
        min_words: augmented texts (multiple choice: questions) with fewer words are
            dropped.
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


# ---- client, steps 1-3: format, DP-train the generator, synthesize ------------------------


def client_synthesize(
    generator_model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    settings: FDKTSettings,
    *,
    noise: torch.Generator | None,
    seed: int | None,
    canaries: Sequence[Canary] = (),
    fmt: TaskFormat | None = None,
    n_choices: int | None = None,
) -> DPSynthesis:
    """Steps 1-3 on ``generator_model`` (trained in place: pass one with a fresh LoRA adapter,
    fp32 trainable weights). ``noise`` seeds DP-SGD's sampling and noise and ``seed`` the
    sampling of texts: seeded in a simulation, None in a deployment (drawn from `secrets`).
    ``canaries`` (the leakage audit) join the private rows the generator trains on. A
    misconfigured target (eps <= 0, delta >= 1/N) is refused before any training.

    ``fmt`` is the task's format read off public rows (`task_format` of the evaluation rows)
    and ``n_choices`` the public number of choices of a multiple-choice task (None: any);
    without ``fmt`` it is read off ``examples``, as `dp_synthesize` does. A multiple-choice
    task samples whole items (``.items``) and takes no canaries (they are labelled texts)."""
    if canaries and isinstance(fmt or task_format(examples), ItemFormat):
        raise ConfigError(
            "FDKT's canary audit supports classification tasks only (a canary is a labelled "
            "text); run a multiple-choice task with canaries = 0"
        )
    return dp_synthesize(
        generator_model,
        tokenizer,
        examples,
        dp=settings.dp,
        per_label=settings.per_label,
        synthesis=settings.synthesis,
        label_field=settings.label_field,
        noise=noise,
        seed=seed,
        extra_texts=[canary.training_text(settings.label_field) for canary in canaries],
        n_choices=n_choices,
        fmt=fmt,
    )


def client_audit(
    generator_model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    canaries: Sequence[Canary],
    sent: Sequence[str],
    settings: FDKTSettings,
    seed: int | None,
) -> dict[str, Any]:
    """The leakage audit, on the client, after step 3 (beyond the paper; spec's "Leakage
    audit"): each canary's exposure under the DP-trained generator (its secret ranked among
    `AUDIT_REFERENCES` other secrets) and whether any canary appears, verbatim or nearly, in
    the texts the client sends. Stays on the client's disk like its DP report."""
    exposure = canary_exposure(
        generator_model,
        tokenizer,
        canaries,
        label_field=settings.label_field,
        n_references=AUDIT_REFERENCES,
        seed=seed,
    )
    return {"exposure": exposure.as_dict(), "in_sent": canaries_in(sent, canaries).as_dict()}


# ---- server, steps 4-5: curate and augment ------------------------------------------------


@dataclass(frozen=True)
class ServerAugmentation:
    """Steps 4-5's outcome: the samples returned to the clients (labelled texts, or whole
    items for a multiple-choice task), and the server's counts."""

    items: tuple[Item, ...]
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
    does not answer a prompt twice (a prompt's id is a hash of its position and content).
    """
    if len(texts) != len(labels):
        raise DataError(f"server_augment: {len(texts)} texts but {len(labels)} labels")
    if not texts:
        raise DataError("server_augment: no synthetic samples arrived; nothing to curate")
    unknown = sorted(set(labels) - set(label_names))
    if unknown:
        raise DataError(f"server_augment: labels {unknown} are not the task's {list(label_names)}")
    samples = [LabelledText(label, text) for label, text in zip(labels, texts, strict=True)]
    return _curate_and_augment(
        backend, embedder, texts, labels, samples, list(texts), settings, store,
        kind="label", label_names=label_names, n_choices=None,
    )  # fmt: skip


def server_zero_shot_augment(
    backend: Backend,
    label_names: Sequence[str],
    settings: FDKTSettings,
    store: ResponseStore | None = None,
) -> ServerAugmentation:
    """The spec's "LLM zero-shot augmentation" baseline: the server's LLM writes samples from
    the label names and the domain alone, with the same prompt budget as step 5 but no
    demonstrations, so no client data (nor DP synthetic sample) informs them."""
    prompts = build_zero_shot_prompts(
        list(label_names),
        settings.n_prompts,
        settings.seed,
        per_label=settings.new_per_label,
        field=settings.label_field,
        domain=settings.domain,
    )
    outcome = _answer(backend, prompts, label_names, settings, store, [])
    return ServerAugmentation(outcome.items, CurationReport(0, {}, 0, 0), outcome.report)


def server_augment_items(
    backend: Backend | None,
    embedder: Any,
    items: Sequence[McItem],
    settings: FDKTSettings,
    store: ResponseStore | None = None,
    *,
    n_choices: int | None = None,
) -> ServerAugmentation:
    """Steps 4-5 on the pooled synthetic items of every client (a multiple-choice task).

    The items are embedded as their formatted text (`format_item`: question, choices and
    answer) and curated as one group (`ITEM_GROUP`: near-duplicates and off-domain items are
    dropped; the answer letter is no class, so no label-mismatch rule); each prompt shows
    ``demos_per_label`` kept items, drawn across clusters, and asks for ``new_per_label`` new
    ones. The answers are parsed as whole items (with ``n_choices``, the task's public number
    of choices, an item with another count is malformed) and deduped against the pool.
    Without LLM augmentation (``n_prompts = 0``; ``backend`` may be None) the curated items
    themselves are returned.
    """
    if not items:
        raise DataError("server_augment_items: no synthetic items arrived; nothing to curate")
    texts = [format_item(item) for item in items]
    return _curate_and_augment(
        backend, embedder, texts, [ITEM_GROUP] * len(items), list(items), list(items), settings,
        store, kind="mc", label_names=(), n_choices=n_choices,
    )  # fmt: skip


def _curate_and_augment(
    backend: Backend | None,
    embedder: Any,
    texts: Sequence[str],
    groups: Sequence[str],
    samples: Sequence[Item],
    demos: Sequence[str | McItem],
    settings: FDKTSettings,
    store: ResponseStore | None,
    *,
    kind: Kind,
    label_names: Sequence[str],
    n_choices: int | None,
) -> ServerAugmentation:
    """Steps 4-5 for either kind: curate ``texts`` (sample i's text, in group i), then (with
    the LLM) prompt with demonstrations ``demos`` of the kept samples, drawn across clusters,
    and parse the answers, deduped against them."""
    curated = curate(texts, groups, np.asarray(embed(embedder, list(texts))), settings.curation)
    pool = [samples[i] for i in curated.kept]
    if not settings.uses_llm:
        return ServerAugmentation(tuple(pool), curated.report, {"kept": len(pool)})
    if backend is None:
        raise ConfigError("FDKT's server: n_prompts > 0 needs the LLM's backend")
    pools, clusters = pools_by_label(curated, list(demos))
    prompts = build_prompts(
        pools,
        settings.n_prompts,
        settings.demos_per_label,
        settings.seed,
        kind,
        clusters_by_label=clusters,
        per_label=settings.new_per_label,
        field=settings.label_field,
        domain=settings.domain,
    )
    kept_demos = [demos[i] for i in curated.kept]
    outcome = _answer(
        backend, prompts, label_names, settings, store, kept_demos, kind=kind, n_choices=n_choices
    )
    return ServerAugmentation(outcome.items, curated.report, outcome.report)


def server_zero_shot_augment_items(
    backend: Backend,
    settings: FDKTSettings,
    store: ResponseStore | None = None,
    *,
    n_choices: int | None = None,
) -> ServerAugmentation:
    """`server_zero_shot_augment` for a multiple-choice task: the LLM writes whole items
    from the domain (and the task's public number of choices) alone, ``new_per_label`` per
    prompt, no demonstrations."""
    prompts = build_zero_shot_item_prompts(
        settings.n_prompts,
        n_new=settings.new_per_label,
        n_choices=n_choices,
        domain=settings.domain,
    )
    outcome = _answer(backend, prompts, (), settings, store, [], kind="mc", n_choices=n_choices)
    return ServerAugmentation(outcome.items, CurationReport(0, {}, 0, 0), outcome.report)


@dataclass(frozen=True)
class _Answered:
    items: tuple[Item, ...]
    report: dict[str, int]


def _answer(
    backend: Backend,
    prompts: Sequence[Request],
    label_names: Sequence[str],
    settings: FDKTSettings,
    store: ResponseStore | None,
    demonstrations: Sequence[str | Item],
    *,
    kind: Kind = "label",
    n_choices: int | None = None,
) -> _Answered:
    """The LLM answers ``prompts`` (resumably), parsed into labelled texts (``kind="mc"``:
    whole items), deduped against ``demonstrations``."""
    # Ids by content and position: a restarted run (whose synthetic pool, and so prompts, may
    # differ when its seeds are secret) reuses an answer only for the very same prompt.
    unique = {_prompt_id(i, p.prompt): p.prompt for i, p in enumerate(prompts)}
    outcome = augment(
        backend,
        [Request(key, prompt) for key, prompt in unique.items()],
        settings.augmentation,
        store,
        labels=list(label_names),
        kind=kind,
        field=settings.label_field,
        min_words=settings.min_words,
        n_choices=n_choices,
        demonstrations=demonstrations,
        dedupe_threshold=settings.dedupe_threshold,
    )
    wanted = McItem if kind == "mc" else LabelledText
    items = tuple(item for item in outcome.items if isinstance(item, wanted))
    return _Answered(items, dict(Counter(outcome.report)))


def _prompt_id(index: int, prompt: str) -> str:
    return "aug-" + hashlib.sha256(f"{index}\n{prompt}".encode()).hexdigest()[:24]


# ---- client, step 6: train the SLM --------------------------------------------------------


def training_examples(
    examples: Sequence[Example], received: Sequence[Item], fmt: TaskFormat | None = None
) -> list[Example]:
    """The private examples followed by the received samples as the task's own rows.

    ``fmt`` is the task's format (pass the one read off public rows; None: read off
    ``examples``). Classification: a received label the task does not have, or an empty
    text, is skipped. Multiple choice: each item becomes a row through `ItemFormat.example`
    (one the format cannot write, e.g. more than 26 choices in a lettered format, is
    skipped). A received sample of the other kind is refused (`DataError`).
    """
    fmt = fmt or task_format(examples)
    extra: list[Example] = []
    for i, item in enumerate(received):
        row_id = f"augmented-{i}"
        if isinstance(fmt, ItemFormat):
            if not isinstance(item, McItem):
                raise DataError(f"FDKT: received {type(item).__name__}s for a multiple-choice task")
            try:
                extra.append(fmt.example(row_id, item))
            except DataError:
                continue
        elif not isinstance(item, LabelledText):
            raise DataError(f"FDKT: received {type(item).__name__}s for a classification task")
        elif item.label in fmt.labels and item.text.strip():
            extra.append(fmt.example(row_id, item.label, item.text))
    return [*examples, *extra]


def client_train(
    slm: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    received: Sequence[Item],
    settings: FDKTSettings,
    fmt: TaskFormat | None = None,
) -> TrainReport:
    """Step 6: answer-only training of the SLM (LoRA) on private + received examples (``fmt``:
    the task's format, read off public rows; None: off ``examples``)."""
    return train_answer_only(
        slm, tokenizer, training_examples(examples, received, fmt), settings.train, progress=False
    )


class PublicFormat:
    """The task's format, label names and choice count, read off public rows (the evaluation
    rows; never a client's private ones, so what a client sends stays post-processing of its
    DP generator). A mixin: the class gives `public_rows`."""

    @property
    def public_rows(self) -> Sequence[Example]:
        raise NotImplementedError

    @property
    def format(self) -> TaskFormat:
        return task_format(self.public_rows)

    @property
    def labels(self) -> tuple[str, ...]:
        """A classification task's label names; () for a multiple-choice task."""
        fmt = self.format
        return fmt.labels if isinstance(fmt, LabelFormat) else ()

    @property
    def n_choices(self) -> int | None:
        """A multiple-choice task's number of choices when every public row has the same,
        else None (items with any number pass); None for classification."""
        return public_n_choices(self.format, self.public_rows)


def public_n_choices(fmt: TaskFormat, public: Sequence[Example]) -> int | None:
    """A multiple-choice task's number of choices, read off its public rows (e.g. the
    evaluation rows; never a client's private ones): the count every row has, or None when
    they differ (items with any number pass). None for classification."""
    if not isinstance(fmt, ItemFormat):
        return None
    counts = {len(row.choices) for row in public}
    return counts.pop() if len(counts) == 1 else None


def sample_text(sample: Item) -> str:
    """What a sample says, as compared with rows (the leakage audit's DCR): a labelled text's
    text, or an item's one formatted line (`format_item`)."""
    return format_item(sample) if isinstance(sample, McItem) else sample.text
