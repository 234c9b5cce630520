"""Shared fixtures and helpers: a tiny tokenizer and tiny randomly initialised Llama models,
the privacy tests' word tokenizer and kit, and the capture of what a client sends.

Nothing here touches the network or the embedded GGUF, so the suite stays fast and offline.
"""

from __future__ import annotations

import os

# Before transformers/huggingface_hub are imported: they read these once, at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import pytest
import torch
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from fedkt.privacy import PerturbationKit, build_kit

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


def save_tiny_pair(root: Path, tokenizer: PreTrainedTokenizerFast) -> tuple[Path, Path]:
    """A 3-layer LLM and a 2-layer SLM (one tokenizer) saved under ``root/llm`` and
    ``root/slm``: simulated and deployed clients load them by path, as a real checkpoint."""
    for name, layers, seed in (("llm", 3, 1), ("slm", 2, 0)):
        build_tiny_llama(len(tokenizer), n_layers=layers, seed=seed).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root / "llm", root / "slm"


@pytest.fixture
def tiny_pair(tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast) -> tuple[Path, Path]:
    """`save_tiny_pair` in this test's folder."""
    return save_tiny_pair(tmp_path, tiny_tokenizer)


@pytest.fixture(autouse=True)
def _offline_and_isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never reach a hub; keep caches per test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FEDKT_CACHE_DIR", str(tmp_path / "fedkt-cache"))


# ---- privacy tests: a tokenizer that holds whole words, and its perturbation kit ----


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """The privacy tests' tokenizer: 600 entries (the default 300-entry one holds no whole
    words, so no word candidate set)."""
    return build_tiny_tokenizer(600)


@pytest.fixture(scope="module")
def kit(tokenizer: PreTrainedTokenizerFast) -> PerturbationKit:
    """The privacy tests' candidate sets, over random (seeded) embeddings."""
    emb = torch.randn(len(tokenizer), 16, generator=torch.Generator().manual_seed(0))
    return build_kit(tokenizer, emb)


# ---- federation tests: capture what a client sends, search it for private text ----


@dataclass(frozen=True)
class Recorder:
    """A client mod keeping every message the client sends (pickled, one file each): Ray runs
    clients in other processes, so the capture goes through the file system."""

    directory: Path

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        out = call_next(msg, context)
        (self.directory / f"{uuid4().hex}.pkl").write_bytes(pickle.dumps(out))
        return out

    def messages(self) -> list[Message]:
        return [pickle.loads(p.read_bytes()) for p in sorted(self.directory.iterdir())]


def find_leaks(msg: Message, needles: Sequence[str]) -> list[str]:
    """The ``needles`` found in ``msg``: in its record names and keys, its decoded config and
    metric values, the bytes of its arrays, and the whole message as Flower serializes it."""
    content = msg.content
    strings = [*content, *(key for record in content.values() for key in record)]
    for record in [*content.config_records.values(), *content.metric_records.values()]:
        for value in record.values():
            items = value if isinstance(value, list) else [value]
            strings += [
                v.decode(errors="ignore") if isinstance(v, bytes) else str(v) for v in items
            ]
    arrays = b"".join(a.data for record in content.array_records.values() for a in record.values())
    wire = b"".join(obj.deflate() for obj in get_all_nested_objects(msg).values())
    return [
        needle
        for needle in needles
        if any(needle in s for s in strings) or needle.encode() in arrays or needle.encode() in wire
    ]
