"""One entry point for callers that do not care which kind of task they evaluate."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from fedkt.data import Example
from fedkt.errors import DataError
from fedkt.evaluation.generative import evaluate_exact_match
from fedkt.evaluation.multiple_choice import evaluate_multiple_choice
from fedkt.evaluation.runtime import CausalLM


def evaluate(
    model: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    progress: bool = False,
) -> dict[str, float]:
    """`evaluate_exact_match` for generative examples, else `evaluate_multiple_choice`.

    `max_new_tokens` only matters for generative tasks. Mixed kinds are refused: their metrics
    do not average.
    """
    kinds = {example.is_generative for example in examples}
    if len(kinds) != 1:
        raise DataError(
            "evaluate() needs a non-empty list of examples of one kind (all multiple choice or "
            f"all generative), got {len(examples)} examples of {len(kinds)} kinds; "
            "evaluate each task separately"
        )
    if kinds == {True}:
        return evaluate_exact_match(
            model,
            tokenizer,
            examples,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            progress=progress,
        )
    return evaluate_multiple_choice(
        model, tokenizer, examples, batch_size=batch_size, progress=progress
    )
