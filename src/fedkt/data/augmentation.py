"""FDKT step 6: the server LLM's augmentation prompts, robust parsing of its answers, dedupe.

Each prompt is the FDKT instruction ("write new samples of this domain for each label, similar
in style, not copies") plus ``k`` demonstrations per label drawn from the curated synthetic set
(`fedkt.data.curation`), in the line format the answer must use:

- labelled texts (``kind="label"``): ``"Label: <label> | Text: <text>"`` — the client's own
  label prefix (`fedkt.data.synthetic.label_prefix`, any field name such as "Topic");
- multiple-choice items (``kind="mc"``): ``"Question: ... | Choices: A) ... B) ... | Answer: B"``
  — `fedkt.data.synthetic.format_item`, parsed back with its `parse_item` (one item parser in
  fedkt, not two).

`parse_augmented` finds every item by its markers wherever it stands — it never assumes the
answer lists labels in prompt order or in any order, and never cuts by character counts (the
FDKT reference code did both) — so one malformed line, chatter, numbering or markdown costs only
itself. Unknown labels, empty or too-short texts, malformed items and repeats are dropped and
counted. `dedupe_against` drops items that copy a demonstration (same normalised text, or word
n-gram Jaccard similarity at or above a threshold). `augment` runs the prompts through
`fedkt.generation.generate_responses` with a `ResponseStore`, so a crashed augmentation resumes
where it stopped, and parses, dedupes and counts the answers.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np

from fedkt.data.curation import sample_across_clusters
from fedkt.data.synthetic import McItem, format_item, label_prefix, parse_item
from fedkt.errors import ConfigError, DataError

if TYPE_CHECKING:  # fedkt.generation imports torch: only the functions that generate load it
    from fedkt.generation import Backend, GenerationSettings, Request, ResponseStore

Kind: TypeAlias = Literal["label", "mc"]
KINDS: tuple[Kind, ...] = ("label", "mc")


@dataclass(frozen=True)
class LabelledText:
    """One labelled sample: a text and its label (as the task spells it)."""

    label: str
    text: str


Item: TypeAlias = LabelledText | McItem
"""What augmentation produces: a labelled text, or a whole multiple-choice item."""

PARSE_OUTCOMES = (
    "kept",
    "unknown_label",
    "empty",
    "too_short",
    "malformed",
    "duplicate",
    "chatter",
)
"""The keys of `parse_augmented`'s report: kept items, dropped ones by reason, and lines that
hold no item at all ("chatter")."""

_INSTRUCTION = {
    "label": (
        "You write new training samples for a text classification task{domain}. Below are "
        "examples for each label. Write {per_label} new samples for each label. Each new "
        "sample must fit its label and be similar in style, topic and length to the examples "
        "of that label, but it must be new: not a copy or a paraphrase of an example.\n"
        "Write one sample per line, exactly in the format\n"
        "{format}\n"
        "and nothing else. The labels are: {labels}."
    ),
    "mc": (
        "You write new multiple-choice questions{domain}. Below are example items. Write "
        "{n_new} new items. Each new item must be similar in "
        "style, topic and difficulty to the examples, with exactly one correct answer, but it "
        "must be new: not a copy or a paraphrase of an example.\n"
        "Write one item per line, exactly in the format\n"
        "{format}\n"
        "and nothing else."
    ),
}
_ZERO_SHOT_INSTRUCTION = (
    "You write training samples for a text classification task{domain}. Write {per_label} "
    "samples for each label. Each sample must clearly fit its label and read like a real "
    "sample of this domain, and the samples must differ from each other.\n"
    "Write one sample per line, exactly in the format\n"
    "{format}\n"
    "and nothing else. The labels are: {labels}."
)
"""The spec's "LLM zero-shot augmentation" baseline: the same task, no demonstrations."""
_ZERO_SHOT_MC_INSTRUCTION = (
    "You write new multiple-choice questions{domain}. Write {n_new} items, each with "
    "{choices} and exactly one correct answer. The items must read like real questions of "
    "this domain and differ from each other.\n"
    "Write one item per line, exactly in the format\n"
    "{format}\n"
    "and nothing else."
)
"""The zero-shot baseline for a multiple-choice task: items from the domain alone."""
_MC_FORMAT = "Question: <question> | Choices: A) <choice> B) <choice> ... | Answer: <letter>"
_HEADINGS = {"label": ("Examples:", "New samples:"), "mc": ("Examples:", "New items:")}


