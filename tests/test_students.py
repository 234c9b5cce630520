"""Healing a cut student: the output lens moves it towards the teacher; the cache is used."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from fedkt.errors import ConfigError, ModelError
from fedkt.models import keep_first_layers, load_model, resolve_cache_dir, student_dir
from fedkt.students import HealSettings, _save_atomically, distill, lens_student, make_student

TEXTS = [
    "Question: Which gas do plants absorb from the air?\nAnswer: carbon dioxide",
    "Article: The team won the final match of the season.\nTopic: Sports",
    "Article: Shares rose after the bank reported record profits.\nTopic: Business",
    "Natalia sold 48 clips in April and half as many in May. #### 72",
] * 4


def _sharp_teacher(model: LlamaForCausalLM) -> LlamaForCausalLM:
    """Random tiny models predict near-uniform tokens; a larger final norm scale gives the
    teacher peaked distributions, so there is a real KL to close."""
    with torch.no_grad():
        model.model.norm.weight.mul_(30.0)
    return model


def _kl_to_teacher(
    student: LlamaForCausalLM, teacher: LlamaForCausalLM, tok: PreTrainedTokenizerFast
) -> float:
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        target = F.log_softmax(teacher(**batch).logits.float(), -1)
        guess = F.log_softmax(student(**batch).logits.float(), -1)
    kl = F.kl_div(guess, target, log_target=True, reduction="none").sum(-1)
    return float(kl[batch["attention_mask"].bool()].mean())


def test_lens_student_is_closer_to_the_teacher_than_a_plain_cut(
    make_tiny_llama: object, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    teacher = _sharp_teacher(make_tiny_llama(n_layers=4))  # type: ignore[operator]
    settings = HealSettings(layers=1, lens_tokens=10_000, batch_size=4)
    healed = lens_student(teacher, tiny_tokenizer, TEXTS, settings)
    plain = keep_first_layers(make_tiny_llama(n_layers=4), 1)  # type: ignore[operator]
    assert healed.config.num_hidden_layers == 1
    assert teacher.config.num_hidden_layers == 4  # the teacher is left intact
    assert not healed.config.tie_word_embeddings
    assert _kl_to_teacher(healed, teacher, tiny_tokenizer) < _kl_to_teacher(
        plain, teacher, tiny_tokenizer
    )


def test_distillation_lowers_the_kl(
    make_tiny_llama: object, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    teacher = _sharp_teacher(make_tiny_llama(n_layers=3))  # type: ignore[operator]
    settings = HealSettings(layers=1, lens_tokens=2_000, kd_tokens=3_000, kd_lr=3e-3, batch_size=8)
    student = lens_student(teacher, tiny_tokenizer, TEXTS, settings)
    before = _kl_to_teacher(student, teacher, tiny_tokenizer)
    report = distill(teacher, student, tiny_tokenizer, TEXTS, settings)
    assert _kl_to_teacher(student, teacher, tiny_tokenizer) < before
    assert report["kd_seconds"] > 0 and 0 <= report["kd_last_kl"] < float("inf")


def test_make_student_caches_and_loads_by_name(
    tmp_path: Path,
    tiny_llama: LlamaForCausalLM,
    tiny_tokenizer: PreTrainedTokenizerFast,
    shared_data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    teacher_dir = tmp_path / "teacher"
    tiny_llama.save_pretrained(teacher_dir)
    tiny_tokenizer.save_pretrained(teacher_dir)
    name = f"{teacher_dir}@layers=1,healed=true"
    cache = tmp_path / "cache"
    with pytest.raises(ModelError, match="fedkt make-student"):
        load_model(name, cache_dir=cache)

    settings = HealSettings(layers=1, lens_tokens=3_000, batch_size=8)
    path = make_student(str(teacher_dir), settings, data_dir=shared_data_dir, cache_dir=cache)
    assert json.loads((path / "fedkt-student.json").read_text())["layers"] == 1
    assert load_model(name, cache_dir=cache).config.num_hidden_layers == 1

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached student must not be rebuilt")

    monkeypatch.setattr("fedkt.students.lens_student", fail)
    assert (
        make_student(str(teacher_dir), settings, data_dir=shared_data_dir, cache_dir=cache) == path
    )


# --- a damaged student in the cache ------------------------------------------------------------

HEALED = "smollm2-135m@layers=1,healed=true"


def _cache_student(
    cache: Path, model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, **manifest: object
) -> Path:
    """Save `model` cut to 1 layer as the healed 1-layer student of smollm2-135m, as
    make_student does, without fitting anything."""
    target = student_dir(cache, "smollm2-135m", 1)
    settings = {**asdict(HealSettings(layers=1)), **manifest}
    _save_atomically(keep_first_layers(model, 1), tokenizer, target, settings)
    return target


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_student_manifest_records_each_file(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    path = _cache_student(resolve_cache_dir(), tiny_llama, tiny_tokenizer)
    files = json.loads((path / "fedkt-student.json").read_text())["files"]
    assert files["model.safetensors"]["size"] == (path / "model.safetensors").stat().st_size
    assert len(files["model.safetensors"]["sha256"]) == 64


def test_a_damaged_student_names_its_folder_and_the_command_that_rebuilds_it(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    path = _cache_student(resolve_cache_dir(), tiny_llama, tiny_tokenizer)
    assert load_model(HEALED).config.num_hidden_layers == 1
    _truncate(path / "model.safetensors")
    with pytest.raises(
        ModelError,
        match=rf"the healed 1-layer student of 'smollm2-135m' in {re.escape(str(path))} is "
        r"damaged \(model\.safetensors is \d+ bytes, expected \d+\): delete the folder "
        rf"{re.escape(str(path))} and rebuild it with `fedkt make-student --teacher smollm2-135m "
        r"--layers 1 --lens-tokens 40000`",
    ):
        load_model(HEALED)


def test_the_rebuild_command_names_a_cache_that_is_not_the_default(
    tmp_path: Path, tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    cache = tmp_path / "elsewhere"
    path = _cache_student(cache, tiny_llama, tiny_tokenizer, kd_tokens=5000)
    (path / "model.safetensors").unlink()
    with pytest.raises(
        ModelError,
        match=rf"model\.safetensors is missing.*`FEDKT_CACHE_DIR={re.escape(str(cache))} fedkt "
        r"make-student --teacher smollm2-135m --layers 1 --lens-tokens 40000 --kd-tokens 5000`",
    ):
        load_model(HEALED, cache_dir=cache)


def test_a_student_from_before_sizes_loads_and_gets_them_recorded(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    path = _cache_student(resolve_cache_dir(), tiny_llama, tiny_tokenizer)
    manifest = path / "fedkt-student.json"
    old = {k: v for k, v in json.loads(manifest.read_text()).items() if k != "files"}
    manifest.write_text(json.dumps(old))
    assert load_model(HEALED).config.num_hidden_layers == 1
    assert "model.safetensors" in json.loads(manifest.read_text())["files"]


def test_make_student_rebuilds_a_damaged_cache(
    tmp_path: Path,
    tiny_llama: LlamaForCausalLM,
    tiny_tokenizer: PreTrainedTokenizerFast,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    teacher_dir = tmp_path / "teacher"
    tiny_llama.save_pretrained(teacher_dir)
    tiny_tokenizer.save_pretrained(teacher_dir)
    monkeypatch.setattr("fedkt.students.healing_texts", lambda data_dir, seed: TEXTS)
    settings = HealSettings(layers=1, lens_tokens=500, batch_size=8)
    cache = tmp_path / "cache"
    path = make_student(str(teacher_dir), settings, data_dir=None, cache_dir=cache)
    size = (path / "model.safetensors").stat().st_size
    _truncate(path / "model.safetensors")
    assert make_student(str(teacher_dir), settings, data_dir=None, cache_dir=cache) == path
    assert (path / "model.safetensors").stat().st_size == size
    assert load_model(f"{teacher_dir}@layers=1,healed=true", cache_dir=cache)


@pytest.mark.parametrize("change", [{"layers": 0}, {"lens_tokens": 0}, {"batch_size": 0}])
def test_heal_settings_are_range_checked(change: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match=f"{next(iter(change))}=0"):
        HealSettings(**change)
