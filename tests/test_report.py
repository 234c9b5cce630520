"""Results files are strict JSON, written atomically."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedkt.report import read_json, read_jsonl, to_strict_json, write_json, write_jsonl


def strict_loads(text: str):
    def refuse(name: str):
        raise ValueError(f"non-strict constant {name}")

    return json.loads(text, parse_constant=refuse)


@dataclass(frozen=True)
class Budget:
    epsilon: float
    spent: tuple[float, ...]


def test_non_finite_floats_become_strings_and_null(tmp_path):
    payload = {
        "epsilon": math.inf,
        "nested": {"low": -math.inf, "missing": math.nan, "fine": 0.5},
        "list": [1.0, math.inf, [math.nan, -math.inf]],
        "tuple": (math.inf, 2),
        "numpy": [np.float32(np.inf), np.float64(np.nan), np.int64(3), np.array([1.0, np.inf])],
        "budget": Budget(math.inf, (1.0, math.nan)),
        "path": Path("/tmp/x"),
        "flag": True,
        "none": None,
    }
    path = write_json(tmp_path / "out" / "results.json", payload)
    loaded = strict_loads(path.read_text(encoding="utf-8"))
    assert loaded["epsilon"] == "inf"
    assert loaded["nested"] == {"low": "-inf", "missing": None, "fine": 0.5}
    assert loaded["list"] == [1.0, "inf", [None, "-inf"]]
    assert loaded["tuple"] == ["inf", 2]
    assert loaded["numpy"] == ["inf", None, 3, [1.0, "inf"]]
    assert loaded["budget"] == {"epsilon": "inf", "spent": [1.0, None]}
    assert loaded["path"] == "/tmp/x"  # other objects: str(), as before
    assert (loaded["flag"], loaded["none"]) == (True, None)
    assert "machine" in loaded
    assert read_json(path) == loaded


def test_the_input_is_not_modified():
    payload = {"a": [math.inf]}
    assert to_strict_json(payload) == {"a": ["inf"]}
    assert payload == {"a": [math.inf]}


def test_non_finite_keys_become_strings():
    assert to_strict_json({math.inf: 1, 2.5: 2, 3: 3}) == {"inf": 1, 2.5: 2, 3: 3}


def test_read_json_refuses_non_strict_files(tmp_path):
    path = tmp_path / "loose.json"
    path.write_text('{"x": Infinity}', encoding="utf-8")
    with pytest.raises(ValueError, match="Infinity"):
        read_json(path)


def test_jsonl_round_trip(tmp_path):
    rows = [{"id": "a", "loglik": [-1.5, -math.inf], "pred": None}, {"id": "b", "x": math.nan}]
    path = write_jsonl(tmp_path / "rows" / "predictions.jsonl", rows)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [strict_loads(line) for line in lines] == read_jsonl(path)
    assert read_jsonl(path) == [
        {"id": "a", "loglik": [-1.5, "-inf"], "pred": None},
        {"id": "b", "x": None},
    ]


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"ok": 1}])

    def rows():
        yield {"ok": 2}
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_jsonl(path, rows())
    assert read_jsonl(path) == [{"ok": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]  # no temporary left behind


def test_results_are_shared_readable(tmp_path):
    path = write_json(tmp_path / "results.json", {"x": 1})
    assert path.stat().st_mode & 0o777 == 0o644


def test_an_interrupted_write_leaves_no_temporary_file(tmp_path):
    from fedkt.report import _atomic_writer

    path = write_json(tmp_path / "results.json", {"x": 1})
    with pytest.raises(RuntimeError), _atomic_writer(path) as handle:
        handle.write('{"x": ')
        raise RuntimeError("interrupted")
    assert read_json(path)["x"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
