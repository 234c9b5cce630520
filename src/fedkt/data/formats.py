"""A task's rows as what DP synthesis needs, and back: (label, text) pairs or whole items.

FDKT's clients, and FedCoLLM's clients when the server's auxiliary set comes from DP synthetic
samples, train a generator on the task's private rows and later turn what crossed the wire back
into the task's own rows. Two shapes of task, two formats, both read off the task's examples
so that any task (built-in or the user's own) works without a per-task adapter:

- `LabelFormat`, classification (AG News): every row has the same choices, the label names,
  and its raw text in ``Example.question``; the generator learns ``"{label prefix} {text}"``.
- `ItemFormat`, multiple choice (ARC, OpenBookQA, CommonsenseQA): each row has its own choices;
  the generator learns whole items (`fedkt.data.synthetic.format_item`) and writes new ones.

`task_format` picks the one that fits, so callers need not know the task's kind.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from fedkt.data.example import Example
from fedkt.data.synthetic import ITEM_PREFIX, McItem
from fedkt.errors import ConfigError, DataError

_SLOT = "\x00TEXT\x00"
"""Stands for the text (the question) in a task's context template (no task text holds a NUL)."""

_CHOICES = "\x00CHOICES\x00"
"""Stands for the lettered choices in a context template that lists them."""

_SLOTS = re.compile(f"{re.escape(_SLOT)}|{re.escape(_CHOICES)}")


@dataclass(frozen=True)
class LabelFormat:
    """A classification task's label names and context template, read off its examples.

    ``template`` is a row's context with its text replaced by a slot, e.g.
    ``"Article: <slot>\\nTopic:"`` for AG News; `example` rebuilds a row from (label, text).
    """

    kind: ClassVar[Literal["label"]] = "label"
    """The `fedkt.data.augmentation` kind of what this format's synthesis produces."""

    labels: tuple[str, ...]
    template: str

    @classmethod
    def of(cls, examples: Sequence[Example]) -> LabelFormat:
        """The format shared by ``examples``; anything but classification is refused."""
        if not examples:
            raise DataError("no examples to read the task's labels from")
        labels = examples[0].choices
        templates = set()
        for example in examples:
            if example.is_generative or example.choices != labels or not example.question:
                raise ConfigError(
                    "label-prefixed synthesis supports classification tasks only (every row's "
                    "choices the same label names and its raw text in Example.question, e.g. "
                    f"ag_news); row {example.id!r} is not one. A multiple-choice task "
                    "synthesises whole items: use ItemFormat, or task_format, which picks "
                    "the format that fits."
                )
            if example.context.count(example.question) != 1:
                raise DataError(
                    f"row {example.id!r}: its text does not appear exactly once in its "
                    "context, so the task's prompt format cannot be read off it"
                )
            templates.add(example.context.replace(example.question, _SLOT))
        if len(templates) != 1:
            raise DataError(f"the rows use {len(templates)} prompt formats; need one")
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


@dataclass(frozen=True)
class ItemFormat:
    """A multiple-choice task's prompt format, read off its examples: rows <-> `McItem`.

    ``template`` is a row's context with its question replaced by a slot, e.g.
    ``"Question: <slot>\\nAnswer:"`` for ARC and CommonsenseQA, ``"<slot>"`` for OpenBookQA.
    A context that also lists the row's choices lettered A, B, ... (lm-eval's lettered
    formats, e.g. ``"Question: <q>\\nA. x\\nB. y\\nAnswer:"``) has that list replaced by a
    second slot: ``choice_line`` is how one choice is written (``"{letter}. {choice}"``) and
    ``choice_joiner`` what stands between two (``"\\n"``); both are ``""`` when the context
    lists no choices. The choices themselves (what is scored) are always ``Example.choices``.

    Tasks that score letters (choices ``("A", "B", ...)`` with the texts only in the
    context) are not readable: their rows look like classification over the letters.
    """

    kind: ClassVar[Literal["mc"]] = "mc"
    """The `fedkt.data.augmentation` kind of what this format's synthesis produces."""

    template: str
    choice_line: str = ""
    choice_joiner: str = ""

    @property
    def prefix(self) -> str:
        """What a generator of this task's items is prompted with (`format_item`'s head)."""
        return ITEM_PREFIX

    @classmethod
    def of(cls, examples: Sequence[Example]) -> ItemFormat:
        """The one format every row of ``examples`` is written in.

        Raises `DataError` naming the first row that cannot be read: a generative row, one
        without its raw question in ``Example.question``, one whose question is not in its
        context, or one written in another format than the rows before it.
        """
        if not examples:
            raise DataError("no examples to read the task's prompt format from")
        common = readings = _readings(examples[0])
        for example in examples[1:]:
            _check_row(example)
            common = [
                fmt
                for fmt in common
                if fmt.context(example.question, example.choices) == example.context
            ]
            if not common:
                raise DataError(
                    f"row {example.id!r}: its context {example.context[:80]!r} is not written "
                    f"in the prompt format of the rows before it ({readings[0].template!r}); "
                    "a task needs one format"
                )
        return common[0]

    def context(self, question: str, choices: Sequence[str]) -> str:
        """The task's prompt for a question (and its choices, when the format lists them)."""
        block = self._choice_list(choices)
        return _SLOTS.sub(lambda m: question if m.group(0) == _SLOT else block, self.template)

    def _choice_list(self, choices: Sequence[str]) -> str:
        return self.choice_joiner.join(
            self.choice_line.format(letter=letter, choice=choice)
            for letter, choice in zip(string.ascii_uppercase, choices, strict=False)
        )

    def item(self, example: Example) -> McItem:
        """The row as an item: its raw question, its choices, its gold index as the answer.

        Raises `DataError` naming the row when it is not a multiple-choice row in this
        format. The item is the row's text as is; `format_item` refuses the few rows whose
        choices repeat (ignoring case) — a caller writing training texts skips those.
        """
        _check_row(example)
        if self.choice_line and len(example.choices) > len(string.ascii_uppercase):
            raise DataError(f"row {example.id!r}: more than 26 choices cannot be lettered")
        if self.context(example.question, example.choices) != example.context:
            raise DataError(
                f"row {example.id!r}: its context {example.context[:80]!r} is not written in "
                f"the task's prompt format {self.template!r}"
            )
        return McItem(example.question, tuple(example.choices), example.gold)

    def example(self, id: str, item: McItem) -> Example:
        """The task's row for an item: context from the template, gold = the answer."""
        if len(item.choices) < 2 or (
            self.choice_line and len(item.choices) > len(string.ascii_uppercase)
        ):
            raise DataError(f"item {id!r}: {len(item.choices)} choices (need 2-26)")
        return Example(
            id=id,
            context=self.context(item.question, item.choices),
            choices=tuple(item.choices),
            gold=item.answer,
            question=item.question,
        )