# ---- prompts ----------------------------------------------------------------------------------


def build_prompts(
    demos_by_label: Mapping[Any, Sequence[str | McItem]],
    n_prompts: int,
    k: int,
    seed: int = 0,
    kind: Kind = "label",
    *,
    clusters_by_label: Mapping[Any, Sequence[int]] | None = None,
    per_label: int = 5,
    field: str = "Label",
    domain: str = "",
    id_prefix: str = "aug",
) -> list[Request]:
    """``n_prompts`` augmentation prompts, each with up to ``k`` demonstrations per label.

    ``demos_by_label`` maps each label to its pool of demonstrations: texts for
    ``kind="label"``, `McItem`s for ``kind="mc"`` (grouped by any key, e.g. the answer letter,
    or one group for all). With ``clusters_by_label`` (cluster ids aligned with each pool, from
    `fedkt.data.curation.pools_by_label`) a prompt's demonstrations of a label come from as
    many different clusters as possible. Prompt ``i`` depends only on ``seed`` and ``i`` (its
    own random generator), so asking for more prompts later keeps the first ones and their ids
    ``f"{id_prefix}{i}"`` — what lets a `ResponseStore` resume. ``domain`` (e.g. "of hotel
    reviews") goes into the instruction; ``field`` names the label field, as in the client's
    label prefix ("Label", "Topic", "Rating").
    """
    _check_prompt_args(demos_by_label, n_prompts, k, kind, per_label)
    pools = {label: list(pool) for label, pool in demos_by_label.items() if len(pool)}
    if not pools:
        raise DataError("build_prompts: every label's pool of demonstrations is empty")
    if clusters_by_label is not None:
        for label, pool in pools.items():
            if len(clusters_by_label.get(label, ())) != len(pool):
                raise DataError(
                    f"build_prompts: label {label!r} has {len(pool)} demonstrations but "
                    f"{len(clusters_by_label.get(label, ()))} cluster ids"
                )
    from fedkt.generation import Request

    header = _INSTRUCTION[kind].format(
        domain=f" {domain.strip()}" if domain.strip() else "",
        per_label=per_label,
        n_new=per_label * len(pools),
        format=_MC_FORMAT if kind == "mc" else f"{label_prefix('<label>', field)} <text>",
        labels=", ".join(str(label) for label in pools),
    )
    examples, new = _HEADINGS[kind]
    requests = []
    for index in range(n_prompts):
        rng = np.random.default_rng([seed, index])
        lines = []
        for label, pool in pools.items():
            if clusters_by_label is not None:
                positions = sample_across_clusters(clusters_by_label[label], k, rng)
            else:
                positions = rng.permutation(len(pool))[:k].tolist()
            lines += [_demo_line(pool[p], label, kind, field) for p in positions]
        prompt = f"{header}\n\n{examples}\n" + "\n".join(lines) + f"\n\n{new}\n"
        requests.append(Request(f"{id_prefix}{index}", prompt))
    return requests


def build_zero_shot_prompts(
    labels: Sequence[str],
    n_prompts: int,
    seed: int = 0,
    *,
    per_label: int = 5,
    field: str = "Label",
    domain: str = "",
    id_prefix: str = "zero-shot",
) -> list[Request]:
    """``n_prompts`` prompts asking for ``per_label`` samples of each label with no
    demonstrations at all: the "public LLM data" approach FDKT argues against, which knows the
    task only by its label names and ``domain``. Each prompt lists the labels in its own
    seeded order (prompt ``i`` depends only on ``seed`` and ``i``), so the prompts differ and
    a `ResponseStore` answers each once."""
    _check_prompt_args({label: [label] for label in labels}, n_prompts, 1, "label", per_label)
    from fedkt.generation import Request

    requests = []
    for index in range(n_prompts):
        order = np.random.default_rng([seed, index]).permutation(len(labels))
        prompt = _ZERO_SHOT_INSTRUCTION.format(
            domain=f" {domain.strip()}" if domain.strip() else "",
            per_label=per_label,
            format=f"{label_prefix('<label>', field)} <text>",
            labels=", ".join(str(labels[i]) for i in order),
        )
        requests.append(Request(f"{id_prefix}{index}", f"{prompt}\n\n{_HEADINGS['label'][1]}\n"))
    return requests


