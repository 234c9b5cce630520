"""DP synthetic samples from a client's private rows: format, DP-train, sample.

The client side of FDKT (Li et al., arXiv 2405.14212, steps 1-3), kept in the library so any
protocol can use it: FDKT sends the samples to the server for augmentation; FedCoLLM without
public data sends them as the server's auxiliary distillation set. The task's format
(`fedkt.data.formats.task_format`) decides what the generator learns and writes:

- classification: ``"{field}: {label} | Text: {text}"`` per private row; every label's bare
  prefix is sampled, and the samples come back as ``texts``/``labels``;
- multiple choice: the whole item, ``format_item(item)`` per private row
  (``"Question: ... | Choices: A) ... B) ... | Answer: B"``); the bare ``"Question:"`` is
  sampled, and the well-formed items come back as ``items``.

Everything returned in ``texts``/``labels``/``items`` is post-processing of the DP-trained
generator (its filters use only the settings and public task properties, never the private
rows), so it carries the generator's (eps, delta); the report describes the private set and
stays on the client.

Every label of the task is synthesised, not only the labels the client holds: which labels a
client has is private too, and the DP guarantee covers only what the generator outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedkt.data.example import Example
from fedkt.data.formats import ItemFormat, TaskFormat, task_format
from fedkt.data.synthetic import McItem, format_item, format_sample, label_prefix
from fedkt.errors import DataError
from fedkt.generation.synthesis import (
    ItemSynthesis,
    Synthesis,
    SynthesisSettings,
    synthesize,
    synthesize_items,
)
from fedkt.generation.transformers_backend import TransformersBackend
from fedkt.privacy.accounting import check_target
from fedkt.training.dp_generator import DPReport, DPSettings, train_generator_dp


@dataclass(frozen=True)
class DPSynthesis:
    """One client's DP synthetic samples. Only ``texts`` and ``labels`` (classification) or
    ``items`` (multiple choice) may leave the client; the DP report, the synthesis counts and
    ``skipped_rows`` (they describe the private set) stay local.

    Classification fills ``texts``/``labels`` (aligned) and leaves ``items`` empty, with a
    `Synthesis`; multiple choice fills ``items`` and leaves ``texts``/``labels`` empty, with
    an `ItemSynthesis`. `kind` says which.
    """

    texts: tuple[str, ...]
    labels: tuple[str, ...]
    dp: DPReport
    synthesis: Synthesis | ItemSynthesis
    items: tuple[McItem, ...] = ()
    skipped_rows: int = 0
    """Private rows the generator did not train on (an empty text; an item `format_item`
    refuses, e.g. choices that repeat ignoring case)."""

    @property
    def kind(self) -> Literal["label", "mc"]:
        """``"label"`` (texts and labels) or ``"mc"`` (items), as `fedkt.data.augmentation`
        names them."""
        return "mc" if isinstance(self.synthesis, ItemSynthesis) else "label"

    def local_report(self) -> dict[str, Any]:
        """The client's own record of what it spent and kept (never sent)."""
        report: dict[str, Any] = {
            "epsilon": self.dp.epsilon,
            "delta": self.dp.delta,
            "target_epsilon": self.dp.target_epsilon,
            "noise_multiplier": self.dp.noise_multiplier,
            "sample_rate": self.dp.sample_rate,
            "dp_steps": self.dp.steps,
            "private_rows": self.dp.n_rows,
            "truncated_rows": self.dp.truncated_rows,
            "skipped_rows": self.skipped_rows,
            "noise_source": self.dp.noise_source,
            "dp_seconds": self.dp.seconds,
            "dp_first_loss": self.dp.losses[0] if self.dp.losses else float("nan"),
            "dp_last_loss": self.dp.losses[-1] if self.dp.losses else float("nan"),
            "synthesis_rounds": self.synthesis.rounds,
        }
        if isinstance(self.synthesis, ItemSynthesis):
            counts = self.synthesis.counts
            report |= {
                "synthetic": len(self.items),
                "synthetic_drawn": counts.drawn,
                "synthetic_dropped": dict(counts.dropped),
                "short_items": self.synthesis.short,
            }
        else:
            report |= {
                "synthetic": len(self.texts),
                "short_labels": self.synthesis.short_labels,
            }
        return report


