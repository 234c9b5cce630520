"""Where a model runs and in which precision.

bf16 is the default wherever the hardware has native kernels for it: on this project's CPUs it
trains 1.5–2x faster than fp32 (measured with the 135M model) and it halves memory on a GPU.
"""

from __future__ import annotations

import torch

from fedkt.errors import ModelError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def pick_device(explicit: str | torch.device | None = None) -> torch.device:
    """The explicit device if given, else CUDA when available, else CPU."""
    if explicit is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(explicit)
    except (RuntimeError, TypeError) as err:
        raise ModelError(f"device {explicit!r} is not a torch device: use 'cpu' or 'cuda'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {explicit!r} was asked for but CUDA is not available: use 'cpu'")
    return device


def pick_dtype(device: torch.device, explicit: str | torch.dtype | None = None) -> torch.dtype:
    """The explicit dtype if given, else bf16 where the device supports it natively.

    CPU: bf16 when oneDNN has bf16 kernels for this CPU, else fp32 (emulated bf16 is slower).
    CUDA: bf16 when the GPU supports it, else fp16.
    """
    if isinstance(explicit, torch.dtype):
        return explicit
    if explicit is not None:
        if explicit not in DTYPES:
            raise ModelError(f"dtype {explicit!r} is unknown: use one of {', '.join(DTYPES)}")
        return DTYPES[explicit]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return torch.float32


def cpu_has_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels for this CPU (the check torch's own tests use)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
