"""The `fedkt` command end to end on a tiny local model: tables, results.json, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from fedkt.cli import main


@pytest.fixture
def tiny_model_dir(
    tmp_path: Path, tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> Path:
    """A tiny random Llama saved like any local checkpoint a user would pass by path."""
    path = tmp_path / "tiny-model"
    tiny_llama.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_eval_writes_results_and_prints_a_table(
    tiny_model_dir: Path, shared_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(
        ["eval", "--model", str(tiny_model_dir), "--task", "arc_easy", "--task", "ag_news",
         "--limit", "6", "--data-dir", str(shared_data_dir), "--output-dir", str(out)]
    )  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    scores = results["models"][str(tiny_model_dir)]
    assert set(scores) == {"arc_easy", "ag_news"}
    assert all(s["n"] == 6 and 0.0 <= s["acc"] <= 1.0 for s in scores.values())
    assert "machine" in results
    printed = capsys.readouterr().out
    assert "arc_easy" in printed and "ag_news" in printed


def test_finetune_trains_and_saves_an_adapter(
    tiny_model_dir: Path, shared_data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ft"
    code = main(
        ["finetune", "--model", str(tiny_model_dir), "--task", "ag_news", "--limit", "4",
         "--train-limit", "8", "--data-dir", str(shared_data_dir), "--output-dir", str(out)]
    )  # fmt: skip
    assert code == 0
    entry = json.loads((out / "results.json").read_text())["tasks"]["ag_news"]
    assert entry["train_rows"] == 8
    assert entry["train"]["steps"] == 2  # 8 rows / batch 4, one epoch
    assert (Path(entry["saved"]) / "adapter_config.json").is_file()


def test_errors_are_one_line_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[data]\ntaks = ['arc_easy']\n")
    assert main(["eval", "--config", str(bad)]) == 2
    assert "did you mean 'tasks'" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path / "missing"), "--task", "arc_easy"]) == 2
    assert "fedkt: error:" in capsys.readouterr().err
