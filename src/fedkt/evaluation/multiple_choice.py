"""Multiple-choice accuracy with lm-evaluation-harness's ``acc`` and ``acc_norm``.

Both pick the argmax over choices (first index on ties, as ``np.argmax``): ``acc`` of the
summed continuation log-likelihood, ``acc_norm`` of that sum divided by the *character* length
of the raw choice string (without the target delimiter), exactly as
``ConfigurableTask.process_results`` does for ``output_type: multiple_choice``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from fedkt.data import Example
from fedkt.errors import DataError
from fedkt.evaluation.loglikelihood import score_choices
from fedkt.evaluation.runtime import CausalLM


@dataclass(frozen=True)
class ChoicePrediction:
    """What the model picked for one example, for per-example reports and error analysis."""

    id: str
    gold: int
    pred: int  # argmax of the summed log-likelihood (acc)
    pred_norm: int  # argmax of log-likelihood per character of the choice (acc_norm)
    scores: tuple[float, ...]  # summed log-likelihood of each choice


def predict_choices(
    examples: Sequence[Example], scores: Sequence[Sequence[float]]
) -> list[ChoicePrediction]:
    """Pair each example with its `scores` (from `score_choices`) and take both argmaxes."""
    if len(examples) != len(scores):
        raise ValueError(f"{len(examples)} examples but {len(scores)} score lists")
    predictions = []
    for example, example_scores in zip(examples, scores, strict=True):
        lls = np.asarray(example_scores, dtype=np.float64)
        lengths = np.asarray([float(len(choice)) for choice in example.choices])
        predictions.append(
            ChoicePrediction(
                id=example.id,
                gold=example.gold,
                pred=int(np.argmax(lls)),
                pred_norm=int(np.argmax(lls / lengths)),
                scores=tuple(float(s) for s in example_scores),
            )
        )
    return predictions


def multiple_choice_metrics(predictions: Sequence[ChoicePrediction]) -> dict[str, float]:
    """{"acc", "acc_norm", "n"}: means over examples, as lm-eval aggregates them."""
    n = len(predictions)
    if n == 0:
        raise DataError("no examples to evaluate: pass at least one multiple-choice example")
    return {
        "acc": sum(p.pred == p.gold for p in predictions) / n,
        "acc_norm": sum(p.pred_norm == p.gold for p in predictions) / n,
        "n": n,
    }


def evaluate_multiple_choice(
    model: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, float]:
    """Zero-shot lm-eval ``acc`` / ``acc_norm`` of `model` on multiple-choice `examples`."""
    scores = score_choices(model, tokenizer, examples, batch_size=batch_size, progress=progress)
    return multiple_choice_metrics(predict_choices(examples, scores))
