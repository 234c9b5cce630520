"""ResponseStore: durable appends, resume, and a torn last line after a crash."""

from __future__ import annotations

import json
import logging

import pytest

from fedkt.errors import DataError
from fedkt.generation import Response, ResponseStore
from fedkt.generation import store as store_module


def lines(*records: dict[str, str]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def test_answers_survive_a_restart(tmp_path):
    path = tmp_path / "run" / "answers.jsonl"  # the folder is created on first add
    ResponseStore(path).add([Response("a", "x\ny"), Response("b", "é")])
    ResponseStore(path).add([Response("c", "")])
    assert ResponseStore(path).answered() == {"a": "x\ny", "b": "é", "c": ""}
    assert len(path.read_text().splitlines()) == 3  # one line per id


def test_each_add_is_one_fsynced_write(tmp_path, monkeypatch):
    synced: list[int] = []
    monkeypatch.setattr(store_module.os, "fsync", synced.append)
    store = ResponseStore(tmp_path / "answers.jsonl")
    store.add([Response("a", "x"), Response("b", "y")])
    store.add([Response("c", "z")])
    assert len(synced) == 2 + 1  # one per batch, plus the new file's directory once


def test_a_torn_last_line_is_dropped_and_earlier_answers_kept(tmp_path, caplog):
    path = tmp_path / "answers.jsonl"
    path.write_text(lines({"id": "a", "text": "x"}, {"id": "b", "text": "y"}) + '{"id": "c", "te')
    with caplog.at_level(logging.WARNING):
        store = ResponseStore(path)
    assert store.answered() == {"a": "x", "b": "y"}
    assert "answers.jsonl:3: dropping a torn last line" in caplog.text
    store.add([Response("c", "z")])  # the next append starts on a clean line
    assert ResponseStore(path).answered() == {"a": "x", "b": "y", "c": "z"}


def test_a_last_line_missing_only_its_newline_is_kept(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text(lines({"id": "a", "text": "x"}) + json.dumps({"id": "b", "text": "y"}))
    ResponseStore(path).add([Response("c", "z")])
    assert ResponseStore(path).answered() == {"a": "x", "b": "y", "c": "z"}


def test_zero_filled_blocks_after_a_crash_are_dropped(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_bytes(lines({"id": "a", "text": "x"}).encode() + b"\x00" * 64)
    store = ResponseStore(path)
    store.add([Response("b", "y")])
    assert ResponseStore(path).answered() == {"a": "x", "b": "y"}


def test_a_malformed_line_before_the_end_is_an_error(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text(
        lines({"id": "a", "text": "x"}) + '{"id": 1}\n' + lines({"id": "c", "text": "z"})
    )
    with pytest.raises(DataError, match=r"answers.jsonl:2: not a JSON object"):
        ResponseStore(path)


def test_an_id_recorded_twice_with_different_texts_is_an_error(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text(lines({"id": "a", "text": "x"}, {"id": "a", "text": "other"}))
    with pytest.raises(DataError, match=r"id 'a' answered twice"):
        ResponseStore(path)


def test_adding_an_answered_id_again_is_refused():
    store = ResponseStore(None)
    store.add([Response("a", "x")])
    with pytest.raises(DataError, match=r"\['a'\] are already answered in the in-memory store"):
        store.add([Response("a", "y")])
    with pytest.raises(DataError, match=r"\['b'\]"):
        store.add([Response("b", "y"), Response("b", "z")])
    assert store.answered() == {"a": "x"}
