from __future__ import annotations

import pytest
import torch

from fedkt.errors import ModelError
from fedkt.models import devices, pick_device, pick_dtype

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("explicit", "expected"),
    [("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)],
)
@pytest.mark.parametrize("device", [CPU, CUDA])
def test_explicit_dtype_wins(explicit: str, expected: torch.dtype, device: torch.device) -> None:
    assert pick_dtype(device, explicit) == expected
    assert pick_dtype(device, expected) == expected


def test_bad_dtype_lists_the_known_ones() -> None:
    with pytest.raises(ModelError, match="'fp8' is unknown: use one of float32, bfloat16, float16"):
        pick_dtype(CPU, "fp8")


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_cpu_default_follows_bf16_support(
    monkeypatch: pytest.MonkeyPatch, native: bool, expected: torch.dtype
) -> None:
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: native)
    assert pick_dtype(CPU) == expected


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_cuda_default_follows_bf16_support(
    monkeypatch: pytest.MonkeyPatch, native: bool, expected: torch.dtype
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: native)
    assert pick_dtype(CUDA) == expected


def test_cpu_has_bf16_answers_a_bool() -> None:
    assert isinstance(devices.cpu_has_bf16(), bool)


def test_pick_device() -> None:
    assert pick_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == CPU
    with pytest.raises(ModelError, match="not a torch device"):
        pick_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused() -> None:
    with pytest.raises(ModelError, match="CUDA is not available"):
        pick_device("cuda")
