"""The shared harness: dev rows carved before the split, per-row results kept and written,
means over clients with their standard errors, and paired tests of the claims."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedkt.config import FedktConfig, build_config
from fedkt.data import Example
from fedkt.experiments.harness import Claim, Scoreboard, TaskData


def _config(tmp_path: Path, data_dir: Path, **data: object) -> FedktConfig:
    return build_config(
        {
            "output_dir": str(tmp_path),
            "data": {"dir": str(data_dir), "tasks": ["ag_news"], **data},
            "federation": {"clients": 2},
        }
    )


def test_dev_rows_are_carved_first_and_never_reach_a_client(
    tmp_path: Path, shared_data_dir: Path
) -> None:
    config = _config(tmp_path, shared_data_dir, train_limit=30, dev_rows=50, limit=5)
    data = TaskData.load(config, "ag_news")
    assert data.row_counts() == {"clients": [10, 10], "public": 10, "dev": 50, "eval": 5}
    dev_ids = {example.id for example in data.dev}
    used = [example.id for part in [*data.clients, data.public] for example in part]
    assert not dev_ids & set(used)
    bigger = TaskData.load(
        _config(tmp_path, shared_data_dir, train_limit=60, dev_rows=50), "ag_news"
    )
    assert [e.id for e in bigger.dev] == [e.id for e in data.dev]  # whatever the train limit
    on_dev = TaskData.load(
        _config(tmp_path, shared_data_dir, split="dev", dev_rows=50, limit=7), "ag_news"
    )
    assert [e.id for e in on_dev.evaluation] == [e.id for e in data.dev][:7]


EXAMPLES = [Example(id=f"r{i}", context="q", choices=("a", "b"), gold=0) for i in range(4)]


def _rows(correct: list[int]) -> list[dict[str, object]]:
    return [
        {"id": ex.id, "gold": 0, "pred": 1 - c, "correct": c, "correct_norm": c}
        for ex, c in zip(EXAMPLES, correct, strict=True)
    ]


def test_scoreboard_means_over_clients_and_tests_claims(tmp_path: Path) -> None:
    config = build_config({"output_dir": str(tmp_path), "eval": {"margin": 0.25}})
    board = Scoreboard(config, "toy", EXAMPLES)
    board.add("solo", "slm", _rows([1, 0, 0, 0]), client=0)
    board.add("solo", "slm", _rows([1, 1, 0, 0]), client=1)
    scores = board.mean_of_clients("solo", "slm", 2)
    assert scores["acc"] == pytest.approx(0.375) and scores["n"] == 4
    # row means 1, .5, 0, 0: sample std / sqrt(4)
    mean = 0.375
    var = sum((x - mean) ** 2 for x in (1, 0.5, 0, 0)) / 3
    assert scores["acc_stderr"] == pytest.approx((var / 4) ** 0.5)
    board.add("fed", "slm", _rows([1, 1, 1, 1]))
    board.alias("copy", "slm", same_as="fed")
    written = tmp_path / "predictions" / "toy" / "solo" / "slm-client1.jsonl"
    assert [json.loads(line)["correct"] for line in written.read_text().splitlines()] == [
        1,
        1,
        0,
        0,
    ]

    tests = board.compare(
        [
            Claim("slm", "fed", "solo"),
            Claim("slm", "copy", "fed", non_inferior=True),
            Claim("slm", "fed", "never-run"),  # skipped: not scored
        ]
    )
    assert [t["claim"] for t in tests] == ["SLM fed > solo", "SLM copy >= fed - 25 pt"]
    better, same = tests
    assert better["diff"] == pytest.approx(0.625) and better["test"] != "mcnemar-exact"
    assert same["diff"] == 0.0 and same["holds"] is True
    with pytest.raises(ValueError, match="order"):
        board.add("bad", "slm", list(reversed(_rows([1, 0, 0, 0]))))
