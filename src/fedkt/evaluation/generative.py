"""Exact match of a generated final answer, following lm-eval's ``gsm8k`` task.

Greedy decoding stops at EOS or at a new ``"Question:"`` (lm-eval's ``until``). The final
number is read with lm-eval's ``strict-match`` filter (the first ``#### <number>``) and, when
the model wrote no ``####``, falls back to the last number in the text (the spirit of
lm-eval's ``flexible-extract``; lm-eval itself would score such an answer 0 under
``strict-match``). Prediction and reference are normalised as lm-eval's ``exact_match`` with
gsm8k's ``regexes_to_ignore``: commas, ``$``, everything up to ``#### `` and one trailing
``.`` are removed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from fedkt.data import Example
from fedkt.errors import DataError
from fedkt.evaluation.runtime import CausalLM
from fedkt.generation import GenerationSettings, Request, TransformersBackend, generate_responses

STOP_STRING = "Question:"
"""Generation stops here: a model that starts the next question has finished its answer."""

STRICT_MATCH = re.compile(r"#### (\-?[0-9\.\,]+)")  # lm-eval gsm8k "strict-match"
LAST_NUMBER = re.compile(r"-?[0-9][0-9,]*(?:\.[0-9]+)?")  # fallback: take the last match


def _normalize(text: str) -> str:
    """lm-eval gsm8k ``regexes_to_ignore`` (",", "$", "(?s).*#### ", "\\.$"), then strip."""
    text = re.sub(r"(?s).*#### ", "", text)
    text = text.replace(",", "").replace("$", "")
    return re.sub(r"\.$", "", text.strip()).strip()


def extract_final_number(text: str) -> str | None:
    """The answer in `text`: the first ``#### <number>`` (strict-match), else its last number.

    Returned normalised (no commas, no trailing "."); None when `text` holds no number.
    """
    strict = STRICT_MATCH.search(text)
    if strict is not None:
        return _normalize(strict.group(1)) or None
    numbers = LAST_NUMBER.findall(text)
    return _normalize(numbers[-1]) if numbers else None


def generate_completions(
    model: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    progress: bool = False,
) -> list[str]:
    """Greedy continuation of each context, cut at `STOP_STRING`, in the order given.

    A thin call into `fedkt.generation` (the one batched generation path): left-padded
    batches of contexts of similar length, longest first, with the model in eval mode.
    """
    settings = GenerationSettings(
        max_new_tokens=max_new_tokens, batch_size=batch_size, stop=(STOP_STRING,)
    )
    requests = [Request(str(i), context) for i, context in enumerate(contexts)]
    backend = TransformersBackend(model, tokenizer)
    answers = generate_responses(backend, requests, settings, progress=progress)
    return [answers[request.id] for request in requests]


def evaluate_exact_match(
    model: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, float]:
    """{"exact_match", "n"}: share of examples whose generated final number equals `answer`."""
    _check_generative(examples)
    completions = generate_completions(
        model,
        tokenizer,
        [example.context for example in examples],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
    )
    hits = sum(
        extract_final_number(completion) == _normalize(example.answer)
        for example, completion in zip(examples, completions, strict=True)
    )
    return {"exact_match": hits / len(examples), "n": len(examples)}


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