def build_zero_shot_item_prompts(
    n_prompts: int,
    *,
    n_new: int = 5,
    n_choices: int | None = None,
    domain: str = "",
    id_prefix: str = "zero-shot",
) -> list[Request]:
    """`build_zero_shot_prompts` for a multiple-choice task: ``n_prompts`` prompts asking
    for ``n_new`` whole items each (``n_choices`` choices when given, else "two or more"),
    in the line format `parse_augmented` reads with ``kind="mc"``, knowing the task only by
    ``domain`` (e.g. "of grade-school science"). With no labels to vary, the prompts are the
    same text under different ids (``f"{id_prefix}{i}"``): a sampling LLM answers each
    anew, and a `ResponseStore` answers each once."""
    _check_prompt_args({"item": ["item"]}, n_prompts, 1, "mc", n_new)
    if n_choices is not None and n_choices < 2:
        raise ConfigError(f"build_zero_shot_item_prompts: n_choices={n_choices} (need >= 2)")
    from fedkt.generation import Request

    prompt = _ZERO_SHOT_MC_INSTRUCTION.format(
        domain=f" {domain.strip()}" if domain.strip() else "",
        n_new=n_new,
        choices="two or more choices" if n_choices is None else f"exactly {n_choices} choices",
        format=_MC_FORMAT,
    )
    text = f"{prompt}\n\n{_HEADINGS['mc'][1]}\n"
    return [Request(f"{id_prefix}{index}", text) for index in range(n_prompts)]


