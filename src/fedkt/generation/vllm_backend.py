"""Generation with vLLM, the optional fast path for a server LLM on a GPU.

vLLM is an optional extra (``pip install 'fedkt[vllm]'``) and needs CUDA. It is imported
lazily, inside `vllm_available` and `VllmBackend`, never when fedkt is imported, so fedkt works
(and its tests run) without it. This module is NOT covered by the test suite: vLLM cannot be
installed on the CPU-only development machine. Its contract is the `Backend` one, and it
decodes by the same rule as `TransformersBackend` (greedy at temperature 0, top-k off,
repetition penalty 1, text cut at the first stop string); greedy text can still differ from
transformers' in the last bits of the logits (different kernels).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence
from typing import Any

import torch

from fedkt.errors import ModelError
from fedkt.generation.chat import encode_prompts, has_chat_template
from fedkt.generation.settings import GenerationSettings, cut_at_stop


@functools.cache
def vllm_available() -> bool:
    """True when vLLM imports and CUDA is available (vLLM does not run on CPU here).

    CUDA is checked first, so a CPU machine never pays for importing vLLM.
    """
    if not torch.cuda.is_available():
        return False
    try:
        importlib.import_module("vllm")
    except Exception:  # a broken install must fall back to transformers, not crash
        return False
    return True


class VllmBackend:
    """A vLLM engine over the checkpoint at `model_path` (a local directory or hub id).

    `engine_options` go to ``vllm.LLM`` unchanged (e.g. ``dtype="bfloat16"``,
    ``gpu_memory_utilization=0.85``, ``max_model_len=4096``). vLLM batches continuously
    inside one call, so `settings.batch_size` only sets how often `generate_responses`
    checkpoints; give it a few hundred with this backend.

    With ``chat_template`` each prompt is the user's turn of a chat in the model tokenizer's
    own template (`fedkt.generation.chat`), passed to vLLM as token ids so no second BOS is
    added; `chat_template` then says whether it is applied.
    """

    def __init__(self, model_path: str, *, chat_template: bool = False, **engine_options: Any):
        try:
            vllm = importlib.import_module("vllm")
        except ImportError as error:
            raise ModelError(
                "vLLM is not installed: install the optional extra with "
                "pip install 'fedkt[vllm]' (needs CUDA), or use TransformersBackend"
            ) from error
        self._vllm = vllm
        self.model_path = model_path
        self._llm = vllm.LLM(model=model_path, **engine_options)
        self._tokenizer = self._llm.get_tokenizer() if chat_template else None
        self.chat_template = self._tokenizer is not None and has_chat_template(self._tokenizer)

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
        """The continuation of each prompt, in the order given, cut at `settings.stop`."""
        if not prompts:
            return []
        params = [self._sampling_params(settings, i) for i in range(len(prompts))]
        inputs: list[Any] = list(prompts)
        if self.chat_template and self._tokenizer is not None:
            ids = encode_prompts(self._tokenizer, prompts, chat_template=True)
            inputs = [{"prompt_token_ids": row} for row in ids]
        outputs = self._llm.generate(inputs, params, use_tqdm=False)
        if len(outputs) != len(prompts):
            raise ModelError(
                f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts from "
                f"{self.model_path!r}; check the vLLM version (fedkt expects one per prompt)"
            )
        return [cut_at_stop(output.outputs[0].text, settings.stop) for output in outputs]

    def _sampling_params(self, settings: GenerationSettings, index: int) -> Any:
        """One prompt's parameters: a distinct seed per prompt, so sampled prompts do not
        share their random draws, and the same seeds on every call."""
        return self._vllm.SamplingParams(
            n=1,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=-1,
            repetition_penalty=1.0,
            max_tokens=settings.max_new_tokens,
            stop=list(settings.stop) or None,
            seed=settings.seed + index if settings.sampling else None,
        )
