"""The six tasks fedkt knows, in the Hugging Face row schema, formatted as lm-eval formats them.

Each `TaskSpec.to_example` turns one hub row into an `Example` (its `question` field keeps the
row's raw question text, for formats that re-wrap it). The prompt formats copy
lm-evaluation-harness 0.4.13 (``lm_eval/tasks/{arc,openbookqa,gsm8k}/*.yaml``) so that fedkt's
accuracy agrees with lm-eval on the same rows. Two deliberate departures, both documented at
the task: CommonsenseQA (FedCoLLM format, not lm-eval's lettered one) and AG News (no lm-eval
task exists; the prompt follows the same ``Field: ...`` pattern).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fedkt.data.example import Example
from fedkt.errors import DataError

AG_NEWS_TOPICS = ("World", "Sports", "Business", "Science and Technology")
"""AG News label names in label order; "Sci/Tech" is spelt out so a model can score it."""


class RowError(DataError):
    """A row field is missing or has the wrong shape; the loader adds file and line."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field {field!r} {problem}")
        self.field = field


@dataclass(frozen=True)
class TaskSpec:
    """Where a task lives on the hub and how its rows become `Example`s.

    `to_example` leaves ``id`` empty for rows without an ``id`` field (GSM8K, AG News);
    `fedkt.data.load_examples` then gives them a positional id that is the same whether the
    rows came from the hub or from local files.

    `rows`, when set, is where the rows come from instead of the hub or the data directory:
    split name -> ``[(where, row), ...]``, ``where`` naming the file and line for error
    messages (the user's own tasks, `fedkt.data.custom`).
    """

    name: str
    hub_id: str
    hub_config: str | None
    kind: Literal["multiple_choice", "generative"]
    fields: tuple[str, ...]
    to_example: Callable[[dict[str, Any]], Example]
    rows: Callable[[str], list[tuple[str, dict[str, Any]]]] | None = None


# ---- typed field access: every check names the field, the loader adds where the row is ----


def _text(row: dict[str, Any], field: str) -> str:
    value = row.get(field)
    if not isinstance(value, str):
        problem = "is missing" if field not in row else f"must be a string, got {value!r}"
        raise RowError(field, problem)
    return value


def _choices(row: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(texts, labels) of a ``{"text": [...], "label": [...]}`` choices field."""
    value = row.get("choices")
    if not isinstance(value, dict):
        raise RowError("choices", f'must be {{"text": [...], "label": [...]}}, got {value!r}')
    texts, labels = value.get("text"), value.get("label")
    for part, items in (("text", texts), ("label", labels)):
        if not isinstance(items, list) or not items or not all(isinstance(s, str) for s in items):
            raise RowError(f"choices.{part}", f"must be a non-empty list of strings, got {items!r}")
    assert isinstance(texts, list) and isinstance(labels, list)  # narrowed by the loop above
    if len(texts) != len(labels):
        raise RowError("choices", f"has {len(texts)} texts but {len(labels)} labels")
    return tuple(texts), tuple(labels)


def _gold(row: dict[str, Any], labels: tuple[str, ...]) -> int:
    # Stripped like lm-eval's openbookqa.yaml (``answerKey.lstrip()``); ARC and CQA keys carry
    # no whitespace, so this changes nothing there.
    key = _text(row, "answerKey").strip()
    if key not in labels:
        raise RowError("answerKey", f"is {key!r}, which is not one of the labels {list(labels)}")
    return labels.index(key)


def _row_id(row: dict[str, Any]) -> str:
    return _text(row, "id") if "id" in row else ""


def _multiple_choice(row: dict[str, Any], question: str, context: str) -> Example:
    texts, labels = _choices(row)
    gold = _gold(row, labels)
    return Example(id=_row_id(row), context=context, choices=texts, gold=gold, question=question)


# ---- per-task formats ----


def arc_example(row: dict[str, Any]) -> Example:
    """lm-eval ``arc_easy``/``arc_challenge``; labels are A–E or 1–4, gold is their index."""
    question = _text(row, "question")
    return _multiple_choice(row, question, f"Question: {question}\nAnswer:")


def openbookqa_example(row: dict[str, Any]) -> Example:
    """lm-eval ``openbookqa``: the bare question stem is the context (it reads as a cloze)."""
    stem = _text(row, "question_stem")
    return _multiple_choice(row, stem, stem)


def commonsense_qa_example(row: dict[str, Any]) -> Example:
    """FedCoLLM's format: ``Question: {question}\\nAnswer:`` scored on the 5 choice texts.

    lm-eval 0.4.13's ``commonsense_qa`` instead lists the options as "A. ... E." inside the
    prompt and scores the letters. FedCoLLM (arXiv 2411.11707) evaluates CQA in the same
    Question/Answer format as ARC, so fedkt follows the paper: accuracies are comparable with
    the paper, not with lm-eval's ``commonsense_qa`` task.
    """
    question = _text(row, "question")
    return _multiple_choice(row, question, f"Question: {question}\nAnswer:")


def gsm8k_example(row: dict[str, Any]) -> Example:
    """lm-eval ``gsm8k``: train on the whole worked solution, grade the number after ####."""
    solution = _text(row, "answer")
    if "####" not in solution:
        raise RowError("answer", "has no '#### <final answer>' line")
    final = solution.rsplit("####", 1)[1].strip().replace(",", "")
    question = _text(row, "question")
    return Example(
        id=_row_id(row),
        context=f"Question: {question}\nAnswer:",
        choices=(),
        gold=-1,
        target=solution,
        answer=final,
        question=question,
    )


def ag_news_example(row: dict[str, Any]) -> Example:
    """Topic classification as multiple choice over the four label names (for FDKT)."""
    label = row.get("label")
    # bool is an int subclass; a true/false label is a malformed row, not topic 1 or 0.
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < 4:
        problem = "is missing" if "label" not in row else f"must be an int 0-3, got {label!r}"
        raise RowError("label", problem)
    text = _text(row, "text")
    context = f"Article: {text}\nTopic:"
    return Example(
        id=_row_id(row), context=context, choices=AG_NEWS_TOPICS, gold=label, question=text
    )


_MC_FIELDS = ("id", "question", "choices", "answerKey")

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "arc_easy", "allenai/ai2_arc", "ARC-Easy", "multiple_choice", _MC_FIELDS, arc_example
        ),
        TaskSpec(
            "arc_challenge",
            "allenai/ai2_arc",
            "ARC-Challenge",
            "multiple_choice",
            _MC_FIELDS,
            arc_example,
        ),
        TaskSpec(
            "openbookqa",
            "allenai/openbookqa",
            "main",
            "multiple_choice",
            ("id", "question_stem", "choices", "answerKey"),
            openbookqa_example,
        ),
        TaskSpec(
            "commonsense_qa",
            "tau/commonsense_qa",
            None,
            "multiple_choice",
            _MC_FIELDS,
            commonsense_qa_example,
        ),
        TaskSpec(
            "gsm8k", "openai/gsm8k", "main", "generative", ("question", "answer"), gsm8k_example
        ),
        TaskSpec(
            "ag_news",
            "fancyzhx/ag_news",
            None,
            "multiple_choice",
            ("text", "label"),
            ag_news_example,
        ),
    )
}


def get_task(name: str) -> TaskSpec:
    """The registered task called `name`; an unknown name suggests the closest known one."""
    if name in TASKS:
        return TASKS[name]
    close = difflib.get_close_matches(name.lower().replace("-", "_"), TASKS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise DataError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}.{hint}")
