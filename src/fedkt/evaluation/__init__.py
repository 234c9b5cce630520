"""fedkt.evaluation: lm-evaluation-harness-exact multiple-choice scoring and exact match.

Multiple choice reproduces lm-eval's tokenisation, truncation, ``acc`` and ``acc_norm``
(cross-checked against lm-eval itself: bench/lm_eval_crosscheck.py); generative tasks use
greedy decoding and GSM8K-style final-number exact match. `evaluate_rows` also returns one
row per example, and every metric comes with its standard error; `paired_test` says whether
two methods scored on the same rows really differ.
"""

from fedkt.evaluation.dispatch import Evaluation, correctness, evaluate, evaluate_rows
from fedkt.evaluation.encoding import Request, encode_request, resolve_max_length
from fedkt.evaluation.generative import (
    STOP_STRING,
    answer_matches,
    evaluate_exact_match,
    exact_match_rows,
    exact_match_scores,
    extract_final_number,
    generate_completions,
)
from fedkt.evaluation.loglikelihood import score_choices, score_requests
from fedkt.evaluation.multiple_choice import (
    ChoicePrediction,
    choice_rows,
    evaluate_multiple_choice,
    multiple_choice_metrics,
    multiple_choice_rows,
    multiple_choice_scores,
    predict_choices,
)
from fedkt.evaluation.runtime import CausalLM, eval_mode
from fedkt.evaluation.statistics import mcnemar_exact, mean_stderr, paired_test, sign_flip_test

__all__ = [
    "STOP_STRING",
    "CausalLM",
    "ChoicePrediction",
    "Evaluation",
    "Request",
    "answer_matches",
    "choice_rows",
    "correctness",
    "encode_request",
    "eval_mode",
    "evaluate",
    "evaluate_exact_match",
    "evaluate_multiple_choice",
    "evaluate_rows",
    "exact_match_rows",
    "exact_match_scores",
    "extract_final_number",
    "generate_completions",
    "mcnemar_exact",
    "mean_stderr",
    "multiple_choice_metrics",
    "multiple_choice_rows",
    "multiple_choice_scores",
    "paired_test",
    "predict_choices",
    "resolve_max_length",
    "score_choices",
    "score_requests",
    "sign_flip_test",
]
