"""What every evaluator needs from the model object, whatever wraps it."""

from __future__ import annotations

from peft import PeftModel
from transformers import PreTrainedModel

from fedkt.generation.transformers_backend import eval_mode

__all__ = ["CausalLM", "eval_mode"]

CausalLM = PreTrainedModel | PeftModel
"""A Hugging Face causal LM, bare or with a peft adapter."""
