"""fedkt.evaluation: lm-evaluation-harness-exact multiple-choice scoring and exact match.

Multiple choice reproduces lm-eval's tokenisation, truncation, ``acc`` and ``acc_norm``
(cross-checked against lm-eval itself: bench/lm_eval_crosscheck.py); generative tasks use
greedy decoding and GSM8K-style final-number exact match.
"""

from fedkt.evaluation.dispatch import evaluate
from fedkt.evaluation.encoding import Request, encode_request, resolve_max_length
from fedkt.evaluation.generative import (
    STOP_STRING,
    evaluate_exact_match,
    extract_final_number,
    generate_completions,
)
from fedkt.evaluation.loglikelihood import score_choices, score_requests
from fedkt.evaluation.multiple_choice import (
    ChoicePrediction,
    evaluate_multiple_choice,
    multiple_choice_metrics,
    predict_choices,
)
from fedkt.evaluation.runtime import CausalLM, eval_mode

__all__ = [
    "STOP_STRING",
    "CausalLM",
    "ChoicePrediction",
    "Request",
    "encode_request",
    "eval_mode",
    "evaluate",
    "evaluate_exact_match",
    "evaluate_multiple_choice",
    "extract_final_number",
    "generate_completions",
    "multiple_choice_metrics",
    "predict_choices",
    "resolve_max_length",
    "score_choices",
    "score_requests",
]
