"""Shared fixtures: a tiny tokenizer and tiny randomly initialised Llama models.

Nothing here touches the network or the embedded GGUF, so the suite stays fast and offline.
"""

from __future__ import annotations

import os

# Before transformers/huggingface_hub are imported: they read these once, at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# Tiny models run faster on one thread, and the suite shares 2 cores with nothing to gain.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

_CORPUS = [
    "Question: Which gas do plants absorb from the air?\nAnswer: carbon dioxide",
    "Question: What is the boiling point of water at sea level?\nAnswer: 100 degrees Celsius",
    "Article: The team won the final match of the season.\nTopic: Sports",
    "Article: Shares rose after the bank reported record profits.\nTopic: Business",
    "Article: Scientists launched a new satellite to study the sun.\nTopic: Science and Technology",
    "Article: Leaders met to discuss the peace treaty.\nTopic: World",
    "Natalia sold 48 clips in April and half as many in May. #### 72",
    "oxygen nitrogen hydrogen helium sunlight energy food water rock soil",
]


def build_tiny_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained in milliseconds on a few sentences (GPT-2 style spaces)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>"
    )


def build_tiny_llama(vocab_size: int, n_layers: int = 2, seed: int = 0) -> LlamaForCausalLM:
    """A random Llama small enough to train a few steps in well under a second."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=0,
        pad_token_id=1,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer()


@pytest.fixture
def tiny_llama(tiny_tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    return build_tiny_llama(len(tiny_tokenizer))


@pytest.fixture
def make_tiny_llama(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> Callable[..., LlamaForCausalLM]:
    def make(n_layers: int = 2, seed: int = 0) -> LlamaForCausalLM:
        return build_tiny_llama(len(tiny_tokenizer), n_layers=n_layers, seed=seed)

    return make


@pytest.fixture
def shared_data_dir() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"local datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _offline_and_isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never reach a hub; keep caches per test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FEDKT_CACHE_DIR", str(tmp_path / "fedkt-cache"))