def generator_texts(examples: Sequence[Example], label_field: str) -> list[str]:
    """The generator's training texts (EOS is appended by the trainer): for classification
    ``"{field}: {label} | Text: {text}"`` per private row, rows with an empty text skipped;
    for multiple choice ``format_item(item)`` per row, rows it refuses skipped."""
    return _training_texts(task_format(examples), examples, label_field)[0]


def _training_texts(
    fmt: TaskFormat, examples: Sequence[Example], label_field: str
) -> tuple[list[str], int]:
    """(training texts, rows skipped)."""
    texts: list[str] = []
    if isinstance(fmt, ItemFormat):
        for example in examples:
            item = fmt.item(example)  # a row the format cannot read is refused, not skipped
            try:
                texts.append(format_item(item))
            except DataError:
                continue
    else:
        prefixes = {label: label_prefix(label, label_field) for label in fmt.labels}
        rows = [fmt.text_and_label(example) for example in examples]
        texts = [format_sample(prefixes[label], text) for text, label in rows if text.strip()]
    return texts, len(examples) - len(texts)


def dp_synthesize(
    generator_model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    dp: DPSettings,
    per_label: int,
    synthesis: SynthesisSettings,
    label_field: str,
    noise: torch.Generator | None,
    seed: int | None,
    extra_texts: Sequence[str] = (),
    n_choices: int | None = None,
    fmt: TaskFormat | None = None,
) -> DPSynthesis:
    """DP-train ``generator_model`` in place on ``examples`` (pass one with a fresh LoRA
    adapter, fp32 trainable weights) and sample from it.

    Classification rows: ``per_label`` texts for every label (``label_field`` names the
    prefix's field). Multiple-choice rows: ``per_label`` whole items in all (the items are
    one group), well-formed ones only; ``n_choices``, a public property of the task (e.g. 5
    for commonsense_qa; never read it off the private rows), drops items with another number
    of choices. `fedkt.data.formats.task_format` tells the two apart, reading the private
    rows; pass ``fmt`` read off public rows (e.g. the task's evaluation set) so that the kind
    of output does not depend on them (a client whose few multiple-choice rows happen to
    share their choices would otherwise be read as classification).

    ``noise`` seeds DP-SGD's sampling and noise and ``seed`` the sampling of texts: seeded in
    a simulation, None in a deployment (drawn from `secrets`). ``extra_texts`` are formatted
    training texts added to the private ones (the leakage audit's canaries); they count as
    private rows for the accountant. A misconfigured target (eps <= 0, delta >= 1/N) is
    refused before any training.
    """
    fmt = fmt or task_format(examples)
    private, skipped = _training_texts(fmt, examples, label_field)
    if not private:
        raise DataError(
            f"dp_synthesize: none of the {len(examples)} private rows can be written as a "
            "training text (empty texts, or items format_item refuses)"
        )
    texts = [*private, *extra_texts]
    check_target(dp.target_epsilon, dp.delta, len(texts))
    report = train_generator_dp(generator_model, tokenizer, texts, dp, generator=noise)
    backend = TransformersBackend(generator_model, tokenizer)
    if isinstance(fmt, ItemFormat):
        items = synthesize_items(backend, per_label, synthesis, seed=seed, n_choices=n_choices)
        return DPSynthesis(
            texts=(),
            labels=(),
            dp=report,
            synthesis=items,
            items=tuple(items.items),
            skipped_rows=skipped,
        )
    prefixes = {label: label_prefix(label, label_field) for label in fmt.labels}
    sampled = synthesize(backend, prefixes, per_label, synthesis, seed=seed)
    return DPSynthesis(
        texts=tuple(s.text for s in sampled.samples),
        labels=tuple(s.label for s in sampled.samples),
        dp=report,
        synthesis=sampled,
        skipped_rows=skipped,
    )
