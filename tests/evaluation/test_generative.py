"""Final-number extraction, exact match and batched greedy generation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fedkt.data import Example
from fedkt.errors import DataError
from fedkt.evaluation import (
    answer_matches,
    correctness,
    evaluate,
    evaluate_exact_match,
    evaluate_rows,
    extract_final_number,
    generate_completions,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She has 3 + 4 = 7 apples.\n#### 7", "7"),  # strict-match
        ("#### 1,234.", "1234"),  # commas and a trailing '.' stripped
        ("#### -12 and later 99", "-12"),  # strict-match wins over the last number
        ("#### 5\n#### 6", "5"),  # strict-match takes the first
        ("It costs $1,500 in 2 parts, so 750.", "750"),  # fallback: last number
        ("The answer is -3.5.", "-3.5"),
        # a chain of thought: its answer line wins over numbers after it
        ("5 + 3 = 8.\n\nTherefore, the answer is 8. (Checked in 2 steps.)", "8"),
        ("So the answer is: $1,200.\nQuestion: 7 more?", "1200"),
        ("The answer is 4. No wait, the answer is 5 apples, 3 left.", "5"),  # the last one
        ("#### 9\nTherefore, the answer is 8.", "9"),  # strict-match still first
        ("no digits here", None),
    ],
)
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


def gsm(id_: str, question: str, answer: str) -> Example:
    return Example(
        id_, f"Question: {question}\nAnswer:", (), -1, target=f"#### {answer}", answer=answer
    )


GSM = [gsm("a", "1+1?", "2"), gsm("b", "How many clips in total?", "1,000"), gsm("c", "5*5?", "25")]
CANNED = {  # what the fake model "generates" after each context
    GSM[0].context: " 1+1=2\n#### 2",
    GSM[1].context: " 600+400 = 1000 clips.\nQuestion: next one #### 7",  # cut at Question:
    GSM[2].context: " #### 24",
}


@pytest.fixture
def canned_model(tiny_llama, tiny_tokenizer, monkeypatch):
    """tiny_llama whose generate() appends CANNED[context], checking it got left padding."""

    def fake_generate(input_ids, attention_mask, **_kw):
        assert (attention_mask[:, -1] == 1).all(), "generation input must be left-padded"
        rows = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            context = tiny_tokenizer.decode(ids[mask.bool()])
            new = tiny_tokenizer.encode(CANNED[context])
            rows.append(torch.cat([ids, torch.tensor(new)]))
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=1)

    monkeypatch.setattr(tiny_llama, "generate", fake_generate)
    return tiny_llama


def test_exact_match_with_canned_generations(canned_model, tiny_tokenizer):
    result = evaluate_exact_match(canned_model, tiny_tokenizer, GSM, batch_size=2)
    assert result == {
        "exact_match": pytest.approx(2 / 3),
        "exact_match_stderr": pytest.approx(math.sqrt(2 / 3 * 1 / 3 / 2)),
        "n": 3,
    }


def test_rows_hold_completion_prediction_and_correctness(canned_model, tiny_tokenizer):
    evaluation = evaluate_rows(canned_model, tiny_tokenizer, GSM, batch_size=2)
    assert evaluation.rows == [
        {"id": "a", "answer": "2", "pred": "2", "completion": " 1+1=2\n#### 2", "correct": 1},
        {
            "id": "b",
            "answer": "1000",
            "pred": "1000",
            "completion": " 600+400 = 1000 clips.\n",
            "correct": 1,
        },
        {"id": "c", "answer": "25", "pred": "24", "completion": " #### 24", "correct": 0},
    ]
    assert correctness(evaluation.rows) == [1.0, 1.0, 0.0]
    assert evaluation.scores == evaluate_exact_match(canned_model, tiny_tokenizer, GSM)
    json.dumps(evaluation.rows, allow_nan=False)


def test_no_number_in_the_completion_is_a_miss(canned_model, tiny_tokenizer, monkeypatch):
    monkeypatch.setitem(CANNED, GSM[0].context, " I do not know")
    [row] = evaluate_rows(canned_model, tiny_tokenizer, GSM[:1]).rows
    assert (row["pred"], row["correct"]) == (None, 0)


def test_completions_are_cut_at_the_next_question(canned_model, tiny_tokenizer):
    [completion] = generate_completions(canned_model, tiny_tokenizer, [GSM[1].context])
    assert completion == " 600+400 = 1000 clips.\n"


def test_evaluate_dispatches_by_kind(canned_model, tiny_tokenizer):
    assert evaluate(canned_model, tiny_tokenizer, GSM)["exact_match"] == pytest.approx(2 / 3)
    mc = Example("mc", "Q:", ("yes", "no"), 0)
    assert set(evaluate(canned_model, tiny_tokenizer, [mc])) == {
        "acc",
        "acc_stderr",
        "acc_norm",
        "acc_norm_stderr",
        "n",
    }
    with pytest.raises(DataError, match="one kind"):
        evaluate(canned_model, tiny_tokenizer, [mc, GSM[0]])


def test_batched_greedy_generation_equals_one_at_a_time(tiny_llama, tiny_tokenizer):
    contexts = [ex.context for ex in GSM] + ["Article: Shares rose.\nTopic:"]
    one = generate_completions(tiny_llama, tiny_tokenizer, contexts, max_new_tokens=6, batch_size=1)
    many = generate_completions(
        tiny_llama, tiny_tokenizer, contexts, max_new_tokens=6, batch_size=4
    )
    assert many == one
    assert any(one)  # the random model did generate something to compare


def test_exact_match_refuses_multiple_choice(tiny_llama, tiny_tokenizer):
    with pytest.raises(DataError, match="'mc' is not generative"):
        evaluate_exact_match(tiny_llama, tiny_tokenizer, [Example("mc", "Q:", ("a",), 0)])


def test_evaluating_no_examples_says_so(canned_model, tiny_tokenizer):
    with pytest.raises(DataError, match="no examples to evaluate"):
        evaluate(canned_model, tiny_tokenizer, [])


def test_answer_matches_compares_normalised_numbers():
    assert answer_matches("Therefore, the answer is 1,000.", "1000")
    assert answer_matches("#### 72", "72") and not answer_matches("the answer is 7", "72")
    assert not answer_matches("no number", "72")
