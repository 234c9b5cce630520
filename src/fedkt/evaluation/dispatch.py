"""One entry point for callers that do not care which kind of task they evaluate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from fedkt.data import Example
from fedkt.errors import DataError
from fedkt.evaluation.generative import exact_match_rows, exact_match_scores
from fedkt.evaluation.multiple_choice import multiple_choice_rows, multiple_choice_scores
from fedkt.evaluation.runtime import CausalLM


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation measured: headline scores and the per-example rows behind them.

    `scores` holds the metrics (``acc``/``acc_norm`` or ``exact_match``), each with a
    ``<metric>_stderr``, and ``n``. `rows` holds one JSON-ready dict per example, in input
    order (see `fedkt.evaluation.multiple_choice.choice_rows` and
    `fedkt.evaluation.generative.exact_match_rows`); its ``correct`` column is what
    `fedkt.evaluation.paired_test` compares between methods.
    """

    scores: dict[str, float]
    rows: list[dict[str, Any]]


def evaluate_rows(
    model: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    progress: bool = False,
    chat_template: bool = False,
) -> Evaluation:
    """Exact match for generative examples, else multiple-choice acc / acc_norm, with rows.

    `max_new_tokens` and `chat_template` (generate in the tokenizer's chat template, where it
    has one: for instruction-tuned models) only matter for generative tasks; multiple choice
    scores the bare contexts' continuations. Mixed kinds are refused: their metrics do not
    average.
    """
    if not examples:
        raise DataError(
            "no examples to evaluate: the evaluation split has no rows (check the task's data "
            "file, and data.limit / a split slice such as 'train[-200:]')"
        )
    kinds = {example.is_generative for example in examples}
    if len(kinds) != 1:
        raise DataError(
            "evaluate() needs a non-empty list of examples of one kind (all multiple choice or "
            f"all generative), got {len(examples)} examples of {len(kinds)} kinds; "
            "evaluate each task separately"
        )
    if kinds == {True}:
        rows = exact_match_rows(
            model,
            tokenizer,
            examples,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            progress=progress,
            chat_template=chat_template,
        )
        return Evaluation(exact_match_scores(rows), rows)
    rows = multiple_choice_rows(
        model, tokenizer, examples, batch_size=batch_size, progress=progress
    )
    return Evaluation(multiple_choice_scores(rows), rows)


def evaluate(
    model: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    progress: bool = False,
    chat_template: bool = False,
) -> dict[str, float]:
    """The scores of `evaluate_rows` (metrics, their ``_stderr`` and ``n``), without rows."""
    return evaluate_rows(
        model,
        tokenizer,
        examples,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        progress=progress,
        chat_template=chat_template,
    ).scores


def correctness(rows: Sequence[dict[str, Any]], key: str = "correct") -> list[float]:
    """The `key` column of `rows` as floats, in row order: the input of `paired_test`."""
    try:
        return [float(row[key]) for row in rows]
    except KeyError:
        raise DataError(f"a row has no {key!r} column; rows come from evaluate_rows") from None
