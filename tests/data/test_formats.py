"""Task formats for DP synthesis: classification rows <-> (label, text), multiple-choice rows
<-> whole items, and the helper that picks one."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedkt.data import Example, load_examples
from fedkt.data.formats import ItemFormat, LabelFormat, task_format
from fedkt.data.synthetic import ITEM_PREFIX, McItem, format_item, parse_item
from fedkt.errors import ConfigError, DataError

TOPICS = ("World", "Sports")


def news(id: str, text: str, gold: int) -> Example:
    return Example(id, f"Article: {text}\nTopic:", TOPICS, gold, question=text)


def arc(id: str, question: str, choices: tuple[str, ...], gold: int) -> Example:
    return Example(id, f"Question: {question}\nAnswer:", choices, gold, question=question)


def lettered(example: Example, line: str = "{letter}. {choice}", joiner: str = "\n") -> Example:
    """The row in lm-eval's lettered style: the choices listed in the prompt."""
    block = joiner.join(
        line.format(letter="ABCDEFGH"[i], choice=c) for i, c in enumerate(example.choices)
    )
    context = f"Question: {example.question}\n{block}\nAnswer:"
    return Example(example.id, context, example.choices, example.gold, question=example.question)


MC = [
    arc("q1", "Which gas do plants absorb?", ("oxygen", "carbon dioxide", "helium"), 1),
    arc("q2", "What melts ice?", ("heat", "cold", "salt water", "wind"), 0),
]


@pytest.mark.parametrize(
    ("task", "template"),
    [
        ("arc_easy", "Question: \x00TEXT\x00\nAnswer:"),
        ("commonsense_qa", "Question: \x00TEXT\x00\nAnswer:"),
        ("openbookqa", "\x00TEXT\x00"),
    ],
)
def test_item_format_round_trips_real_rows(shared_data_dir: Path, task: str, template: str) -> None:
    rows = load_examples(task, "validation", data_dir=shared_data_dir)
    fmt = task_format(rows)
    assert isinstance(fmt, ItemFormat) and fmt.template == template and fmt.choice_line == ""
    assert fmt.kind == "mc" and fmt.prefix == ITEM_PREFIX
    for row in rows:
        item = fmt.item(row)
        assert item == McItem(row.question, row.choices, row.gold)
        again = fmt.example(row.id, item)
        assert (again.context, again.choices, again.gold, again.question) == (
            row.context,
            row.choices,
            row.gold,
            row.question,
        )
    # through the generator's text format too (what DP synthesis trains on and parses back),
    # for every row it can write: repeated choices (ignoring case) it refuses
    written = 0
    for row in rows:
        try:
            text = format_item(fmt.item(row))
        except DataError:
            continue
        parsed = parse_item(text)
        assert parsed is not None and fmt.example(row.id, parsed).gold == row.gold
        written += 1
    assert written >= 0.95 * len(rows)


@pytest.mark.parametrize(
    ("line", "joiner"),
    [("{letter}. {choice}", "\n"), ("({letter}) {choice}", " "), ("{letter}) {choice}", ", ")],
)
def test_item_format_reads_lettered_choices_in_the_prompt(line: str, joiner: str) -> None:
    rows = [lettered(row, line, joiner) for row in MC]
    fmt = ItemFormat.of(rows)
    assert (fmt.choice_line, fmt.choice_joiner) == (line, joiner)
    assert fmt.template == "Question: \x00TEXT\x00\n\x00CHOICES\x00\nAnswer:"
    for row in rows:
        assert fmt.example(row.id, fmt.item(row)) == row
    item = McItem("Why {is} it?", ("a {b}", "c", "d", "e", "f"), 4)
    new = fmt.example("new", item)
    assert fmt.item(new) == item and new.choices[new.gold] == "f"
    assert line.format(letter="E", choice="f") in new.context


def test_item_format_refuses_rows_it_cannot_read_naming_the_row() -> None:
    other = Example(
        "odd", "Q: What melts ice?\nA:", ("heat", "cold"), 0, question="What melts ice?"
    )
    with pytest.raises(DataError, match=r"row 'odd'.*prompt format"):
        ItemFormat.of([*MC, other])
    missing = Example("gone", "Question: x\nAnswer:", ("a", "b"), 0, question="not there")
    with pytest.raises(DataError, match=r"row 'gone'.*does not appear"):
        ItemFormat.of([*MC, missing])
    bare = Example("bare", "Question: x\nAnswer:", ("a", "b"), 0)
    with pytest.raises(DataError, match=r"row 'bare'.*no raw question"):
        ItemFormat.of([bare, *MC])
    gen = Example("gsm", "Question: 1+1?\nAnswer:", (), -1, target="2", question="1+1?")
    with pytest.raises(DataError, match=r"row 'gsm'.*generative"):
        ItemFormat.of([*MC, gen])
    with pytest.raises(DataError, match="no examples"):
        ItemFormat.of([])
    fmt = ItemFormat.of(MC)
    with pytest.raises(DataError, match=r"row 'odd'.*not written"):
        fmt.item(other)
    with pytest.raises(DataError, match="choices"):
        fmt.example("one", McItem("q", ("a",), 0))


def test_task_format_picks_the_format() -> None:
    rows = [news("n1", "Leaders met.", 0), news("n2", "The team won.", 1)]
    label = task_format(rows)
    assert isinstance(label, LabelFormat) and label.labels == TOPICS and label.kind == "label"
    assert isinstance(task_format(MC), ItemFormat)
    gen = Example("gsm", "Question: 1+1?\nAnswer:", (), -1, target="2", question="1+1?")
    with pytest.raises(ConfigError, match="row 'gsm' is generative"):
        task_format([*MC, gen])
    with pytest.raises(ConfigError, match=r"classification tasks only.*ItemFormat"):
        LabelFormat.of(MC)
