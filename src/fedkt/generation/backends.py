"""The backend contract and the choice between transformers and vLLM."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from torch import nn
from transformers import PreTrainedTokenizerBase

from fedkt.errors import ModelError
from fedkt.generation.settings import GenerationSettings
from fedkt.generation.transformers_backend import TransformersBackend
from fedkt.generation.vllm_backend import VllmBackend, vllm_available

log = logging.getLogger(__name__)


class Backend(Protocol):
    """Something that continues prompts.

    `generate` returns exactly one text per prompt, in the order of `prompts`, each already
    cut at `settings.stop`. Callers that need ids (`generate_responses`) attach them
    themselves, so a backend never sees or reorders them.
    """

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]: ...


def make_backend(
    model: nn.Module | None,
    tokenizer: PreTrainedTokenizerBase | None,
    *,
    prefer_vllm: bool = True,
    model_path: str | None = None,
    chat_template: bool = False,
) -> Backend:
    """vLLM on `model_path` when preferred, given and available, else transformers.

    Pass ``model=None, tokenizer=None`` to avoid loading the model twice when vLLM will
    serve it; then vLLM must be available or this raises `ModelError`. With
    ``chat_template`` prompts go through the tokenizer's chat template where it has one
    (`fedkt.generation.chat`; `applies_chat_template` tells whether it does).
    """
    if prefer_vllm and model_path is not None and vllm_available():
        log.info("generating with vLLM from %s", model_path)
        return VllmBackend(model_path, chat_template=chat_template)
    if model is None or tokenizer is None:
        why = "no model_path was given" if model_path is None else "vLLM is not available"
        raise ModelError(
            f"cannot generate: {why} and no transformers model and tokenizer were passed; "
            "load them with fedkt.models.load_model_and_tokenizer, or install "
            "'fedkt[vllm]' on a CUDA machine and pass model_path"
        )
    if prefer_vllm and model_path is not None:
        log.info("vLLM not available (needs 'fedkt[vllm]' and CUDA): using transformers")
    return TransformersBackend(model, tokenizer, chat_template=chat_template)


def applies_chat_template(backend: Backend) -> bool:
    """True when ``backend`` wraps every prompt in its model's chat template (a fedkt
    backend built with ``chat_template=True`` over a tokenizer that has one)."""
    return getattr(backend, "chat_template", False) is True
