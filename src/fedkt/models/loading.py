"""Load any causal LM and its tokenizer by one name: an embedded model (``EMBEDDED_MODELS``), a
local directory or a hub id, optionally cut to its first layers (``"smollm2-135m@layers=8"``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from huggingface_hub import is_offline_mode
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedkt.errors import ModelError
from fedkt.models.devices import pick_device, pick_dtype
from fedkt.models.embedded import embedded_model_dir
from fedkt.models.names import EMBEDDED_MODELS, ModelSpec, parse_model_name
from fedkt.models.student import cached_student, keep_first_layers


def resolve_cache_dir(explicit: str | Path | None = None) -> Path:
    """Where fedkt keeps converted models: explicit > ``$FEDKT_CACHE_DIR`` > ``~/.cache/fedkt``."""
    chosen = explicit if explicit is not None else os.environ.get("FEDKT_CACHE_DIR")
    return Path(chosen).expanduser() if chosen else Path.home() / ".cache" / "fedkt"


def load_tokenizer(name: str, *, cache_dir: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of ``name``, with a pad token (EOS if it has none) and right padding.

    Right padding is what answer-only training and log-likelihood scoring expect; batched
    generation switches to left padding itself.
    """
    spec = parse_model_name(name)
    source = _source(spec, cache_dir)
    with _load_errors(name, source):
        tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(
                f"tokenizer of {name!r} has neither a pad nor an EOS token: "
                "use a checkpoint whose tokenizer defines an EOS token"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_model(
    name: str,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | Path | None = None,
) -> PreTrainedModel:
    """The causal LM ``name`` in eval mode, on ``device`` in ``dtype`` (see pick_device/dtype)."""
    spec = parse_model_name(name)
    target = pick_device(device)
    source = _source(spec, cache_dir)
    with _load_errors(name, source):
        model = AutoModelForCausalLM.from_pretrained(source, dtype=pick_dtype(target, dtype))
    if spec.layers is not None:
        keep_first_layers(model, spec.layers)  # before moving: the cut layers never reach a GPU
    # transformers wraps Module.to with functools.wraps, which mypy misreads as unbound.
    return model.to(target).eval()  # type: ignore[arg-type]


def load_model_and_tokenizer(
    name: str,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Both, with the model's generation pad id set to the tokenizer's (generate() needs one)."""
    tokenizer = load_tokenizer(name, cache_dir=cache_dir)
    model = load_model(name, dtype=dtype, device=device, cache_dir=cache_dir)
    generation = model.generation_config
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _source(spec: ModelSpec, cache_dir: str | Path | None) -> str:
    """What to give ``from_pretrained``: a converted embedded model, a directory or a hub id."""
    if spec.healed:
        return str(_healed_student(spec, resolve_cache_dir(cache_dir)))
    if spec.is_embedded:
        return str(embedded_model_dir(resolve_cache_dir(cache_dir), spec.base))
    if Path(spec.base).expanduser().is_dir():
        return str(Path(spec.base).expanduser())
    if spec.base.startswith(("/", ".", "~")):
        raise ModelError(
            f"model directory {spec.base!r} does not exist: pass a directory holding config.json "
            f"and weights (e.g. written by save_pretrained), a hub id or an embedded name "
            f"({_embedded_names()})"
        )
    return spec.base


def _embedded_names() -> str:
    return ", ".join(repr(name) for name in EMBEDDED_MODELS)


def _healed_student(spec: ModelSpec, cache_dir: Path) -> Path:
    """The student ``fedkt make-student`` cached, checked whole; never built implicitly."""
    assert spec.layers is not None  # parse_model_name guarantees it for healed names
    return cached_student(cache_dir, spec.base, spec.layers)


@contextmanager
def _load_errors(name: str, source: str) -> Iterator[None]:
    """Turn transformers' load failures into a ModelError that says what to do."""
    try:
        yield
    except (OSError, ValueError) as err:
        raise ModelError(_load_failure(name, source, err)) from err


def _load_failure(name: str, source: str, err: Exception) -> str:
    first_line = str(err).partition("\n")[0]
    if Path(source).is_dir():
        return (
            f"model {name!r}: cannot load from directory {source} ({first_line}); it must hold "
            "a checkpoint written by save_pretrained (config.json, weights, tokenizer files)"
        )
    if is_offline_mode():
        return (
            f"model {name!r}: hub id {source!r} could not be found locally (HF_HUB_OFFLINE=1 and "
            "it is not in the Hugging Face cache). Pass a local directory holding config.json "
            f"and weights (e.g. written by save_pretrained) or an embedded name "
            f"({_embedded_names()}), "
            "or unset HF_HUB_OFFLINE to download it"
        )
    return (
        f"model {name!r}: hub id {source!r} could not be loaded from the Hugging Face Hub "
        f"({first_line}); check the id and network access, or pass a local directory"
    )
