"""Fixtures shared by the privacy tests (imported by name: a nested conftest.py would clash
with the top-level one under pytest's default import mode)."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from conftest import build_tiny_tokenizer
from fedkt.privacy import PerturbationKit, build_kit


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """600 entries: the default 300-entry tiny tokenizer holds no whole words."""
    return build_tiny_tokenizer(600)


@pytest.fixture(scope="module")
def kit(tokenizer: PreTrainedTokenizerFast) -> PerturbationKit:
    """Candidate sets over random (seeded) embeddings."""
    emb = torch.randn(len(tokenizer), 16, generator=torch.Generator().manual_seed(0))
    return build_kit(tokenizer, emb)
