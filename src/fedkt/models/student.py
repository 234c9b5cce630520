"""Students cut from a larger model: keep its first k decoder layers.

A cut student shares the teacher's tokenizer and embeddings, which is what logit-level
transfer (FedCoLLM's KD) needs. Its output is poor until fine-tuned or distilled
(ARC-Easy near chance without repair), but it is the cheapest same-family SLM there is.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedModel

from fedkt.errors import ModelError
from fedkt.models.integrity import FILES, find_damage, record_files

STUDENT_MANIFEST = "fedkt-student.json"
"""Written last into a healed student's folder: its settings, fit report and, under ``files``,
the size and sha256 of each file written (see `fedkt.models.integrity`)."""


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


def cached_student(cache_dir: Path, teacher: str, layers: int) -> Path:
    """The folder of the healed student ``fedkt make-student`` cached, checked whole.

    Never built implicitly (it takes minutes): a missing or damaged student is a ModelError
    naming the folder and the command that (re)builds it.
    """
    path = student_dir(cache_dir, teacher, layers)
    if not (path / "config.json").is_file():
        raise ModelError(
            f"no healed {layers}-layer student of {teacher!r} in {cache_dir}: build it once "
            f"with `{rebuild_command(cache_dir, teacher, layers)}`"
        )
    damage = student_damage(path)
    if damage is not None:
        raise ModelError(
            f"the healed {layers}-layer student of {teacher!r} in {path} is damaged ({damage}): "
            f"delete the folder {path} and rebuild it with "
            f"`{rebuild_command(cache_dir, teacher, layers)}`"
        )
    return path


def student_damage(path: Path) -> str | None:
    """What is wrong with the cached student in `path`, or None when it is whole. A manifest
    from before sizes were recorded gets them, once the safetensors headers add up."""
    manifest = _read_manifest(path)
    if manifest is None:
        return f"{STUDENT_MANIFEST} is missing or unreadable (the build did not finish)"
    damage = find_damage(path, manifest.get(FILES))
    if damage is None and FILES not in manifest:
        record_files(path / STUDENT_MANIFEST, manifest)
    return damage


def rebuild_command(cache_dir: Path, teacher: str, layers: int) -> str:
    """The ``fedkt make-student`` command that builds this student again, with the settings its
    manifest recorded and the cache folder when it is not the one fedkt picks by default."""
    from fedkt.models.loading import resolve_cache_dir  # loading imports this module

    command = f"fedkt make-student --teacher {teacher} --layers {layers}"
    manifest = _read_manifest(student_dir(cache_dir, teacher, layers)) or {}
    if isinstance(manifest.get("lens_tokens"), int):
        command += f" --lens-tokens {manifest['lens_tokens']}"
    if isinstance(manifest.get("kd_tokens"), int) and manifest["kd_tokens"] > 0:
        command += f" --kd-tokens {manifest['kd_tokens']}"
    if os.path.abspath(cache_dir) != os.path.abspath(resolve_cache_dir()):
        command = f"FEDKT_CACHE_DIR={cache_dir} {command}"
    return command


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((path / STUDENT_MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None