def _check_prompt_args(
    demos_by_label: Mapping[Any, Sequence[object]],
    n_prompts: int,
    k: int,
    kind: str,
    per_label: int,
) -> None:
    if kind not in KINDS:
        raise ConfigError(f"kind={kind!r}: need one of {KINDS}")
    for name, value, low in (("n_prompts", n_prompts, 0), ("k", k, 1), ("per_label", per_label, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"build_prompts: {name}={value!r} (need an integer >= {low})")
    if not demos_by_label:
        raise DataError("build_prompts: no labels (demos_by_label is empty)")


def _demo_line(demo: str | McItem, label: Hashable, kind: str, field: str) -> str:
    if kind == "mc":
        if not isinstance(demo, McItem):
            raise DataError(f"kind='mc' needs McItem demonstrations, got {type(demo).__name__}")
        return format_item(demo)
    if not isinstance(demo, str):
        raise DataError(f"kind='label' needs text demonstrations, got {type(demo).__name__}")
    return f"{label_prefix(str(label), field)} {_one_line(demo)}"


# ---- parsing ----------------------------------------------------------------------------------


def parse_augmented(
    text: str,
    labels: Sequence[str] = (),
    *,
    kind: Kind = "label",
    field: str = "Label",
    min_words: int = 3,
    n_choices: int | None = None,
) -> tuple[list[Item], Counter[str]]:
    """(well-formed items of ``text`` in order of appearance, counts by `PARSE_OUTCOMES`).

    ``kind="label"``: every ``"<field>: <label> | Text: <text>"`` is an item wherever it stands
    (after numbering, bullets or markdown, several on one line); its text runs to the next item
    marker or the end of the line. The label is matched to ``labels`` ignoring case, spacing
    and quotes, and returned as spelled in ``labels``; one not among them is "unknown_label"
    (with no ``labels`` every non-empty label is accepted as written).
    A line mentioning the field but without "Text:" is "malformed"; other non-blank lines are
    "chatter". ``kind="mc"``: each "Question:" starts an item running to the next one (lines
    inside joined, so "Choices:"/"Answer:" on their own lines work), cut after its answer
    letter and read by `fedkt.data.synthetic.parse_item`; ``labels`` is unused; with
    ``n_choices`` an item with another number of choices is "malformed". In both kinds a text
    (question) with fewer than ``min_words`` words is "too_short", and a repeat of an earlier
    item of the same answer (normalised text and label) is "duplicate".
    """
    if kind not in KINDS:
        raise ConfigError(f"kind={kind!r}: need one of {KINDS}")
    report: Counter[str] = Counter({outcome: 0 for outcome in PARSE_OUTCOMES})
    if not isinstance(text, str):
        return [], report
    candidates: Sequence[Item]
    if kind == "mc":
        candidates = _mc_candidates(text, min_words, n_choices, report)
    else:
        candidates = _label_candidates(text, labels, field, min_words, report)
    items: list[Item] = []
    seen: set[tuple[str, str]] = set()
    for item in candidates:
        key = _item_key(item)
        if key in seen:
            report["duplicate"] += 1
            continue
        seen.add(key)
        items.append(item)
    report["kept"] = len(items)
    return items, report


_TEXT_MARKER = re.compile(r"\bText\s*:\s*", re.IGNORECASE)
_DECORATION = re.compile(r"\*\*+|__+")  # markdown bold around markers; text is left alone
_QUOTES = "\"'“”‘’«»`"


def _label_candidates(
    text: str, labels: Sequence[str], field: str, min_words: int, report: Counter[str]
) -> list[LabelledText]:
    known = {_label_key(label): label for label in labels}
    any_label = not known
    head = re.compile(
        rf"(?<![^\W\d_]){re.escape(field.strip())}\s*:\s*"
        rf"(?P<label>[^\n|]*?)\s*[|,;/-]?\s*\bText\s*:\s*",
        re.IGNORECASE,
    )
    field_only = re.compile(rf"(?<![^\W\d_]){re.escape(field.strip())}\s*:", re.IGNORECASE)
    found: list[LabelledText] = []
    for raw_line in text.splitlines():
        line = _DECORATION.sub("", raw_line).strip()
        if not line:
            continue
        heads = list(head.finditer(line))
        if not heads:
            report["malformed" if field_only.search(line) else "chatter"] += 1
            continue
        ends = [m.start() for m in heads[1:]] + [len(line)]
        for match, end in zip(heads, ends, strict=True):
            label = (
                _strip_quotes(match["label"]) or None
                if any_label
                else known.get(_label_key(match["label"]))
            )
            body = _strip_quotes(_one_line(line[match.end() : end]))
            if label is None:
                report["unknown_label"] += 1
            elif not body:
                report["empty"] += 1
            elif len(body.split()) < min_words:
                report["too_short"] += 1
            else:
                found.append(LabelledText(label, body))
    return found


_QUESTION = re.compile(r"\bQuestion\s*:", re.IGNORECASE)
_CHOICES = re.compile(r"\s*\|?\s*\bChoices\s*:\s*", re.IGNORECASE)
_ANSWER = re.compile(r"\s*\|?\s*\bAnswer\s*:\s*\(?([A-Z])\b\)?", re.IGNORECASE)


def _mc_candidates(
    text: str, min_words: int, n_choices: int | None, report: Counter[str]
) -> list[McItem]:
    cleaned = _DECORATION.sub("", text)
    starts = [m.start() for m in _QUESTION.finditer(cleaned)]
    before = cleaned[: starts[0]] if starts else cleaned
    report["chatter"] += sum(1 for line in before.splitlines() if line.strip())
    found: list[McItem] = []
    ends = [*starts[1:], len(cleaned)] if starts else []  # no "Question:": no item at all
    for start, end in zip(starts, ends, strict=True):
        chunk = cleaned[start:end]
        answer = _ANSWER.search(chunk)
        if answer is None:
            report["malformed"] += 1
            continue
        tail = chunk[answer.end() :]
        report["chatter"] += sum(1 for line in tail.splitlines()[1:] if line.strip())
        # "Choices:" / "Answer:" on their own lines or without "|" get the canonical " | "
        body = _CHOICES.sub(" | Choices: ", chunk[: answer.start()], count=1)
        body = f"{body} | Answer: {answer.group(1).upper()}"
        item = parse_item(" ".join(body.split()))
        if item is None or (n_choices is not None and len(item.choices) != n_choices):
            report["malformed"] += 1
        elif len(item.question.split()) < min_words:
            report["too_short"] += 1
        else:
            found.append(item)
    return found


def _label_key(label: object) -> str:
    return " ".join(_strip_quotes(str(label)).strip("[](){}<>").casefold().split())


def _strip_quotes(text: str) -> str:
    text = text.strip()
    while len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


def _item_key(item: Item) -> tuple[str, str]:
    if isinstance(item, McItem):
        return (
            f"answer={item.answer}",
            _normalise(item.question + " " + " ".join(item.choices)),
        )
    return item.label, _normalise(item.text)


# ---- dedupe -----------------------------------------------------------------------------------


def dedupe_against(
    items: Sequence[Item],
    demonstrations: Sequence[str | Item],
    threshold: float = 0.8,
    *,
    n: int = 3,
) -> tuple[list[Item], int]:
    """(items that copy no demonstration, how many were dropped).

    An item copies a demonstration when their normalised texts (case, punctuation and spacing
    ignored) are equal, or when the Jaccard similarity of their word ``n``-gram sets (unigrams
    for texts shorter than ``n`` words) is at least ``threshold``. Labels are ignored: a copy
    under another label is still a copy. For multiple-choice items the text is the question
    and choices together. Candidates are found through an n-gram index, so the cost grows with
    the overlap, not with len(items) x len(demonstrations).
    """
    if not 0 < threshold <= 1:
        raise ConfigError(f"dedupe_against: threshold={threshold} (need in (0, 1])")
    exact: set[str] = set()
    shingles: list[frozenset[tuple[str, ...]]] = []
    index: dict[tuple[str, ...], list[int]] = {}
    for demo in demonstrations:
        words = _words(demo)
        exact.add(" ".join(words))
        grams = _shingles(words, n)
        for gram in grams:
            index.setdefault(gram, []).append(len(shingles))
        shingles.append(grams)
    kept: list[Item] = []
    for item in items:
        words = _words(item)
        if " ".join(words) in exact or _copies(_shingles(words, n), shingles, index, threshold):
            continue
        kept.append(item)
    return kept, len(items) - len(kept)


def _copies(
    grams: frozenset[tuple[str, ...]],
    shingles: list[frozenset[tuple[str, ...]]],
    index: dict[tuple[str, ...], list[int]],
    threshold: float,
) -> bool:
    if not grams:
        return False
    shared: Counter[int] = Counter()
    for gram in grams:
        shared.update(index.get(gram, ()))
    for demo, overlap in shared.items():
        union = len(grams) + len(shingles[demo]) - overlap
        if overlap / union >= threshold:
            return True
    return False


def _words(value: str | Item) -> list[str]:
    if isinstance(value, McItem):
        text = value.question + " " + " ".join(value.choices)
    elif isinstance(value, LabelledText):
        text = value.text
    else:
        text = value
    return re.findall(r"\w+", text.casefold())


def _shingles(words: list[str], n: int) -> frozenset[tuple[str, ...]]:
    size = n if len(words) >= n else 1
    return frozenset(tuple(words[i : i + size]) for i in range(len(words) - size + 1))


def _normalise(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.casefold()))


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ---- the server's augmentation run ------------------------------------------------------------