TaskFormat = LabelFormat | ItemFormat
"""What DP synthesis reads a task's rows with: `task_format` picks one."""


def task_format(examples: Sequence[Example]) -> TaskFormat:
    """`LabelFormat` for classification rows, `ItemFormat` for multiple-choice ones.

    Classification: every row has the same choices (the label names) and its raw text in
    ``Example.question``; anything else is read as multiple choice. A set of one row, or of
    multiple-choice rows that happen to share their choices (e.g. every row "yes"/"no"), reads
    as classification — which fits them: the generator writes texts per label. Generative rows
    are refused (`ConfigError`); rows neither format reads, with `DataError` naming the row.
    """
    if not examples:
        raise DataError("no examples to read the task's format from")
    for example in examples:
        if example.is_generative:
            raise ConfigError(
                f"DP synthesis supports classification and multiple-choice tasks; row "
                f"{example.id!r} is generative (no choices, e.g. gsm8k)."
            )
    labels = examples[0].choices
    if all(e.choices == labels and e.question for e in examples):
        return LabelFormat.of(examples)
    return ItemFormat.of(examples)


# ---- reading an item format off one row ----


def _check_row(example: Example) -> None:
    if example.is_generative:
        raise DataError(
            f"row {example.id!r} is generative (no choices); item formats read multiple-choice "
            "rows only"
        )
    if not example.question.strip():
        raise DataError(
            f"row {example.id!r} has no raw question (Example.question is empty), so the "
            "task's prompt format cannot be read off it"
        )
    if example.question not in example.context:
        raise DataError(
            f"row {example.id!r}: its question {example.question[:60]!r} does not appear in "
            f"its context {example.context[:80]!r}, so the task's prompt format cannot be "
            "read off it"
        )


def _readings(example: Example) -> list[ItemFormat]:
    """Every format that writes this row's context from its question and choices, the ones
    that slot a lettered list of choices first."""
    _check_row(example)
    question, context = example.question, example.context
    starts = [m.start() for m in re.finditer(f"(?={re.escape(question)})", context)]
    lettered: list[ItemFormat] = []
    plain: list[ItemFormat] = []
    for start in starts:
        residue = context[:start] + _SLOT + context[start + len(question) :]
        lettered += _lettered(residue, example.choices)
        plain.append(ItemFormat(residue))
    readings = [*lettered, *plain]
    return [r for i, r in enumerate(readings) if r not in readings[:i]]


def _lettered(residue: str, choices: Sequence[str]) -> list[ItemFormat]:
    """Formats slotting a list of ``choices`` lettered A, B, ... found in ``residue``:
    each choice written alike ("A. x", "A) x", "(A) x" or "A: x"), joined alike by text
    without letters or digits."""
    if not 2 <= len(choices) <= len(string.ascii_uppercase) or not all(choices):
        return []
    found = []
    first = re.compile(rf"(?<![^\W_])(\(?)A([.):])([ \t]*){re.escape(choices[0])}")
    for match in first.finditer(residue):
        opening, closing, gap = match.groups()
        line = f"{opening}{{letter}}{closing}{gap}{{choice}}"
        second = residue.find(line.format(letter="B", choice=choices[1]), match.end())
        if second < 0:
            continue
        joiner = residue[match.end() : second]
        if re.search(r"[^\W_]", joiner):
            continue
        block = ItemFormat(_CHOICES, line, joiner)._choice_list(choices)
        if residue.startswith(block, match.start()):
            end = match.start() + len(block)
            found.append(
                ItemFormat(residue[: match.start()] + _CHOICES + residue[end:], line, joiner)
            )
    return found
