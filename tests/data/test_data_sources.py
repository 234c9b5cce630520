"""Local JSONL errors name file, line and field; the hub path goes through `datasets`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import datasets
import pytest

from fedkt.data import load_examples, load_rows, resolve_data_dir
from fedkt.errors import DataError

ARC_ROW = {
    "id": "q1",
    "question": "Which gas do plants absorb?",
    "choices": {"text": ["oxygen", "carbon dioxide"], "label": ["A", "B"]},
    "answerKey": "B",
}


def write_split(root: Path, lines: list[str], split: str = "train") -> Path:
    """Write raw JSONL lines where arc_easy's `split` lives under `root`."""
    path = root / "allenai__ai2_arc" / "ARC-Easy" / f"{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def with_fields(**changes: Any) -> str:
    return json.dumps({**ARC_ROW, **changes})


def test_blank_lines_are_skipped_and_rows_kept_in_order(tmp_path: Path) -> None:
    write_split(tmp_path, [with_fields(id="a"), "", with_fields(id="b")])
    assert [row["id"] for row in load_rows("arc_easy", "train", tmp_path)] == ["a", "b"]


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ('{"id": "q2", "question": ', r"line 2: not valid JSON \(Expecting value at column 26\)"),
        ("[1, 2]", "line 2: expected one JSON object per line, got list"),
        (
            json.dumps({k: v for k, v in ARC_ROW.items() if k != "answerKey"}),
            "line 2: row has no field 'answerKey'",
        ),
        (with_fields(question=7), "line 2: field 'question' must be a string, got 7"),
        (with_fields(choices=["oxygen"]), "line 2: field 'choices' must be"),
        (
            with_fields(choices={"text": ["a", "b"], "label": ["A"]}),
            "line 2: field 'choices' has 2 texts but 1 labels",
        ),
        (with_fields(choices={"text": "ab", "label": ["A", "B"]}), "line 2: field 'choices.text'"),
        (with_fields(answerKey="E"), r"line 2: field 'answerKey' is 'E', .* \['A', 'B'\]"),
    ],
)
def test_malformed_row_names_file_line_and_field(
    tmp_path: Path, bad_line: str, expected: str
) -> None:
    path = write_split(tmp_path, [with_fields(), bad_line])
    with pytest.raises(DataError, match=expected) as caught:
        load_examples("arc_easy", "train", tmp_path)
    assert str(caught.value).startswith(f"{path} line 2")


def test_generative_and_label_fields_are_checked(tmp_path: Path) -> None:
    gsm = tmp_path / "openai__gsm8k" / "main" / "train.jsonl"
    gsm.parent.mkdir(parents=True)
    gsm.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train.jsonl line 1: field 'answer' has no '#### "):
        load_examples("gsm8k", "train", tmp_path)
    news = tmp_path / "fancyzhx__ag_news" / "default" / "train.jsonl"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"text": "t", "label": True}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 1: field 'label' must be an int 0-3, got True"):
        load_examples("ag_news", "train", tmp_path)


def test_missing_split_names_path_present_splits_and_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_split(tmp_path, [with_fields()], split="train")
    write_split(tmp_path, [with_fields()], split="validation")
    expected = tmp_path / "allenai__ai2_arc" / "ARC-Easy" / "test.jsonl"
    with pytest.raises(DataError, match="data_dir") as caught:
        load_rows("arc_easy", "test", tmp_path)
    assert f"no file {expected}" in str(caught.value)
    assert "(splits there: train, validation)" in str(caught.value)
    monkeypatch.setenv("FEDKT_DATA_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match=r"splits there: none\); FEDKT_DATA_DIR=.*elsewhere"):
        load_rows("arc_easy", "train")


def test_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDKT_DATA_DIR", raising=False)
    assert resolve_data_dir() is None
    monkeypatch.setenv("FEDKT_DATA_DIR", "")
    assert resolve_data_dir() is None
    monkeypatch.setenv("FEDKT_DATA_DIR", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert resolve_data_dir("~/x") == Path.home() / "x"


def test_hub_rows_come_from_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDKT_DATA_DIR", raising=False)
    calls = []

    def fake_load_dataset(path: str, name: str | None, *, split: str) -> datasets.Dataset:
        calls.append((path, name, split))
        return datasets.Dataset.from_list([{"question": "2+2?", "answer": "4\n#### 4"}] * 3)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples = load_examples("gsm8k", "train", limit=2)
    assert calls == [("openai/gsm8k", "main", "train")]
    assert [(e.id, e.answer) for e in examples] == [("gsm8k-train-0", "4"), ("gsm8k-train-1", "4")]


def test_hub_failure_says_how_to_use_local_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDKT_DATA_DIR", raising=False)

    def offline(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    advice = r"set FEDKT_DATA_DIR .*tau__commonsense_qa/default/train.jsonl"
    with pytest.raises(
        DataError, match=r"tau/commonsense_qa \(default\) split 'train'.*offline.*" + advice
    ):
        load_rows("commonsense_qa", "train")


def test_hub_rows_are_checked_with_their_row_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDKT_DATA_DIR", raising=False)
    rows = [{"text": "a", "label": 0}, {"text": "b", "label": 9}]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(rows))
    with pytest.raises(DataError, match=r"hub fancyzhx/ag_news .* row 1: field 'label'"):
        load_examples("ag_news", "validation")


@pytest.mark.parametrize("content", ["", "\n   \n\n"], ids=["zero bytes", "blank lines"])
def test_an_empty_file_names_the_file_and_what_to_do(tmp_path: Path, content: str) -> None:
    path = write_split(tmp_path, [], "validation")
    path.write_text(content, encoding="utf-8")
    with pytest.raises(
        DataError,
        match=rf"{re.escape(str(path))} holds no rows \(it is empty or only blank lines\): "
        r"write one JSON object per line .*task arc_easy",
    ):
        load_examples("arc_easy", "validation", tmp_path)


def test_a_slice_past_the_end_selects_no_rows(tmp_path: Path) -> None:
    write_split(tmp_path, [with_fields(id="a"), with_fields(id="b")])
    with pytest.raises(DataError, match=r"split 'train\[5:\]' of task arc_easy selects no rows.*2"):
        load_examples("arc_easy", "train[5:]", tmp_path)
