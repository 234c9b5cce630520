"""Batched generation with a Hugging Face model: the one transformers generation path in fedkt.

Evaluation (GSM8K exact match) and the FedCoT server and client all generate through
`TransformersBackend`, so padding, batching, stopping and decoding are decided once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from fedkt.errors import DataError, ModelError
from fedkt.generation.chat import encode_prompts, has_chat_template
from fedkt.generation.settings import GenerationSettings, cut_at_stop


class TransformersBackend:
    """Generates with a causal LM (bare or with a peft adapter) and its tokenizer.

    Prompts are tokenised once, ordered longest first and batched `settings.batch_size` at a
    time, so each batch holds prompts of similar length and wastes little compute on padding.
    Batches are left-padded (generation appends on the right), so greedy text does not depend
    on the batch a prompt lands in. The model runs in eval mode (dropout off, LoRA dropout
    included) under ``torch.inference_mode``; the caller's train/eval mode is restored.

    With ``chat_template`` each prompt is the user's turn of a chat in the tokenizer's own
    template (`fedkt.generation.chat`), for instruction-tuned models; `chat_template` then
    says whether it is applied (False for a tokenizer without a template: raw prompts).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        chat_template: bool = False,
    ) -> None:
        if tokenizer.pad_token_id is None:
            raise ModelError(
                f"tokenizer {tokenizer.name_or_path!r} has no pad token, needed for batched "
                "generation; load it with fedkt.models.load_tokenizer, which sets one"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.chat_template = chat_template and has_chat_template(tokenizer)

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
        """The continuation of each prompt, in the order given, cut at `settings.stop`."""
        if not prompts:
            return []
        encoded = self._encode(prompts)
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        config = self._config(settings)
        texts = [""] * len(prompts)
        with torch.inference_mode(), eval_mode(self.model), _seeded(settings, self.model):
            for start in range(0, len(order), settings.batch_size):
                batch = order[start : start + settings.batch_size]
                outputs = self._generate_batch([encoded[i] for i in batch], config, settings)
                for index, text in zip(batch, outputs, strict=True):
                    texts[index] = cut_at_stop(text, settings.stop)
        return texts

    def _encode(self, prompts: Sequence[str]) -> list[list[int]]:
        encoded = encode_prompts(self.tokenizer, prompts, chat_template=self.chat_template)
        empty = [i for i, ids in enumerate(encoded) if not ids]
        if empty:
            raise DataError(
                f"prompts at positions {empty[:10]} encode to no tokens: a model cannot "
                "continue nothing; drop empty prompts or give them some text"
            )
        return encoded

    def _config(self, settings: GenerationSettings) -> GenerationConfig:
        """The decoding rule of `settings`, stopping at the model's and tokenizer's EOS.

        Unset fields would be filled from the checkpoint's ``generation_config.json``, so
        the repetition penalty (and, when sampling, top-k) is pinned off, as in vLLM.
        """
        sampling = (
            {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": 0}
            if settings.sampling
            else {}
        )
        return GenerationConfig(
            max_new_tokens=settings.max_new_tokens,
            do_sample=settings.sampling,
            num_beams=1,
            repetition_penalty=1.0,
            eos_token_id=_eos_ids(self.model, self.tokenizer),
            pad_token_id=self.tokenizer.pad_token_id,
            **sampling,
        )

    def _generate_batch(
        self, batch: list[list[int]], config: GenerationConfig, settings: GenerationSettings
    ) -> list[str]:
        input_ids, attention_mask = _left_pad(batch, self.tokenizer.pad_token_id)
        width = input_ids.shape[1]
        stop = [_StopInNewText(self.tokenizer, settings.stop, width)] if settings.stop else []
        device = _device(self.model)
        # PeftModel only gains generate() in its task subclasses, which mypy cannot see.
        output = self.model.generate(  # type: ignore[operator]
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            generation_config=config,
            stopping_criteria=StoppingCriteriaList(stop),
        )
        new_tokens = output[:, width:]
        texts: list[str] = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return texts


class _StopInNewText(StoppingCriteria):
    """Stops a row once its generated text contains a stop string.

    transformers' own ``stop_strings`` also match across the end of the prompt (a prompt
    ending "Answer:" and the stop "::" stop at the first ":"), which vLLM never does; this
    looks at the new text only, the text that `cut_at_stop` cuts.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str], width: int):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.width = width

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object
    ) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.width :], skip_special_tokens=True)
        done = [any(s in text for s in self.stop) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def _left_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), padded on the left to the longest sequence."""
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


def _eos_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The model's EOS ids (chat models often have several) and the tokenizer's."""
    generation = getattr(model, "generation_config", None)
    eos = generation.eos_token_id if generation is not None else None
    ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    return sorted(i for i in ids if i is not None)


def _device(model: nn.Module) -> torch.device:
    """Where the inputs go: the device of the first parameter (the input embedding)."""
    return next(model.parameters()).device


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run with dropout off (LoRA dropout included), then restore the caller's mode.

    Training loops generate and evaluate mid-run: doing it in train mode would add dropout
    noise, and leaving the model in eval mode would silently switch dropout off for the rest
    of training. `fedkt.evaluation` uses this one too.
    """
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def _seeded(settings: GenerationSettings, model: nn.Module) -> Iterator[None]:
    """Seed sampling from `settings.seed`, leaving the caller's RNG state as it was.

    transformers samples from torch's global RNG, so the state is forked (CPU and the model's
    GPUs) and restored afterwards. Greedy decoding draws nothing and touches nothing.
    """
    gpus = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=gpus, enabled=settings.sampling):
        if settings.sampling:
            torch.manual_seed(settings.seed)
        yield
