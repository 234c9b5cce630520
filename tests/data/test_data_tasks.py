"""Every task loads from the shared local copies with lm-eval's prompt formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedkt.data import TARGET_DELIMITER, TASKS, Example, get_task, load_examples
from fedkt.errors import DataError

# Row counts from shared/data/README.md.
COUNTS = [
    ("arc_easy", "train", 2251),
    ("arc_easy", "validation", 570),
    ("arc_challenge", "train", 1119),
    ("arc_challenge", "validation", 299),
    ("openbookqa", "train", 4957),
    ("openbookqa", "validation", 500),
    ("commonsense_qa", "train", 9741),
    ("commonsense_qa", "validation", 1221),
    ("gsm8k", "train", 7473),
    ("ag_news", "train", 6000),
    ("ag_news", "validation", 800),
]


@pytest.mark.parametrize(("task", "split", "rows"), COUNTS)
def test_every_split_loads_with_its_row_count(
    shared_data_dir: Path, task: str, split: str, rows: int
) -> None:
    examples = load_examples(task, split, shared_data_dir)
    assert len(examples) == rows
    assert len({e.id for e in examples}) == rows
    assert all(e.is_generative == (TASKS[task].kind == "generative") for e in examples)


# (task, split, row index, id, question, context, choices, gold)
SPOT_CHECKS = [
    (
        "arc_easy",
        "train",
        4,  # one of the rows labelled 1-4 instead of A-D
        "NYSEDREGENTS_2006_8_10",
        "Rocks are classified as igneous, metamorphic, or sedimentary according to",
        "Question: Rocks are classified as igneous, metamorphic, or sedimentary according to"
        "\nAnswer:",
        ("their color", "their shape", "how they formed", "the minerals they contain"),
        2,
    ),
    (
        "openbookqa",
        "validation",
        499,
        "7-242",
        "Owls spend their nights",
        "Owls spend their nights",
        (
            "tending to their homes",
            "sleeping in hollow logs",
            "scanning their territory for field mice",
            "hanging out with other owls",
        ),
        2,
    ),
    (
        "commonsense_qa",
        "validation",
        4,
        "2435de612dd69f2012b9e40d6af4ce38",
        "James was looking for a good place to buy farmland.  Where might he look?",
        "Question: James was looking for a good place to buy farmland.  Where might he look?"
        "\nAnswer:",
        ("midwest", "countryside", "estate", "farming areas", "illinois"),
        0,
    ),
    (
        "ag_news",
        "validation",
        2,
        "ag_news-validation-2",
        "Giddy Phelps Touches Gold for First Time Michael Phelps won the gold medal in "
        "the 400 individual medley and set a world record in a time of 4 minutes 8.26 seconds.",
        "Article: Giddy Phelps Touches Gold for First Time Michael Phelps won the gold medal in "
        "the 400 individual medley and set a world record in a time of 4 minutes 8.26 seconds."
        "\nTopic:",
        ("World", "Sports", "Business", "Science and Technology"),
        1,
    ),
]


@pytest.mark.parametrize(
    ("task", "split", "index", "id_", "question", "context", "choices", "gold"), SPOT_CHECKS
)
def test_multiple_choice_rows_are_formatted_like_lm_eval(
    shared_data_dir: Path,
    task: str,
    split: str,
    index: int,
    id_: str,
    question: str,
    context: str,
    choices: tuple[str, ...],
    gold: int,
) -> None:
    example = load_examples(task, split, shared_data_dir, limit=index + 1)[index]
    assert example == Example(
        id=id_, context=context, choices=choices, gold=gold, question=question
    )
    assert example.training_pair() == (context, " " + choices[gold])


def test_gsm8k_trains_on_the_solution_and_grades_the_number(shared_data_dir: Path) -> None:
    example = load_examples("gsm8k", "train", shared_data_dir, limit=346)[345]
    assert example.id == "gsm8k-train-345"
    assert example.context.startswith("Question: Adam earns $40 daily in his job.")
    assert example.context.endswith("after 30 days of work?\nAnswer:")
    assert example.target.endswith("$<<36*30=1080>>1080.\n#### 1,080")
    assert example.answer == "1080"  # comma removed
    assert example.question == example.context.removeprefix("Question: ").removesuffix("\nAnswer:")
    assert (example.choices, example.gold) == ((), -1)
    assert example.training_pair() == (example.context, TARGET_DELIMITER + example.target)


def test_limit_takes_the_first_rows(shared_data_dir: Path) -> None:
    first = load_examples("arc_challenge", "validation", shared_data_dir, limit=3)
    assert [e.id for e in first] == [
        e.id for e in load_examples("arc_challenge", "validation", shared_data_dir)[:3]
    ]


def test_unknown_task_lists_names_and_suggests_the_close_one() -> None:
    with pytest.raises(DataError, match=r"unknown task 'arc-easy'.*arc_challenge.*'arc_easy'"):
        get_task("arc-easy")
    with pytest.raises(DataError, match="known tasks: arc_easy, arc_challenge"):
        load_examples("boolq", "train", "/nonexistent")


def test_task_specs_point_at_the_hub_datasets() -> None:
    names = {"arc_easy", "arc_challenge", "openbookqa", "commonsense_qa", "gsm8k", "ag_news"}
    assert set(TASKS) == names
    assert (get_task("arc_challenge").hub_id, get_task("arc_challenge").hub_config) == (
        "allenai/ai2_arc",
        "ARC-Challenge",
    )
    assert get_task("commonsense_qa").hub_config is None
    assert get_task("gsm8k").kind == "generative"


def test_example_rejects_an_impossible_gold_index() -> None:
    with pytest.raises(DataError, match="gold index 2 is outside its 2 choices"):
        Example(id="x", context="Q", choices=("a", "b"), gold=2)
    with pytest.raises(DataError, match="generative example needs gold=-1"):
        Example(id="x", context="Q", choices=(), gold=0, target="t")
