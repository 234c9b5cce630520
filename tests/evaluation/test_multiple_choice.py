"""acc and acc_norm exactly as lm-eval's process_results computes them."""

from __future__ import annotations

import json
import math

import pytest

from fedkt.data import Example
from fedkt.errors import DataError
from fedkt.evaluation import (
    choice_rows,
    correctness,
    evaluate_multiple_choice,
    evaluate_rows,
    multiple_choice_metrics,
    predict_choices,
    score_choices,
)

# "ab" scores -3.0 (-1.5 per character), "abcd" -5.5 (-1.375 per character): acc picks 0 and
# acc_norm picks 1. Dividing by the length *with* the delimiter (3 and 5) would pick 0 again.
SPLIT = Example("split", "Q:", ("ab", "abcd"), 1)
SPLIT_SCORES = [-3.0, -5.5]


def test_acc_and_acc_norm_can_disagree():
    [prediction] = predict_choices([SPLIT], [SPLIT_SCORES])
    assert (prediction.pred, prediction.pred_norm) == (0, 1)
    assert multiple_choice_metrics([prediction]) == {
        "acc": 0.0,
        "acc_stderr": 0.0,  # one example: no spread to estimate
        "acc_norm": 1.0,
        "acc_norm_stderr": 0.0,
        "n": 1,
    }


def test_ties_go_to_the_first_choice_like_numpy_argmax():
    tie = Example("tie", "Q:", ("yes", "yes"), 1)
    [prediction] = predict_choices([tie], [[-1.0, -1.0]])
    assert (prediction.pred, prediction.pred_norm) == (0, 0)


def test_metrics_average_over_examples():
    easy = Example("easy", "Q:", ("a", "b"), 0)
    predictions = predict_choices([SPLIT, easy, easy], [SPLIT_SCORES, [-1.0, -2.0], [-3.0, -2.0]])
    metrics = multiple_choice_metrics(predictions)
    assert metrics["acc"] == pytest.approx(1 / 3)
    assert metrics["acc_norm"] == pytest.approx(2 / 3)
    assert metrics["n"] == 3
    # lm-eval's acc_stderr: sqrt(p (1 - p) / (n - 1)) for 0/1 scores
    assert metrics["acc_stderr"] == pytest.approx(math.sqrt(1 / 3 * 2 / 3 / 2))
    assert metrics["acc_norm_stderr"] == pytest.approx(math.sqrt(2 / 3 * 1 / 3 / 2))


def test_rows_hold_each_prediction():
    easy = Example("easy", "Q:", ("a", "b"), 0)
    rows = choice_rows(predict_choices([SPLIT, easy], [SPLIT_SCORES, [-3.0, -2.0]]))
    assert rows == [
        {
            "id": "split",
            "gold": 1,
            "pred": 0,
            "pred_norm": 1,
            "correct": 0,
            "correct_norm": 1,
            "loglik": [-3.0, -5.5],
        },
        {
            "id": "easy",
            "gold": 0,
            "pred": 1,
            "pred_norm": 1,
            "correct": 0,
            "correct_norm": 0,
            "loglik": [-3.0, -2.0],
        },
    ]
    json.dumps(rows, allow_nan=False)


def test_evaluate_multiple_choice_agrees_with_the_scores(tiny_llama, tiny_tokenizer):
    examples = [
        Example(
            "gas", "Question: Which gas do plants absorb?\nAnswer:", ("oxygen", "carbon dioxide"), 1
        ),
        Example("topic", "Article: The team won.\nTopic:", ("Sports", "World", "Business"), 0),
        Example("boil", "Question: Water boils at?\nAnswer:", ("100 degrees", "rock"), 0),
    ]
    scores = score_choices(tiny_llama, tiny_tokenizer, examples)
    expected = multiple_choice_metrics(predict_choices(examples, scores))
    assert evaluate_multiple_choice(tiny_llama, tiny_tokenizer, examples, batch_size=2) == expected
    evaluation = evaluate_rows(tiny_llama, tiny_tokenizer, examples, batch_size=2)
    assert evaluation.scores == expected
    assert [row["id"] for row in evaluation.rows] == ["gas", "topic", "boil"]  # input order
    for row, example_scores in zip(evaluation.rows, scores, strict=True):
        assert row["loglik"] == pytest.approx(example_scores, abs=1e-4)  # batching changes bits
    assert sum(correctness(evaluation.rows)) / 3 == pytest.approx(expected["acc"])
    assert sum(correctness(evaluation.rows, "correct_norm")) / 3 == pytest.approx(
        expected["acc_norm"]
    )


def test_no_examples_is_an_error(tiny_llama, tiny_tokenizer):
    with pytest.raises(DataError, match="no examples"):
        evaluate_multiple_choice(tiny_llama, tiny_tokenizer, [])
