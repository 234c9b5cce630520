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

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedTokenizerBase

from fedkt.data import Example
from fedkt.errors import DataError, ModelError
from fedkt.evaluation.runtime import CausalLM, eval_mode

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


@torch.inference_mode()
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

    Batches are left-padded (generation appends on the right) and formed from contexts of
    similar length, longest first, to waste little compute on padding.
    """
    if tokenizer.pad_token_id is None:
        raise ModelError(
            f"tokenizer {tokenizer.name_or_path!r} has no pad token, needed for batched "
            "generation; load it with fedkt.models.load_tokenizer, which sets one"
        )
    config = _greedy_config(model, tokenizer, max_new_tokens)
    order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))
    completions = [""] * len(contexts)
    starts = tqdm(range(0, len(order), batch_size), disable=not progress, desc="generate")
    with eval_mode(model):
        for start in starts:
            batch = order[start : start + batch_size]
            texts = _generate_batch(model, tokenizer, [contexts[i] for i in batch], config)
            for index, text in zip(batch, texts, strict=True):
                completions[index] = text
    return completions


def _greedy_config(
    model: CausalLM, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int
) -> GenerationConfig:
    """Plain greedy decoding, stopping at the model's and the tokenizer's EOS tokens."""
    eos = model.generation_config.eos_token_id if model.generation_config else None
    eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        stop_strings=[STOP_STRING],
        eos_token_id=sorted(i for i in eos_ids if i is not None),
        pad_token_id=tokenizer.pad_token_id,
    )


def _generate_batch(
    model: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    contexts: list[str],
    config: GenerationConfig,
) -> list[str]:
    inputs = tokenizer(contexts, padding=True, padding_side="left", return_tensors="pt")
    inputs = inputs.to(model.device)
    # PeftModel only gains generate() in its task subclasses, which mypy cannot see here.
    output = model.generate(**inputs, generation_config=config, tokenizer=tokenizer)  # type: ignore[operator]
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [text.split(STOP_STRING)[0] for text in texts]


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
