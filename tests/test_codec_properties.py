"""Properties of the adapter codec (`fedkt.federation.codec`) on arbitrary input.

Round trips are exact to the bit for any names, shapes (empty, 0-d, odd) and fp32/bf16/fp16
values (NaN payloads, -0.0, subnormals included); anything malformed on the wire is refused
with one `WireFormatError` (a `FedktError`) naming the array, never a NumPy or torch error and
never a tensor other than the one sent.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.lib import format as npy

from fedkt.errors import FedktError, ModelError
from fedkt.federation.codec import (
    BF16_STYPE,
    WireFormatError,
    adapter_to_record,
    record_to_adapter,
)

PROPERTIES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# bit patterns: every value a dtype can hold, NaN payloads and -0.0 included
_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
_NP_BITS = {torch.int32: np.int32, torch.int16: np.int16}

shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)
names = st.text(min_size=0, max_size=20)


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = draw(st.sampled_from(list(_BITS)))
    shape = draw(shapes)
    bits_dtype = _BITS[dtype]
    info = np.iinfo(_NP_BITS[bits_dtype])
    count = int(np.prod(shape))
    raw = draw(st.lists(st.integers(info.min, info.max), min_size=count, max_size=count))
    tensor = torch.tensor(raw, dtype=bits_dtype).reshape(shape).view(dtype)
    if tensor.dim() >= 2 and draw(st.booleans()):
        tensor = tensor.transpose(0, -1)  # non-contiguous (Fortran order on the wire)
    return tensor


adapters = st.dictionaries(names, tensors(), max_size=5)


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().view(_BITS[tensor.dtype])


@PROPERTIES
@given(adapters)
def test_any_adapter_round_trips_bit_for_bit(adapter: dict[str, torch.Tensor]) -> None:
    decoded = record_to_adapter(adapter_to_record(adapter), like=adapter)
    assert list(decoded) == list(adapter)
    for key, tensor in adapter.items():
        assert decoded[key].dtype == tensor.dtype and decoded[key].shape == tensor.shape
        assert torch.equal(_bits(decoded[key]), _bits(tensor)), key
        assert decoded[key].is_contiguous()


def _one(tensor: torch.Tensor) -> Array:
    return adapter_to_record({"w": tensor})["w"]


def _decode(array: Array) -> torch.Tensor:
    return record_to_adapter(ArrayRecord({"w": array}))["w"]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


@PROPERTIES
@given(tensors(), st.data())
def test_truncated_or_padded_bytes_are_refused(tensor: torch.Tensor, data: st.DataObject) -> None:
    array = _one(tensor)
    cut = data.draw(st.integers(0, len(array.data) - 1))
    extra = data.draw(st.binary(min_size=1, max_size=16))
    for damaged in (array.data[:cut], array.data + extra):
        with pytest.raises(WireFormatError, match="array 'w' "):
            _decode(Array(array.dtype, array.shape, array.stype, damaged))


@PROPERTIES
@given(tensors(), st.data())
def test_a_corrupted_header_is_refused_or_harmless(
    tensor: torch.Tensor, data: st.DataObject
) -> None:
    """A changed byte in the ``.npy`` header (magic, dtype, shape, order) never yields another
    tensor: it is refused, or it changed nothing that matters (e.g. padding)."""
    array = _one(tensor)
    header = len(array.data) - tensor.numel() * tensor.element_size()
    position = data.draw(st.integers(0, header - 1))
    byte = data.draw(st.integers(0, 255))
    damaged = bytearray(array.data)
    damaged[position] = byte
    try:
        decoded = _decode(Array(array.dtype, array.shape, array.stype, bytes(damaged)))
    except WireFormatError:
        return
    assert _same(decoded, tensor)


@PROPERTIES
@given(tensors(), st.text(max_size=12), shapes)
def test_metadata_that_disagrees_with_the_data_is_refused(
    tensor: torch.Tensor, dtype: str, shape: tuple[int, ...]
) -> None:
    array = _one(tensor)
    for lie in (Array(dtype, array.shape, array.stype, array.data),
                Array(array.dtype, shape, array.stype, array.data)):  # fmt: skip
        if (lie.dtype, tuple(lie.shape)) == (array.dtype, tuple(array.shape)):
            assert _same(_decode(lie), tensor)
        else:
            with pytest.raises(WireFormatError, match="array 'w' declares"):
                _decode(lie)


@PROPERTIES
@given(st.binary(max_size=200), st.sampled_from(["numpy.ndarray", BF16_STYPE]))
def test_arbitrary_bytes_are_refused(data: bytes, stype: str) -> None:
    with pytest.raises(WireFormatError):
        _decode(Array("float32", (1,), stype, data))


def _npy_with_header(header: dict[str, object], data: bytes) -> bytes:
    stream = BytesIO()
    npy.write_array_header_1_0(stream, header)
    return stream.getvalue() + data


@PROPERTIES
@given(
    st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=4).map(tuple),
    st.binary(max_size=64),
)
def test_a_huge_or_impossible_declared_shape_is_refused_without_allocating(
    shape: tuple[int, ...], data: bytes
) -> None:
    """The header's shape is checked against the bytes that follow it, before any array is
    allocated: a header claiming 2**62 floats is refused at once, not a MemoryError."""
    raw = _npy_with_header({"descr": "<f4", "fortran_order": False, "shape": shape}, data)
    count = int(np.prod(shape, dtype=object))
    if min(shape) >= 0 and count * 4 == len(data):
        assert _decode(Array("float32", shape, "numpy.ndarray", raw)).shape == shape
        return
    with pytest.raises(WireFormatError, match="array 'w' "):
        _decode(Array("float32", shape, "numpy.ndarray", raw))


@pytest.mark.parametrize(
    "values",
    [
        np.array(["ab", "c"]),  # unicode strings
        np.array([b"ab"]),  # bytes
        np.array([1 + 2j], dtype=np.complex64),
        np.array([1, 2], dtype=np.uint16),
        np.array(["2020-01-01"], dtype="datetime64[D]"),
        np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]),  # structured
        np.zeros(2, dtype=np.longdouble),
        np.zeros(2, dtype="V4"),
    ],
    ids=lambda v: str(v.dtype),
)
def test_dtypes_no_adapter_has_are_refused(values: np.ndarray) -> None:
    with pytest.raises(WireFormatError, match="array 'w' has dtype"):
        _decode(Array(values))


def test_bf16_bits_in_another_dtype_are_refused_not_reinterpreted() -> None:
    """fp32 bytes under the bf16 stype would view as twice the values: refused."""
    fake = Array(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(WireFormatError, match="float32 bit patterns for bfloat16"):
        _decode(Array("bfloat16", (2, 2), BF16_STYPE, fake.data))


def test_big_endian_data_is_read_exactly() -> None:
    values = np.arange(6, dtype=">f4").reshape(2, 3)
    decoded = _decode(Array(values))
    assert decoded.dtype == torch.float32 and decoded.tolist() == values.tolist()


def test_tensors_of_other_dtypes_are_refused_when_sent() -> None:
    with pytest.raises(WireFormatError, match=r"'w' has dtype torch\.complex64"):
        adapter_to_record({"w": torch.zeros(2, dtype=torch.complex64)})


@PROPERTIES
@given(adapters.filter(bool), st.data())
def test_a_missing_extra_or_reshaped_tensor_is_refused_against_the_expected_layout(
    adapter: dict[str, torch.Tensor], data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from(list(adapter)))
    tensor = adapter[key]
    variants = [
        {k: v for k, v in adapter.items() if k != key},  # missing
        {**adapter, key + "~extra": tensor},  # unexpected
        {**adapter, key: torch.zeros(*tensor.shape, 1, dtype=tensor.dtype)},  # shape
        {**adapter, key: tensor.to(torch.float64)},  # dtype
    ]
    for received in variants:
        with pytest.raises(ModelError, match="same SLM and LoraSettings"):
            record_to_adapter(adapter_to_record(received), like=adapter)


def test_errors_are_fedkt_errors() -> None:
    assert issubclass(WireFormatError, FedktError)
