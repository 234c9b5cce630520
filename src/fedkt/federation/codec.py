"""LoRA adapters <-> Flower ArrayRecords, and the payload size of a message.

Flower stores each array as NumPy ``.npy`` bytes, but NumPy has no bfloat16. A bf16 tensor
therefore travels as its raw 16-bit patterns (``tensor.view(torch.int16)``, exact, no
widening to fp32) under its own ``stype``, so a generic Flower consumer calling
``Array.numpy()`` gets a clear TypeError instead of silently reading integers. Every other
dtype uses Flower's own NumPy encoding. Key order and dtypes survive the round trip.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from fedkt.errors import FedktError

Adapter = dict[str, torch.Tensor]

BF16_STYPE = "fedkt.bfloat16-bits"
"""``Array.stype`` of a bf16 tensor: ``.npy`` bytes of its int16 bit patterns."""


def adapter_to_record(adapter: Adapter) -> ArrayRecord:
    """An ArrayRecord holding ``adapter``'s tensors, in its key order, dtypes kept."""
    return ArrayRecord({key: _to_array(tensor) for key, tensor in adapter.items()})


def record_to_adapter(record: ArrayRecord) -> Adapter:
    """The CPU tensors of ``record``, in its key order, in the dtypes they were sent in."""
    return {key: _to_tensor(key, array) for key, array in record.items()}


def payload_bytes(content: RecordDict) -> int:
    """Bytes a message carries: every array's serialized data (``.npy`` header included) plus
    the serialized config and metric records. Flower's object headers and gRPC framing are
    left out: they are a few dozen bytes per object, whatever the payload."""
    arrays = sum(
        len(array.data) for record in content.array_records.values() for array in record.values()
    )
    records = [*content.config_records.values(), *content.metric_records.values()]
    return arrays + sum(len(record.deflate()) for record in records)


def _to_array(tensor: torch.Tensor) -> Array:
    tensor = tensor.detach().cpu()
    if tensor.dtype != torch.bfloat16:
        return Array(tensor.numpy())
    bits = Array(tensor.contiguous().view(torch.int16).numpy())
    return Array(dtype="bfloat16", shape=tuple(tensor.shape), stype=BF16_STYPE, data=bits.data)


def _to_tensor(key: str, array: Array) -> torch.Tensor:
    if array.stype == BF16_STYPE:
        bits = np.load(BytesIO(array.data), allow_pickle=False)
        return torch.from_numpy(bits).view(torch.bfloat16)
    try:
        return torch.from_numpy(array.numpy())
    except TypeError as err:  # another stype: not written by adapter_to_record
        raise FedktError(
            f"array {key!r} has serialization type {array.stype!r} that fedkt cannot decode; "
            "both sides must encode adapters with fedkt.federation.codec.adapter_to_record."
        ) from err
