"""The user's own data as a task: [tasks.<name>] tables, their files and their errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from fedkt.config import FedktConfig, build_config, load_config
from fedkt.data import Example, load_examples
from fedkt.data.custom import DEFAULT_TEMPLATES, CustomTask
from fedkt.errors import ConfigError, DataError
from fedkt.experiments.harness import TaskData
from fedkt.jobs import task_examples

REPO = Path(__file__).resolve().parents[2]
NAMES = ["billing", "login", "shipping", "bug"]


def jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def csv_file(path: Path, header: list[str], rows: list[list[str]]) -> str:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def config(**task: Any) -> FedktConfig:
    return build_config({"data": {"tasks": ["mine"]}, "tasks": {"mine": task}})


def examples(split: str = "train", **task: Any) -> list[Example]:
    return task_examples(config(**task), "mine", split, 0)


TICKETS = [
    {"text": "I was charged twice", "label": "billing"},
    {"text": "cannot sign in", "label": 1},
    {"text": "parcel is late", "label": "shipping"},
]


# ---- the three kinds ----


def test_classification_from_jsonl_maps_names_and_indices(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "t.jsonl", TICKETS)
    rows = examples(kind="classification", splits={"train": path}, label_names=NAMES)
    assert [e.gold for e in rows] == [0, 1, 2]
    assert rows[0].choices == tuple(NAMES)
    assert rows[0].question == "I was charged twice"  # the raw text, for FedCoT
    assert rows[0].context == DEFAULT_TEMPLATES["classification"].format(text=rows[0].question)
    assert [e.id for e in rows] == ["mine-train-0", "mine-train-1", "mine-train-2"]
    assert rows[0].training_pair() == (rows[0].context, " billing")


def test_a_validation_only_task_with_label_names_needs_no_train_file(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "v.jsonl", TICKETS)  # a server's public set: no train split
    rows = examples("validation", kind="classification", splits={"validation": path},
                    label_names=NAMES)  # fmt: skip
    assert [e.gold for e in rows] == [0, 1, 2]


def test_classification_from_csv_with_a_template_and_inferred_label_names(tmp_path: Path) -> None:
    path = csv_file(
        tmp_path / "t.csv",
        ["ticket_id", "body", "product", "category"],
        [["a1", "late parcel", "hub", "shipping"], ["a2", "double charge", "plug", "billing"]],
    )
    rows = examples(
        kind="classification",
        splits={"train": path},
        id="ticket_id",
        text="body",
        label="category",
        template="Product: {product}\nTicket: {text}\nCategory:",
    )
    assert rows[0].choices == ("billing", "shipping")  # sorted, from the train rows
    assert [e.gold for e in rows] == [1, 0]
    assert rows[0].context == "Product: hub\nTicket: late parcel\nCategory:"
    assert [e.id for e in rows] == ["a1", "a2"]


def test_csv_digit_labels_are_indices_when_label_names_are_given(tmp_path: Path) -> None:
    path = csv_file(tmp_path / "t.csv", ["text", "label"], [["x", "3"], ["y", "login"]])
    rows = examples(kind="classification", splits={"train": path}, label_names=NAMES)
    assert [e.gold for e in rows] == [3, 1]


def test_multiple_choice_answers_by_text_letter_or_index(tmp_path: Path) -> None:
    choices = ["red", "green", "blue"]
    path = jsonl(
        tmp_path / "q.jsonl",
        [
            {"question": "Sky?", "choices": choices, "answer": "blue"},
            {"question": "Grass?", "choices": choices, "answer": "B"},
            {"question": "Blood?", "choices": choices, "answer": 0},
        ],
    )
    rows = examples(kind="multiple_choice", splits={"train": path})
    assert [e.gold for e in rows] == [2, 1, 0]
    assert rows[0].context == "Question: Sky?\nAnswer:" and rows[0].question == "Sky?"
    assert rows[0].choices == tuple(choices)


def test_multiple_choice_from_csv_with_one_column_per_choice(tmp_path: Path) -> None:
    path = csv_file(
        tmp_path / "q.csv",
        ["q", "a", "b", "c", "key"],
        [["2 + 2?", "3", "4", "5", "1"], ["Capital of France?", "Rome", "Paris", "Oslo", "Paris"]],
    )
    rows = examples(
        kind="multiple_choice",
        splits={"train": path},
        question="q",
        choices=["a", "b", "c"],
        answer="key",
    )
    assert [e.choices for e in rows] == [("3", "4", "5"), ("Rome", "Paris", "Oslo")]
    assert [e.gold for e in rows] == [1, 1]


def test_generative_answer_defaults_to_the_target(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "g.jsonl",
        [
            {"prompt": "3 + 4?", "target": "3 + 4 = 7. #### 7", "final": "7"},
            {"prompt": "2 * 5?", "target": 10, "final": 10},
        ],
    )
    plain = examples(kind="generative", splits={"train": path})
    assert plain[0].answer == plain[0].target == "3 + 4 = 7. #### 7"
    assert plain[0].context == "Question: 3 + 4?\nAnswer:" and plain[0].is_generative
    assert plain[1].target == "10"  # a number is its text
    mapped = examples(kind="generative", splits={"train": path}, answer="final")
    assert [e.answer for e in mapped] == ["7", "10"]


def test_one_file_holds_out_a_seeded_validation_share(tmp_path: Path) -> None:
    rows = [{"text": f"ticket {i}", "label": NAMES[i % 4]} for i in range(20)]
    path = jsonl(tmp_path / "all.jsonl", rows)
    train = examples("train", kind="classification", path=path)
    validation = examples("validation", kind="classification", path=path)
    assert len(train) == 16 and len(validation) == 4  # the default holdout, 0.2
    texts = {e.question for e in train} | {e.question for e in validation}
    assert texts == {row["text"] for row in rows}
    again = examples("validation", kind="classification", path=path)
    assert again == validation  # seeded
    other = examples("validation", kind="classification", path=path, seed=1)
    assert {e.question for e in other} != {e.question for e in validation}
    assert len(examples("validation", kind="classification", path=path, holdout=0.5)) == 10


# ---- errors name the file, the line and the field ----


def test_label_outside_the_names_names_file_line_field_and_names(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "t.jsonl", [*TICKETS, {"text": "refund?", "label": "refunds"}])
    with pytest.raises(DataError) as err:
        examples(kind="classification", splits={"train": path}, label_names=NAMES)
    message = str(err.value)
    assert f"{path} line 4" in message and "'label'" in message and "'refunds'" in message
    assert "['billing', 'login', 'shipping', 'bug']" in message
    with pytest.raises(DataError, match=r"line 2: field 'label' is 7: an index outside 0-3"):
        jsonl(tmp_path / "t.jsonl", [TICKETS[0], {"text": "x", "label": 7}])
        examples(kind="classification", splits={"train": path}, label_names=NAMES)


def test_a_validation_label_unseen_in_train_is_refused(tmp_path: Path) -> None:
    train = jsonl(tmp_path / "train.jsonl", TICKETS[::2])
    validation = jsonl(tmp_path / "v.jsonl", [{"text": "app crashes", "label": "bug"}])
    with pytest.raises(DataError, match=r"v.jsonl line 1: field 'label' is 'bug'.*train rows"):
        examples(
            "validation", kind="classification", splits={"train": train, "validation": validation}
        )


@pytest.mark.parametrize(
    ("rows", "task", "expected"),
    [
        (
            [{"text": "a", "label": "billing"}, {"text": "b"}],
            {"kind": "classification", "label_names": NAMES},
            r"t.jsonl line 2: row has no field 'label' \(task mine needs text, label",
        ),
        (
            [{"text": 3, "label": "billing"}],
            {"kind": "classification", "label_names": NAMES},
            r"t.jsonl line 1: field 'text' must be a string, got 3",
        ),
        (
            [{"question": "q", "choices": ["a", "b"], "answer": "E"}],
            {"kind": "multiple_choice"},
            r"line 1: field 'answer' is 'E': not a choice's text, a letter A-B or an index 0-1",
        ),
        (
            [{"question": "q", "choices": ["a"], "answer": 0}],
            {"kind": "multiple_choice"},
            r"line 1: field 'choices' must be a list of at least two texts",
        ),
        (
            [{"prompt": "p", "target": " "}],
            {"kind": "generative"},
            r"line 1: field 'target' is empty",
        ),
        (
            [{"text": "a", "label": "billing"}],
            {"kind": "classification", "label_names": NAMES, "template": "{text} {product}"},
            r"line 1: row has no field 'product'",
        ),
    ],
)
def test_malformed_rows_name_file_line_and_field(
    tmp_path: Path, rows: list[dict[str, Any]], task: dict[str, Any], expected: str
) -> None:
    path = jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(DataError, match=expected):
        examples(splits={"train": path}, **task)


def test_csv_missing_cell_names_the_line(tmp_path: Path) -> None:
    path = csv_file(tmp_path / "t.csv", ["text", "label"], [["a", "bug"], ["b", ""]])
    with pytest.raises(DataError, match=r"t.csv line 3: row has no field 'label'"):
        examples(kind="classification", splits={"train": path}, label_names=NAMES)


@pytest.mark.parametrize("content", ["", "\n\n", "text,label\n"])
def test_an_empty_file_is_one_clear_error(tmp_path: Path, content: str) -> None:
    suffix = ".csv" if "," in content else ".jsonl"
    path = tmp_path / f"empty{suffix}"
    path.write_text(content)
    with pytest.raises(DataError, match=rf"{path} holds no rows"):
        examples(kind="classification", splits={"train": str(path)}, label_names=NAMES)


def test_missing_file_and_missing_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no file .*nope.jsonl"):
        examples(kind="classification", splits={"train": str(tmp_path / "nope.jsonl")})
    path = jsonl(tmp_path / "t.jsonl", TICKETS)
    with pytest.raises(DataError, match=r"no split 'test' \(its splits: train\)"):
        examples("test", kind="classification", splits={"train": path}, label_names=NAMES)


def test_parquet_is_read_when_pyarrow_is_installed(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist(TICKETS[::2]), path)
    rows = examples(kind="classification", splits={"train": str(path)}, label_names=NAMES)
    assert [e.gold for e in rows] == [0, 2]


# ---- the config table ----


def test_unknown_key_in_a_task_table_suggests_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"'tasks.mine.lable'; did you mean 'label'"):
        config(kind="classification", path="t.jsonl", lable="y")
    with pytest.raises(ConfigError, match=r"tasks.mine.holdout = 'x' has the wrong type"):
        config(kind="classification", path="t.jsonl", holdout="x")


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ({"path": "t.jsonl"}, "kind is required"),
        ({"kind": "clasification", "path": "t.jsonl"}, "did you mean 'classification'"),
        ({"kind": "classification"}, "give the rows"),
        ({"kind": "classification", "path": "a.jsonl", "hub": "o/n"}, "not both"),
        ({"kind": "classification", "path": "t.txt"}, r"'t.txt' is not a .jsonl/.csv/.parquet"),
        ({"kind": "classification", "path": "t.jsonl", "holdout": 1.0}, r"holdout = 1.0"),
        ({"kind": "generative", "path": "t.jsonl", "text": "body"}, "text do.* not apply"),
        ({"kind": "classification", "path": "t.csv", "template": "{body}"}, r"contain \{text\}"),
        ({"kind": "classification", "path": "t.csv", "template": "{text!r}"}, "placeholder"),
        (
            {"kind": "classification", "path": "t.csv", "label_names": ["a", "a"]},
            "must be distinct",
        ),
        (
            {
                "kind": "classification",
                "splits": {"train": "a.csv", "validation": "b.csv"},
                "holdout": 0.1,
            },
            "splits.validation is given too",
        ),
        ({"kind": "classification", "splits": {"dev": "a.csv"}}, r"splits.dev"),
    ],
)
def test_out_of_range_task_settings_name_the_table(task: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[tasks.mine\] .*{expected}"):
        config(**task)


def test_a_custom_task_may_not_shadow_a_built_in_one() -> None:
    with pytest.raises(ConfigError, match=r"\[tasks.ag_news\] would shadow the built-in task"):
        build_config({"tasks": {"ag_news": {"kind": "classification", "path": "t.jsonl"}}})


def test_unknown_task_names_custom_and_built_in_tasks(tmp_path: Path) -> None:
    built = config(kind="classification", path="t.jsonl")
    with pytest.raises(
        DataError, match=r"unknown task 'mien'; known tasks: mine, arc_easy.*'mine'"
    ):
        built.task_spec("mien")


def test_built_in_tasks_still_resolve(shared_data_dir: Path) -> None:
    built = build_config({"data": {"dir": str(shared_data_dir)}})
    assert task_examples(built, "ag_news", "validation", 2)[0].id == "ag_news-validation-0"


def test_custom_task_is_a_library_dataclass_too(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "t.jsonl", TICKETS)
    spec = CustomTask(kind="classification", splits={"train": path}, label_names=tuple(NAMES))
    assert [e.gold for e in load_examples(spec.spec("tickets"), "train[1:]")] == [1, 2]


# ---- the shipped example ----


def test_the_shipped_example_config_loads_its_tickets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # its paths are relative to the repository root
    shipped = load_config(REPO / "configs" / "own-data.toml")
    train = task_examples(shipped, "tickets", "train", 0)
    validation = task_examples(shipped, "tickets", "validation", 10)
    assert len(train) > 300 and len(validation) == 10
    assert train[0].context.startswith("Ticket: ") and train[0].context.endswith("\nCategory:")
    assert {e.gold for e in train} == {0, 1, 2, 3}
    assert {e.id for e in train}.isdisjoint(e.id for e in validation)
    data = TaskData.load(shipped, "tickets")
    assert data.row_counts() == {"clients": [50] * 4, "public": 50, "dev": 40, "eval": 100}
