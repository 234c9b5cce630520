from __future__ import annotations

import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedkt.errors import FedktError
from fedkt.federation import keys
from fedkt.federation.codec import (
    BF16_STYPE,
    adapter_to_record,
    payload_bytes,
    record_to_adapter,
    record_to_float32,
)


def _adapter() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    # Keys deliberately not sorted: the record must keep the adapter's order.
    return {
        "z.lora_B.weight": torch.randn(4, 2),
        "a.lora_A.weight": torch.randn(2, 4).to(torch.bfloat16),
        "m.lora_A.weight": torch.randn(3).to(torch.float16),
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "steps": torch.arange(5, dtype=torch.int64),
    }


def test_round_trip_keeps_order_dtype_and_values_exactly() -> None:
    adapter = _adapter()
    decoded = record_to_adapter(adapter_to_record(adapter))
    assert list(decoded) == list(adapter)
    for key, tensor in adapter.items():
        assert decoded[key].dtype == tensor.dtype, key
        assert decoded[key].shape == tensor.shape, key
        assert torch.equal(decoded[key], tensor), key


def test_float32_decoding_without_torch_equals_the_tensors_widened() -> None:
    """SecAgg+'s mod masks `record_to_float32` (NumPy only) where it masked ``t.float()``."""
    adapter = _adapter()
    adapter["special"] = torch.tensor([float("inf"), -0.0, 1e-40], dtype=torch.bfloat16)
    arrays = record_to_float32(adapter_to_record(adapter))
    assert len(arrays) == len(adapter)
    for array, tensor in zip(arrays, adapter.values(), strict=True):
        assert array.dtype == "float32" and array.tobytes() == tensor.float().numpy().tobytes()


def test_bf16_travels_as_its_16_bit_patterns_not_widened() -> None:
    tensor = torch.tensor([[1.0, -2.5], [1e-3, 65504.0]], dtype=torch.bfloat16)
    array = adapter_to_record({"w": tensor})["w"]
    assert (array.stype, array.dtype, array.shape) == (BF16_STYPE, "bfloat16", (2, 2))
    fp32 = adapter_to_record({"w": tensor.float()})["w"]
    assert len(fp32.data) - len(array.data) == tensor.numel() * 2  # 2 bytes less per value
    with pytest.raises(TypeError):  # a generic Flower consumer cannot misread the bits
        array.numpy()
    # A non-contiguous bf16 tensor (a transposed view) survives too.
    assert torch.equal(record_to_adapter(adapter_to_record({"t": tensor.T}))["t"], tensor.T)


def test_unknown_serialisation_type_is_refused_by_name() -> None:
    record = ArrayRecord({"w": Array(dtype="float32", shape=(1,), stype="pickle", data=b"x")})
    with pytest.raises(FedktError, match="'w' has serialization type 'pickle'"):
        record_to_adapter(record)


def test_payload_bytes_counts_array_data_and_small_records() -> None:
    record = adapter_to_record(_adapter())
    arrays_only = RecordDict({keys.ADAPTER: record})
    assert payload_bytes(arrays_only) == sum(len(a.data) for a in record.values())
    content = RecordDict(
        {
            keys.ADAPTER: record,
            keys.CONFIG: ConfigRecord({keys.ROUND: 3}),
            keys.COUNTS: MetricRecord({keys.N_EXAMPLES: 10}),
        }
    )
    extra = payload_bytes(content) - payload_bytes(arrays_only)
    assert 0 < extra < 200  # two scalars: a few dozen serialized bytes each


def test_oversized_message_is_refused_naming_size_and_limit() -> None:
    content = RecordDict({keys.ADAPTER: adapter_to_record({"w": torch.zeros(1000)})})
    size = payload_bytes(content)
    assert keys.check_message_size(content, size, what="reply of node 7") == size
    with pytest.raises(FedktError, match=rf"reply of node 7: .* {size:,} bytes, over .* 1,000 "):
        keys.check_message_size(content, 1000, what="reply of node 7")
