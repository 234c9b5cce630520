"""LoRA adapters <-> Flower ArrayRecords, and the payload size of a message.

Flower stores each array as NumPy ``.npy`` bytes, but NumPy has no bfloat16. A bf16 tensor
therefore travels as its raw 16-bit patterns (``tensor.view(torch.int16)``, exact, no
widening to fp32) under its own ``stype``, so a generic Flower consumer calling
``Array.numpy()`` gets a clear TypeError instead of silently reading integers. Every other
dtype uses Flower's own NumPy encoding. Key order and dtypes survive the round trip.

Decoding trusts nothing on the wire: the ``.npy`` header is parsed on its own and must
declare a plain numeric dtype (`DTYPES`), a shape that agrees with the Array's own ``dtype``
and ``shape`` fields, and exactly as many data bytes as follow it. Anything else (truncated
or padded bytes, a huge declared shape, object, string or structured dtypes, a header that is
not NumPy's) is one `WireFormatError` naming the array, raised before any allocation.

torch is imported where a tensor is made, not at the top: the SecAgg+ mod
(`fedkt.federation.secagg`) decodes the client's adapter with `record_to_float32` in
Flower's per-message ClientApp process, which must not pay torch's import for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from io import BytesIO
from typing import TYPE_CHECKING, NoReturn

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict
from numpy.lib import format as npy

from fedkt.errors import FedktError, ModelError

if TYPE_CHECKING:
    import torch

Adapter = dict[str, "torch.Tensor"]

BF16_STYPE = "fedkt.bfloat16-bits"
"""``Array.stype`` of a bf16 tensor: ``.npy`` bytes of its int16 bit patterns."""

NUMPY_STYPE = "numpy.ndarray"
"""``Array.stype`` of Flower's own NumPy encoding (``flwr``'s ``SType.NUMPY``)."""

DTYPES = frozenset(
    {"bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64"}
)
"""NumPy dtypes an adapter tensor may travel in (bf16 as int16 bits under `BF16_STYPE`)."""

_TORCH_DTYPES = DTYPES | {"bfloat16"}
"""torch dtypes (their names) an adapter tensor may have."""


class WireFormatError(FedktError):
    """An array on the wire is not what `adapter_to_record` writes (malformed or foreign)."""


def adapter_to_record(adapter: Adapter) -> ArrayRecord:
    """An ArrayRecord holding ``adapter``'s tensors, in its key order, dtypes kept."""
    return ArrayRecord({key: _to_array(key, tensor) for key, tensor in adapter.items()})


def record_to_adapter(
    record: ArrayRecord, *, like: Mapping[str, torch.Tensor] | None = None
) -> Adapter:
    """The CPU tensors of ``record``, in its key order, in the dtypes they were sent in.

    ``like``, when given, is the layout the receiver expects (e.g. the theta it sent): a
    missing or extra key, or another shape or dtype, is a `ModelError` (another SLM or LoRA
    on the other side) rather than a tensor that breaks later.
    """
    adapter = {key: _to_tensor(key, array) for key, array in record.items()}
    if like is not None:
        _check_layout(adapter, like)
    return adapter


def payload_bytes(content: RecordDict) -> int:
    """Bytes a message carries: every array's serialized data (``.npy`` header included) plus
    the serialized config and metric records. Flower's object headers and gRPC framing are
    left out: they are a few dozen bytes per object, whatever the payload."""
    arrays = sum(
        len(array.data) for record in content.array_records.values() for array in record.values()
    )
    records = [*content.config_records.values(), *content.metric_records.values()]
    return arrays + sum(len(record.deflate()) for record in records)


def _to_array(key: str, tensor: torch.Tensor) -> Array:
    import torch

    if str(tensor.dtype).removeprefix("torch.") not in _TORCH_DTYPES:
        raise WireFormatError(
            f"adapter tensor {key!r} has dtype {tensor.dtype}, which fedkt does not send; "
            "adapters travel in float16/bfloat16/float32/float64 (or integer/bool) tensors."
        )
    tensor = tensor.detach().cpu().resolve_conj().resolve_neg()
    if tensor.dtype != torch.bfloat16:
        return Array(tensor.numpy())
    bits = Array(tensor.contiguous().view(torch.int16).numpy())
    return Array(dtype="bfloat16", shape=tuple(tensor.shape), stype=BF16_STYPE, data=bits.data)


