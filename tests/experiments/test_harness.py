"""The shared harness: dev rows carved before the split, per-row results kept and written,
means over clients with their standard errors, and paired tests of the claims."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedkt import preflight
from fedkt.config import FedktConfig, build_config
from fedkt.data import Example
from fedkt.errors import ConfigError
from fedkt.experiments.harness import Claim, Scoreboard, TaskData, _rows_text, write_run_json


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


def _arc_dir(tmp_path: Path, shared: Path) -> Path:
    """A data directory whose ARC-Easy has a test split (rows of validation, new ids) and whose
    ARC-Challenge has only train and validation, as the shared copy."""
    root = tmp_path / "data"
    for config, splits in (("ARC-Easy", ("train", "validation")), ("ARC-Challenge", ("train",))):
        folder = root / "allenai__ai2_arc" / config
        folder.mkdir(parents=True)
        for split in (*splits, "validation"):
            lines = (shared / "allenai__ai2_arc" / config / f"{split}.jsonl").read_text()
            (folder / f"{split}.jsonl").write_text("\n".join(lines.splitlines()[:60]) + "\n")
    easy = root / "allenai__ai2_arc" / "ARC-Easy"
    rows = [json.loads(line) for line in (easy / "validation.jsonl").read_text().splitlines()]
    test = [{**row, "id": f"test-{row['id']}"} for row in rows[:6]]
    (easy / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in test))
    return root


def test_each_task_is_scored_on_its_own_split(tmp_path: Path, shared_data_dir: Path) -> None:
    """``data.splits`` overrides ``data.split`` per task, in the rows, run.json and the
    progress line; other tasks keep ``data.split``."""
    data_dir = _arc_dir(tmp_path, shared_data_dir)
    config = build_config(
        {
            "output_dir": str(tmp_path / "out"),
            "data": {"dir": str(data_dir), "tasks": ["arc_easy", "arc_challenge"],
                     "splits": {"arc_easy": "test"}, "dev_rows": 5, "limit": 4},
            "federation": {"clients": 2},
        }
    )  # fmt: skip
    assert config.data.evaluation_splits == {"arc_easy": "test", "arc_challenge": "validation"}
    easy = TaskData.load(config, "arc_easy")
    assert easy.split == "test" and len(easy.evaluation) == 4
    assert all(example.id.startswith("test-") for example in easy.evaluation)
    challenge = TaskData.load(config, "arc_challenge")
    assert challenge.split == "validation"
    assert not any(example.id.startswith("test-") for example in challenge.evaluation)
    assert "scored on 4 test rows" in _rows_text(easy)
    run = json.loads(write_run_json(config, "fedcollm", easy, "zero_shot", {}).read_text())
    assert run["data"]["split"] == "test"


@pytest.mark.parametrize(
    ("splits", "match"),
    [
        ({"openbookqa": "test"}, r"data\.splits\.openbookqa: 'openbookqa' is not one of"),
        ({"arc_easy": ""}, r"data\.splits\.arc_easy is empty"),
    ],
)
def test_a_split_for_a_task_the_run_lacks_is_refused(splits: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_config({"data": {"tasks": ["arc_easy"], "splits": splits}})


def test_a_split_the_task_lacks_names_the_key(tmp_path: Path, shared_data_dir: Path) -> None:
    """Before any model loads (preflight) and when the rows are read: one ConfigError."""
    config = build_config(
        {
            "output_dir": str(tmp_path / "out"),
            "data": {"dir": str(_arc_dir(tmp_path, shared_data_dir)),
                     "tasks": ["arc_easy", "arc_challenge"],
                     "splits": {"arc_easy": "test", "arc_challenge": "test"}, "dev_rows": 5},
        }
    )  # fmt: skip
    key = r"data\.splits\.arc_challenge = 'test': task arc_challenge cannot be evaluated"
    with pytest.raises(ConfigError, match=key):
        preflight.check_tasks(config, ["train"], carves_dev=True)
    with pytest.raises(ConfigError, match=key):
        TaskData.load(config, "arc_challenge")
    assert TaskData.load(config, "arc_easy").split == "test"
