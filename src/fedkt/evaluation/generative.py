"""Exact match of a generated final answer, following lm-eval's ``gsm8k`` task.

Greedy decoding stops at EOS or at a new ``"Question:"`` (lm-eval's ``until``). The final
number is read with lm-eval's ``strict-match`` filter (the first ``#### <number>``); when
the model wrote no ``####``, from its last "the answer is <number>" (lm-eval's ``gsm8k-cot``
strict match, any case: a chain of thought ends "Therefore, the answer is 72."), else the
last number in the text (the spirit of lm-eval's ``flexible-extract``; lm-eval itself would
score such an answer 0 under ``strict-match``). With ``chat_template`` an instruction-tuned
model gets each context as the user's turn of its chat template (`fedkt.generation.chat`).
Prediction and reference are normalised as lm-eval's ``exact_match`` with
gsm8k's ``regexes_to_ignore``: commas, ``$``, everything up to ``#### `` and one trailing
``.`` are removed.

Scoring yields one row per example (`exact_match_rows`: completion, extracted answer,
correctness), from which `exact_match_scores` takes the headline metric and its standard error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from fedkt.data import Example
from fedkt.errors import DataError
from fedkt.evaluation.runtime import CausalLM
from fedkt.evaluation.statistics import mean_stderr
from fedkt.generation import GenerationSettings, Request, TransformersBackend, generate_responses

STOP_STRING = "Question:"
"""Generation stops here: a model that starts the next question has finished its answer."""

STRICT_MATCH = re.compile(r"#### (\-?[0-9\.\,]+)")  # lm-eval gsm8k "strict-match"
ANSWER_IS = re.compile(  # lm-eval gsm8k-cot "strict-match", any case, "$" and ":" allowed
    r"the answer is:?\s*\$?\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)", re.IGNORECASE
)
LAST_NUMBER = re.compile(r"-?[0-9][0-9,]*(?:\.[0-9]+)?")  # fallback: take the last match


def _normalize(text: str) -> str:
    """lm-eval gsm8k ``regexes_to_ignore`` (",", "$", "(?s).*#### ", "\\.$"), then strip."""
    text = re.sub(r"(?s).*#### ", "", text)
    text = text.replace(",", "").replace("$", "")
    return re.sub(r"\.$", "", text.strip()).strip()


def extract_final_number(text: str) -> str | None:
    """The answer in `text`: the first ``#### <number>`` (strict-match), else the number of
    its last "the answer is <number>", else its last number.

    Returned normalised (no commas, no trailing "."); None when `text` holds no number.
    """
    strict = STRICT_MATCH.search(text)
    if strict is not None:
        return _normalize(strict.group(1)) or None
    stated = ANSWER_IS.findall(text)
    if stated:
        return _normalize(stated[-1]) or None
    numbers = LAST_NUMBER.findall(text)
    return _normalize(numbers[-1]) if numbers else None


def answer_matches(completion: str, answer: str) -> bool:
    """True when the number `extract_final_number` reads in ``completion`` equals the
    normalised reference ``answer`` (the exact-match rule of `exact_match_rows`)."""
    pred = extract_final_number(completion)
    return pred is not None and pred == _normalize(answer)


def generate_completions(
    model: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    progress: bool = False,
    chat_template: bool = False,
) -> list[str]:
    """Greedy continuation of each context, cut at `STOP_STRING`, in the order given.

    A thin call into `fedkt.generation` (the one batched generation path): left-padded
    batches of contexts of similar length, longest first, with the model in eval mode; each
    context in the tokenizer's chat template with ``chat_template`` (where it has one).
    """
    settings = GenerationSettings(
        max_new_tokens=max_new_tokens, batch_size=batch_size, stop=(STOP_STRING,)
    )
    requests = [Request(str(i), context) for i, context in enumerate(contexts)]
    backend = TransformersBackend(model, tokenizer, chat_template=chat_template)
    answers = generate_responses(backend, requests, settings, progress=progress)
    return [answers[request.id] for request in requests]


def exact_match_rows(
    model: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    progress: bool = False,
    chat_template: bool = False,
) -> list[dict[str, Any]]:
    """One JSON-ready row per example, in input order: {"id", "answer", "pred", "completion",
    "correct"}.

    ``answer`` is the normalised reference final number, ``pred`` the number extracted from the
    greedy ``completion`` (`extract_final_number`; None when it holds none), ``correct`` 1 when
    they are equal, else 0. ``chat_template``: see `generate_completions`.
    """
    _check_generative(examples)
    completions = generate_completions(
        model,
        tokenizer,
        [example.context for example in examples],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        chat_template=chat_template,
    )
    rows = []
    for example, completion in zip(examples, completions, strict=True):
        answer = _normalize(example.answer)
        pred = extract_final_number(completion)
        rows.append(
            {
                "id": example.id,
                "answer": answer,
                "pred": pred,
                "completion": completion,
                "correct": int(pred == answer),
            }
        )
    return rows


def exact_match_scores(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """{"exact_match", "exact_match_stderr", "n"} from `exact_match_rows` rows: the share of
    correct rows and its standard error (`mean_stderr`)."""
    if not rows:
        raise DataError("no examples to evaluate: pass at least one generative example")
    exact_match, stderr = mean_stderr([row["correct"] for row in rows])
    return {"exact_match": exact_match, "exact_match_stderr": stderr, "n": len(rows)}


def evaluate_exact_match(
    model: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    progress: bool = False,
    chat_template: bool = False,
) -> dict[str, float]:
    """{"exact_match", "exact_match_stderr", "n"}: share of examples whose generated final
    number equals `answer`, with its standard error."""
    rows = exact_match_rows(
        model,
        tokenizer,
        examples,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        chat_template=chat_template,
    )
    return exact_match_scores(rows)


def _check_generative(examples: Sequence[Example]) -> None:
    if not examples:
        raise DataError("no examples to evaluate: pass at least one generative example")
    for example in examples:
        if not example.is_generative or not example.answer:
            raise DataError(
                f"example {example.id!r} is not generative with a final answer: exact match "
                "needs choices=() and a non-empty answer; score multiple choice with "
                "evaluate_multiple_choice, or use evaluate() to dispatch by kind"
            )