@dataclass
class Augmentation:
    """`augment`'s outcome: the new items (parsed, deduplicated), counts, and raw answers."""

    items: list[Item]
    report: Counter[str] = dataclass_field(default_factory=Counter)
    responses: dict[str, str] = dataclass_field(default_factory=dict)


def augment(
    backend: Backend,
    prompts: Sequence[Request],
    settings: GenerationSettings,
    store: ResponseStore | None = None,
    *,
    labels: Sequence[str] = (),
    kind: Kind = "label",
    field: str = "Label",
    min_words: int = 3,
    n_choices: int | None = None,
    demonstrations: Sequence[str | Item] = (),
    dedupe_threshold: float = 0.8,
) -> Augmentation:
    """Answer the augmentation prompts, resumably, and parse every answer into items.

    Generation goes through `generate_responses`: with a `ResponseStore` on disk, prompts
    answered before a crash are not generated again. Each answer is read by `parse_augmented`
    (answers in prompt-id order, items in order of appearance); repeats across answers are
    dropped ("duplicate"), then items copying one of ``demonstrations`` (`dedupe_against`, e.g.
    the whole curated synthetic pool) are dropped ("copies_demonstration"). The report adds up
    the per-answer counts plus "responses" and "empty_responses".
    """
    from fedkt.generation import generate_responses

    responses = generate_responses(backend, prompts, settings, store, progress=True)
    report: Counter[str] = Counter({outcome: 0 for outcome in PARSE_OUTCOMES})
    report["responses"] = len(responses)
    report["empty_responses"] = sum(1 for t in responses.values() if not t.strip())
    items: list[Item] = []
    seen: set[tuple[str, str]] = set()
    for request in prompts:
        parsed, counts = parse_augmented(
            responses[request.id],
            labels,
            kind=kind,
            field=field,
            min_words=min_words,
            n_choices=n_choices,
        )
        report.update({key: value for key, value in counts.items() if key != "kept"})
        for item in parsed:
            key = _item_key(item)
            if key in seen:
                report["duplicate"] += 1
                continue
            seen.add(key)
            items.append(item)
    kept, copies = dedupe_against(items, demonstrations, dedupe_threshold)
    report["copies_demonstration"] = copies
    report["kept"] = len(kept)
    return Augmentation(kept, report, responses)
