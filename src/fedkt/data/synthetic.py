"""FDKT's text formats: label-prefixed samples, their filters, and whole multiple-choice items.

FDKT (Li et al., arXiv 2405.14212; spec ``shared/specs/fdkt.md``) trains a client's generator
on ``"{label prefix} {text}"`` + EOS and then samples texts from the bare label prefix. Only
strings live here; training is `fedkt.training.train_generator_dp`'s job and sampling
`fedkt.generation.synthesize`'s. Decisions the spec leaves open:

- A prefix ends at ``"Text:"`` with no trailing space, and `format_sample` puts one space
  (`TEXT_DELIMITER`) between prefix and text. Byte-level BPE vocabularies (GPT-2, SmolLM2)
  hold " word" as one token, so a prompt ending in a space would ask the generator for a token
  sequence it never saw in training; ending at ":" keeps prompt and training tokens aligned
  (the same convention as lm-eval's ``target_delimiter``).
- A generator trained on whole samples may echo a prefix at the start of its text or run on
  into a next sample; `clean_synthetic` strips the echo and cuts at the next prefix marker.
- Multiple-choice tasks synthesise whole items, one line each:
  ``"Question: ... | Choices: A) ... B) ... | Answer: B"``. `parse_item` takes only
  well-formed items (non-empty question, two or more distinct non-empty choices lettered A,
  B, C, ... in order, the answer one of those letters) and returns None for anything else.
  `clean_item` reads a generator's continuation of the bare `ITEM_PREFIX` the same way
  `clean_synthetic` reads a labelled text: echoes stripped, cut where a next item begins.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from dataclasses import dataclass

from fedkt.errors import ConfigError, DataError

TEXT_DELIMITER = " "
"""Between a label prefix and its text, in training and when sampling."""

TEXT_MARKER = "| Text:"
"""Ends every label prefix; a second one in a generated text starts a new sample."""

FIELD_SEPARATOR = " | "

ITEM_PREFIX = "Question:"
"""What a generator of whole multiple-choice items is prompted with."""

DROP_REASONS = ("empty", "too_short", "too_long")
"""Why `clean_synthetic` drops a text (the synthesis reports count each)."""

ITEM_DROP_REASONS = ("empty", "malformed", "choice_count", "too_short", "too_long")
"""Why `clean_item` drops a generated item (the synthesis reports count each)."""


def label_prefix(label: str, field: str = "Label") -> str:
    """``"{field}: {label} | Text:"``, e.g. ``label_prefix("World", "Topic")``.

    The label and field are one line each and free of ``"|"``, so the prefix parses back.
    """
    for name, value in (("label", label), ("field", field)):
        if not value.strip() or "|" in value or "\n" in value:
            raise ConfigError(
                f"label_prefix: {name}={value!r} must be non-empty text on one line without '|'."
            )
    return f"{field.strip()}: {label.strip()} {TEXT_MARKER}"


def format_sample(prefix: str, text: str) -> str:
    """One training text: ``prefix + " " + text`` with the text's whitespace collapsed.

    The generator learns to stop because the trainer appends EOS; nothing is appended here.
    """
    body = _one_line(text)
    if not body:
        raise DataError(f"format_sample: the text after {prefix!r} is empty; drop the row.")
    return f"{prefix}{TEXT_DELIMITER}{body}"


@dataclass(frozen=True)
class SyntheticFilter:
    """What a generated text must look like to be kept.

    Args:
        min_words: fewer words than this is dropped as "too_short" (the spec's minimum length).
        max_words: more words than this is dropped as "too_long" (a run-on that never stopped).
    """

    min_words: int = 5
    max_words: int = 200

    def __post_init__(self) -> None:
        if not 1 <= self.min_words <= self.max_words:
            raise ConfigError(
                f"SyntheticFilter: need 1 <= min_words <= max_words, got "
                f"min_words={self.min_words}, max_words={self.max_words}."
            )


def clean_synthetic(
    text: str, prefixes: Iterable[str], rule: SyntheticFilter
) -> tuple[str | None, str]:
    """(cleaned text, "kept") or (None, reason), reason one of `DROP_REASONS`.

    Strips leading echoes of any of `prefixes` (the generator restating its prompt), cuts the
    text where a next sample begins (the prefixes' field, e.g. "Topic:", or `TEXT_MARKER`),
    collapses whitespace, then checks the word count.
    """
    body = text.strip()
    heads = sorted((p.strip() for p in prefixes if p.strip()), key=len, reverse=True)
    stripped = True
    while stripped:
        stripped = False
        for head in heads:
            if body.startswith(head):
                body, stripped = body[len(head) :].lstrip(), True
    # a new sample begun: cut at its field ("Topic:") or, failing that, at its "| Text:"
    cuts = [body.find(cut) for cut in (TEXT_MARKER, *_fields(heads))]
    body = body[: min((i for i in cuts if i >= 0), default=len(body))]
    body = _one_line(body)
    words = len(body.split())
    if words == 0:
        return None, "empty"
    if words < rule.min_words:
        return None, "too_short"
    if words > rule.max_words:
        return None, "too_long"
    return body, "kept"


# ---- whole multiple-choice items ----


@dataclass(frozen=True)
class McItem:
    """One synthetic multiple-choice item: `answer` indexes `choices`."""

    question: str
    choices: tuple[str, ...]
    answer: int


_ITEM = re.compile(
    r"^\s*Question:\s*(?P<q>.*?)\s*\|\s*Choices:\s*(?P<c>.*?)\s*\|\s*Answer:\s*(?P<a>[A-Z])\W*$",
    re.DOTALL,
)
_CHOICE = re.compile(r"(?:^|\s)([A-Z])\)\s")


def format_item(item: McItem) -> str:
    """``"Question: q | Choices: A) x B) y | Answer: B"``; refuses what would not parse back.

    Raises `DataError` for an item `parse_item` would reject or read differently (a lettered
    "X) " inside a choice, duplicate or empty choices, an empty question, an answer out of
    range). A "|" inside a field is fine: the parser anchors on "| Choices:" and "| Answer:".
    """
    letters = string.ascii_uppercase
    if not 2 <= len(item.choices) <= len(letters) or not 0 <= item.answer < len(item.choices):
        raise DataError(
            f"format_item: need 2-26 choices and an answer index among them, got "
            f"{len(item.choices)} choices and answer={item.answer}."
        )
    choices = " ".join(f"{letters[i]}) {_one_line(c)}" for i, c in enumerate(item.choices))
    text = (
        f"{ITEM_PREFIX} {_one_line(item.question)}{FIELD_SEPARATOR}Choices: {choices}"
        f"{FIELD_SEPARATOR}Answer: {letters[item.answer]}"
    )
    parsed = parse_item(text)
    expected = McItem(
        _one_line(item.question), tuple(_one_line(c) for c in item.choices), item.answer
    )
    if parsed != expected:
        raise DataError(
            f"format_item: {item.question[:60]!r} does not survive the item format (a lettered "
            "'X) ' inside a choice, an empty question or empty/duplicate choices); drop or "
            "rewrite it."
        )
    return text


def parse_item(text: str) -> McItem | None:
    """The item in `text` (as `format_item` writes it), or None when it is malformed.

    Well-formed: a non-empty question; choices lettered A, B, C, ... in order, at least two,
    each non-empty and distinct (ignoring case and spacing); an answer letter among them.
    Text after the answer letter other than punctuation makes the item malformed.
    """
    match = _ITEM.match(text.strip())
    if match is None:
        return None
    question = _one_line(match["q"])
    if not question:
        return None
    raw = match["c"]
    starts = list(_CHOICE.finditer(raw))
    letters = [m.group(1) for m in starts]
    if len(starts) < 2 or letters != list(string.ascii_uppercase[: len(starts)]):
        return None
    if raw[: starts[0].start()].strip():
        return None  # text before "A)"
    ends = [m.start() for m in starts[1:]] + [len(raw)]
    choices = tuple(_one_line(raw[m.end() : end]) for m, end in zip(starts, ends, strict=True))
    keys = {c.casefold() for c in choices}
    if not all(choices) or len(keys) != len(choices):
        return None
    answer = ord(match["a"]) - ord("A")
    if answer >= len(choices):
        return None
    return McItem(question, choices, answer)


def clean_item(
    text: str, rule: SyntheticFilter, *, n_choices: int | None = None
) -> tuple[McItem | None, str]:
    """(item, "kept") or (None, reason), reason one of `ITEM_DROP_REASONS`.

    ``text`` is what a generator wrote after the bare `ITEM_PREFIX`. Leading echoes of the
    prefix are stripped, the text is cut where a next item begins (another `ITEM_PREFIX`), and
    what remains must parse (`parse_item`: "malformed" otherwise). With ``n_choices`` an item
    with another number of choices is "choice_count". A question with fewer than
    ``rule.min_words`` words is "too_short"; an item (question and choices) with more than
    ``rule.max_words`` words is "too_long".
    """
    body = text.strip()
    while body.startswith(ITEM_PREFIX):
        body = body[len(ITEM_PREFIX) :].lstrip()
    cut = body.find(ITEM_PREFIX)
    body = body[:cut] if cut >= 0 else body
    if not body.strip():
        return None, "empty"
    item = parse_item(f"{ITEM_PREFIX} {body}")
    if item is None:
        return None, "malformed"
    if n_choices is not None and len(item.choices) != n_choices:
        return None, "choice_count"
    if len(item.question.split()) < rule.min_words:
        return None, "too_short"
    if len(item.question.split()) + sum(len(c.split()) for c in item.choices) > rule.max_words:
        return None, "too_long"
    return item, "kept"


def _fields(prefixes: Iterable[str]) -> list[str]:
    """The field heads of label prefixes: ``"Topic: World | Text:"`` -> ``"Topic:"``."""
    return sorted({p.split(":", 1)[0].strip() + ":" for p in prefixes if ":" in p})


def _one_line(text: str) -> str:
    return " ".join(text.split())
