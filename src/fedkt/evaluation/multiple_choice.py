"""Multiple-choice accuracy with lm-evaluation-harness's ``acc`` and ``acc_norm``.

Both pick the argmax over choices (first index on ties, as ``np.argmax``): ``acc`` of the
summed continuation log-likelihood, ``acc_norm`` of that sum divided by the *character* length
of the raw choice string (without the target delimiter), exactly as
``ConfigurableTask.process_results`` does for ``output_type: multiple_choice``.

Scoring yields one row per example (`choice_rows`), so paired comparisons between methods
(`fedkt.evaluation.paired_test`) and error analysis work from the same numbers as the
headline metrics (`multiple_choice_scores`), which carry lm-eval's standard errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from fedkt.data import Example
from fedkt.errors import DataError
from fedkt.evaluation.loglikelihood import score_choices
from fedkt.evaluation.runtime import CausalLM
from fedkt.evaluation.statistics import mean_stderr


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


def choice_rows(predictions: Sequence[ChoicePrediction]) -> list[dict[str, Any]]:
    """One JSON-ready row per prediction: {"id", "gold", "pred", "pred_norm", "correct",
    "correct_norm", "loglik"}; ``correct`` / ``correct_norm`` are 1 when ``pred`` /
    ``pred_norm`` equals ``gold``, else 0, and ``loglik`` lists each choice's summed
    log-likelihood."""
    return [
        {
            "id": p.id,
            "gold": p.gold,
            "pred": p.pred,
            "pred_norm": p.pred_norm,
            "correct": int(p.pred == p.gold),
            "correct_norm": int(p.pred_norm == p.gold),
            "loglik": list(p.scores),
        }
        for p in predictions
    ]


def multiple_choice_scores(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """{"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n"} from `choice_rows` rows.

    Means over examples with their standard errors (`mean_stderr`), as lm-eval aggregates and
    reports them.
    """
    n = len(rows)
    if n == 0:
        raise DataError("no examples to evaluate: pass at least one multiple-choice example")
    acc, acc_stderr = mean_stderr([row["correct"] for row in rows])
    acc_norm, acc_norm_stderr = mean_stderr([row["correct_norm"] for row in rows])
    return {
        "acc": acc,
        "acc_stderr": acc_stderr,
        "acc_norm": acc_norm,
        "acc_norm_stderr": acc_norm_stderr,
        "n": n,
    }


def multiple_choice_metrics(predictions: Sequence[ChoicePrediction]) -> dict[str, float]:
    """`multiple_choice_scores` of `predictions` (means over examples, with stderrs)."""
    return multiple_choice_scores(choice_rows(predictions))


def multiple_choice_rows(
    model: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Zero-shot `choice_rows` of `model` on multiple-choice `examples`, in input order."""
    scores = score_choices(model, tokenizer, examples, batch_size=batch_size, progress=progress)
    return choice_rows(predict_choices(examples, scores))


def evaluate_multiple_choice(
    model: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, float]:
    """Zero-shot lm-eval ``acc`` / ``acc_norm`` (with stderrs) of `model` on `examples`."""
    return multiple_choice_scores(
        multiple_choice_rows(model, tokenizer, examples, batch_size=batch_size, progress=progress)
    )