def record_to_float32(record: ArrayRecord) -> list[np.ndarray]:
    """`record_to_adapter`'s tensors as fp32 NumPy arrays, in its key order, checked alike,
    without torch (SecAgg+'s mod masks these in the per-message ClientApp process). Exact as
    ``tensor.float()``: a bf16 pattern widens to the fp32 whose low 16 bits are zero."""
    arrays = []
    for key, array in record.items():
        values, bf16 = _to_numpy(key, array)
        if bf16:
            values = (values.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        arrays.append(values.astype(np.float32, copy=False))
    return arrays


def _to_tensor(key: str, array: Array) -> torch.Tensor:
    import torch

    values, bf16 = _to_numpy(key, array)
    tensor = torch.from_numpy(values)
    return tensor.view(torch.bfloat16) if bf16 else tensor


def _to_numpy(key: str, array: Array) -> tuple[np.ndarray, bool]:
    """The checked values of ``array`` (bf16 as its int16 bits) and whether they are bf16."""
    if array.stype not in (NUMPY_STYPE, BF16_STYPE):
        raise WireFormatError(
            f"array {key!r} has serialization type {array.stype!r} that fedkt cannot decode; "
            "both sides must encode adapters with fedkt.federation.codec.adapter_to_record."
        )
    values, sent = _read_npy(key, array.data)
    bf16 = array.stype == BF16_STYPE
    declared = "bfloat16" if bf16 else str(sent)  # as Flower's Array(ndarray) writes it
    if bf16 and sent != np.int16:
        _refuse(key, f"carries {sent} bit patterns for bfloat16 (int16 expected)")
    if array.dtype != declared:
        _refuse(key, f"declares dtype {array.dtype!r} but its data is {declared}")
    shape = array.shape
    if not isinstance(shape, tuple | list) or tuple(shape) != values.shape:
        _refuse(key, f"declares shape {shape!r} but its data has shape {values.shape}")
    return values, bf16


def _read_npy(key: str, data: bytes) -> tuple[np.ndarray, np.dtype]:
    """The array in ``data`` (``.npy`` bytes) and the dtype its header declares, after
    checking that header against the length: nothing is allocated for a shape the bytes
    cannot hold."""
    if not isinstance(data, bytes):
        _refuse(key, f"holds {type(data).__name__}, not bytes")
    stream = BytesIO(data)
    try:
        version = npy.read_magic(stream)
        if version != (1, 0) and version != (2, 0):
            _refuse(key, f"is .npy format {version}, not 1.0 or 2.0")
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran_order, dtype = read_header(stream)
    except WireFormatError:
        raise
    except Exception as err:  # numpy's parser raises ValueError, tokenize.TokenError, ...
        raise WireFormatError(f"array {key!r} is not readable .npy data ({err})") from None
    if dtype.fields is not None or dtype.subdtype is not None or dtype.name not in DTYPES:
        _refuse(key, f"has dtype {dtype.str!r}; only {', '.join(sorted(DTYPES))} travel")
    if any(dim < 0 for dim in shape):
        _refuse(key, f"declares the impossible shape {shape}")
    count, offset = math.prod(shape), stream.tell()
    if len(data) - offset != count * dtype.itemsize:
        _refuse(
            key,
            f"has {len(data) - offset:,} data bytes, but its header declares shape {shape} of "
            f"{dtype.name} ({count * dtype.itemsize:,} bytes): truncated or corrupted",
        )
    values = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    values = values.reshape(shape, order="F" if fortran_order else "C")
    # A writable, C-ordered copy in native byte order (exact: only the order of bytes moves).
    return np.array(values, dtype=dtype.newbyteorder("="), order="C", copy=True), dtype


def _refuse(key: str, problem: str) -> NoReturn:
    raise WireFormatError(
        f"array {key!r} {problem}; both sides must encode adapters with "
        "fedkt.federation.codec.adapter_to_record."
    )


def _check_layout(adapter: Adapter, like: Mapping[str, torch.Tensor]) -> None:
    missing = [key for key in like if key not in adapter]
    extra = [key for key in adapter if key not in like]
    changed = [
        f"{key!r}: {tuple(t.shape)} {t.dtype} vs {tuple(like[key].shape)} {like[key].dtype}"
        for key, t in adapter.items()
        if key in like and (t.shape != like[key].shape or t.dtype != like[key].dtype)
    ]
    if missing or extra or changed:
        raise ModelError(
            f"the adapter received differs from the expected one: {len(missing)} tensors "
            f"missing (e.g. {missing[:1]}), {len(extra)} unexpected (e.g. {extra[:1]}), "
            f"{len(changed)} of another shape or dtype (e.g. {changed[:1]}); both sides must "
            "use the same SLM and LoraSettings."
        )
