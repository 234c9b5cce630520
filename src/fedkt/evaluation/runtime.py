"""What every evaluator needs from the model object, whatever wraps it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from peft import PeftModel
from transformers import PreTrainedModel

CausalLM = PreTrainedModel | PeftModel
"""A Hugging Face causal LM, bare or with a peft adapter."""


@contextmanager
def eval_mode(model: CausalLM) -> Iterator[None]:
    """Evaluate with dropout off (LoRA dropout included), then restore the caller's mode.

    Training loops evaluate mid-run; scoring in train mode would add dropout noise to every
    log-likelihood, and leaving the model in eval mode would silently switch dropout off for
    the rest of training.
    """
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
