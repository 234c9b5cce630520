"""Students cut from a larger model: keep its first k decoder layers.

A cut student shares the teacher's tokenizer and embeddings, which is what logit-level
transfer (FedCoLLM's KD) needs. Its output is poor until fine-tuned or distilled
(ARC-Easy near chance without repair), but it is the cheapest same-family SLM there is.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedModel

from fedkt.errors import ModelError


def keep_first_layers(model: PreTrainedModel, k: int) -> PreTrainedModel:
    """Drop every decoder layer after the first ``k``, in place, and update the config.

    Works for Llama-like models (decoder layers at ``model.model.layers``). The config is updated
    so that caches, ``save_pretrained`` and a reload all see ``k`` layers.
    """
    body: Any = getattr(model, "model", None)
    layers = getattr(body, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ModelError(
            f"cannot cut {type(model).__name__} to its first layers: only Llama-like models "
            "with decoder layers at model.model.layers are supported; use such a model "
            "(e.g. 'smollm2-135m@layers=8') or a ready-made small model"
        )
    if not 1 <= k <= len(layers):
        raise ModelError(
            f"cannot keep the first {k} layers of {type(model).__name__}: it has "
            f"{len(layers)}; choose layers between 1 and {len(layers)}"
        )
    body.layers = layers[:k]
    model.config.num_hidden_layers = k
    if getattr(model.config, "layer_types", None) is not None:
        model.config.layer_types = model.config.layer_types[:k]
    return model


def student_dir(cache_dir: Path, teacher: str, layers: int) -> Path:
    """Where ``fedkt make-student`` keeps the healed `layers`-layer student of `teacher`."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", teacher.strip("/~."))
    return cache_dir / "students" / f"{slug}-layers{layers}"
