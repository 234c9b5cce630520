from __future__ import annotations

import copy
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from fedkt.errors import ModelError
from fedkt.models import (
    load_model,
    load_model_and_tokenizer,
    load_tokenizer,
    pick_dtype,
    resolve_cache_dir,
)


@pytest.fixture
def checkpoint(
    tmp_path: Path, tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> Path:
    """A saved 2-layer tiny Llama; its config has no generation pad id."""
    path = tmp_path / "tiny-llama"
    tiny_llama.generation_config.pad_token_id = None
    tiny_llama.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_resolve_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("FEDKT_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("FEDKT_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_cache_dir() == tmp_path / "home" / ".cache" / "fedkt"


def test_load_model_from_directory(checkpoint: Path) -> None:
    model = load_model(str(checkpoint))
    assert len(model.model.layers) == 2
    assert not model.training
    assert model.dtype == pick_dtype(torch.device("cpu"))
    assert model.device.type == "cpu"


def test_load_cut_model_in_float32(checkpoint: Path) -> None:
    model = load_model(f"{checkpoint}@layers=1", dtype="float32", device="cpu")
    assert len(model.model.layers) == 1
    assert model.config.num_hidden_layers == 1
    assert model.dtype == torch.float32


def test_load_model_and_tokenizer_sets_generation_pad(checkpoint: Path) -> None:
    model, tokenizer = load_model_and_tokenizer(str(checkpoint), dtype="float32")
    assert tokenizer.pad_token == "<|pad|>"
    assert tokenizer.padding_side == "right"
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


def test_tokenizer_without_pad_pads_with_eos(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    unpadded = copy.deepcopy(tiny_tokenizer)
    unpadded.pad_token = None
    unpadded.padding_side = "left"
    unpadded.save_pretrained(tmp_path / "tok")
    tokenizer = load_tokenizer(str(tmp_path / "tok"))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.padding_side == "right"


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"))


def test_directory_without_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot load from directory"):
        load_model(str(tmp_path))


def test_uncached_hub_id_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # The hub reads HF_HUB_OFFLINE at import time, before conftest sets it: set the constant too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError, match=r"could not be found locally.*local directory"):
        load_tokenizer("fedkt-tests/no-such-model")
    with pytest.raises(ModelError, match=r"could not be found locally.*local directory"):
        load_model("fedkt-tests/no-such-model@layers=2")
