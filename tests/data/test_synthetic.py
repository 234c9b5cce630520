"""FDKT's text formats: label prefixes, the synthetic-text filter, multiple-choice items."""

from __future__ import annotations

import pytest

from fedkt.data.synthetic import (
    ITEM_DROP_REASONS,
    ITEM_PREFIX,
    McItem,
    SyntheticFilter,
    clean_item,
    clean_synthetic,
    format_item,
    format_sample,
    label_prefix,
    parse_item,
)
from fedkt.errors import ConfigError, DataError

RULE = SyntheticFilter(min_words=3, max_words=10)
PREFIXES = [label_prefix(label, "Topic") for label in ("World", "Sports")]


def test_label_prefix_and_sample() -> None:
    prefix = label_prefix("Sci/Tech", "Topic")
    assert prefix == "Topic: Sci/Tech | Text:"
    assert (
        format_sample(prefix, "  New chip\n is  fast ")
        == "Topic: Sci/Tech | Text: New chip is fast"
    )
    assert label_prefix("1") == "Label: 1 | Text:"


@pytest.mark.parametrize(("label", "field"), [("", "Topic"), ("a|b", "Topic"), ("a", "x\ny")])
def test_label_prefix_refuses_unparseable_labels(label: str, field: str) -> None:
    with pytest.raises(ConfigError, match="label_prefix"):
        label_prefix(label, field)


def test_format_sample_refuses_empty_text() -> None:
    with pytest.raises(DataError, match="empty"):
        format_sample(PREFIXES[0], " \n ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" Leaders met to discuss peace.", ("Leaders met to discuss peace.", "kept")),
        # the generator restates its prompt (once or twice)
        ("Topic: World | Text: Leaders met in Paris", ("Leaders met in Paris", "kept")),
        (
            "Topic: Sports | Text: Topic: Sports | Text: The team won again",
            ("The team won again", "kept"),
        ),
        # it runs on into a next sample: cut at the next field, or at a bare "| Text:"
        ("Leaders met in Paris. Topic: Sports | Text: The team", ("Leaders met in Paris.", "kept")),
        ("Leaders met in Paris today | Text: more", ("Leaders met in Paris today", "kept")),
        ("  \n ", (None, "empty")),
        ("Topic: World | Text:", (None, "empty")),
        ("Two words", (None, "too_short")),
        (" ".join(["word"] * 11), (None, "too_long")),
        ("multi\nline   text here", ("multi line text here", "kept")),
    ],
)
def test_clean_synthetic(text: str, expected: tuple[str | None, str]) -> None:
    assert clean_synthetic(text, PREFIXES, RULE) == expected


def test_filter_checks_its_bounds() -> None:
    with pytest.raises(ConfigError, match="min_words"):
        SyntheticFilter(min_words=5, max_words=4)
    with pytest.raises(ConfigError, match="min_words"):
        SyntheticFilter(min_words=0)


ITEM = McItem("Which gas do plants absorb?", ("oxygen", "carbon dioxide", "helium"), 1)


def test_item_round_trip() -> None:
    text = format_item(ITEM)
    assert text == (
        "Question: Which gas do plants absorb? | Choices: A) oxygen B) carbon dioxide "
        "C) helium | Answer: B"
    )
    assert text.startswith(ITEM_PREFIX)
    assert parse_item(text) == ITEM
    # a "|" inside a field is fine: the parser anchors on "| Choices:" and "| Answer:"
    odd = McItem("a | b?", ("x | y", "z"), 1)
    assert parse_item(format_item(odd)) == odd
    # generated text: spacing, a trailing period, and newlines are tolerated
    assert (
        parse_item(
            "Question:  Which gas do plants absorb?|Choices: A) oxygen\nB) carbon "
            "dioxide C)  helium |Answer: B."
        )
        == ITEM
    )


def test_item_round_trip_normalises_whitespace() -> None:
    messy = McItem(" Why\n is the sky blue? ", ("scattering", " lenses "), 0)
    assert parse_item(format_item(messy)) == McItem(
        "Why is the sky blue?", ("scattering", "lenses"), 0
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Question: q | Choices: A) x B) y",  # no answer
        "Question:  | Choices: A) x B) y | Answer: A",  # empty question
        "Question: q | Choices: A) x | Answer: A",  # one choice
        "Question: q | Choices: A) x B) y | Answer: C",  # answer not among the choices
        "Question: q | Choices: A) x B) X | Answer: A",  # duplicate choices (case-insensitive)
        "Question: q | Choices: A) x C) y | Answer: A",  # letters not in order
        "Question: q | Choices: B) x C) y | Answer: B",  # not starting at A
        "Question: q | Choices: A)  B) y | Answer: A",  # empty choice
        "Question: q | Choices: so A) x B) y | Answer: A",  # text before A)
        "Question: q | Choices: A) x B) y | Answer: A because x is right",  # trailing text
        "Topic: World | Text: not an item",
    ],
)
def test_parse_item_drops_malformed(text: str) -> None:
    assert parse_item(text) is None


@pytest.mark.parametrize(
    "item",
    [
        McItem("q", ("x",), 0),
        McItem("q", ("x", "y"), 2),
        McItem("q", ("x", "y"), -1),
        McItem("q", ("x", "y B) z"), 0),
        McItem("q", ("x", "x"), 0),
        McItem("q", ("x", ""), 0),
        McItem("", ("x", "y"), 0),
    ],
)
def test_format_item_refuses_what_would_not_parse_back(item: McItem) -> None:
    with pytest.raises(DataError, match="format_item"):
        format_item(item)


GENERATED = (
    " Which gas do plants absorb? | Choices: A) oxygen B) carbon dioxide C) helium | Answer: B"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # what a generator writes after the bare "Question:" prompt
        (GENERATED, (ITEM, "kept")),
        (GENERATED + ".", (ITEM, "kept")),
        # it restates its prompt, or runs on into a next item: stripped, cut
        (" Question:" + GENERATED, (ITEM, "kept")),
        (GENERATED + "\nQuestion: Why is | Choices: A) x", (ITEM, "kept")),
        ("  \n", (None, "empty")),
        (" Question:", (None, "empty")),
        (" Which gas? | Choices: A) oxygen B) carbon dioxide", (None, "malformed")),
        (" Which gas? | Choices: A) oxygen B) oxygen | Answer: A", (None, "malformed")),
        (GENERATED + " because plants need it", (None, "malformed")),
        (" Which gas? | Choices: A) oxygen B) carbon dioxide | Answer: B", (None, "too_short")),
        (
            " Which gas do plants absorb? | Choices: A) " + "very " * 10 + "B) no | Answer: A",
            (None, "too_long"),
        ),
    ],
)
def test_clean_item(text: str, expected: tuple[McItem | None, str]) -> None:
    assert clean_item(text, SyntheticFilter(min_words=3, max_words=14)) == expected
    assert expected[1] == "kept" or expected[1] in ITEM_DROP_REASONS


def test_clean_item_checks_the_number_of_choices() -> None:
    rule = SyntheticFilter(min_words=1)
    assert clean_item(GENERATED, rule, n_choices=3) == (ITEM, "kept")
    assert clean_item(GENERATED, rule, n_choices=4) == (None, "choice_count")
