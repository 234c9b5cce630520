"""FDKT augmentation: prompts with k demonstrations per label, robust parsing, dedupe, resume."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from fedkt.data.augmentation import (
    LabelledText,
    augment,
    build_prompts,
    dedupe_against,
    parse_augmented,
)
from fedkt.data.synthetic import McItem, format_item, label_prefix
from fedkt.errors import ConfigError, DataError
from fedkt.generation import GenerationSettings, ResponseStore

LABELS = ["positive", "negative"]
POOLS = {
    "positive": [f"positive review number {i} loved the friendly staff" for i in range(6)],
    "negative": [f"negative review number {i} hated the dirty room" for i in range(4)],
}


class FakeBackend:
    """Answers each prompt by a function of the prompt, recording every prompt it saw."""

    def __init__(self, answer: str = "") -> None:
        self.answer = answer
        self.prompts: list[str] = []

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
        self.prompts += prompts
        return [self.answer or _answer_for(prompt) for prompt in prompts]


def _answer_for(prompt: str) -> str:
    # one new sample per label, made unique per prompt by its first demonstration
    first = prompt.split("Examples:\n", 1)[1].splitlines()[0]
    return (
        f"Label: positive | Text: a fresh happy story about {first[-12:]}\n"
        f"Label: negative | Text: a fresh sad story about {first[-12:]}\n"
    )


# ---- prompts -----------------------------------------------------------------------------------


def _demo_lines(prompt: str) -> list[str]:
    body = prompt.split("Examples:\n", 1)[1].split("\n\n", 1)[0]
    return body.splitlines()


def test_prompt_holds_k_demonstrations_per_label_in_the_answer_format() -> None:
    requests = build_prompts(POOLS, n_prompts=3, k=2, seed=0, domain="of hotel reviews")
    assert [r.id for r in requests] == ["aug0", "aug1", "aug2"]
    for request in requests:
        prompt = request.prompt
        assert "hotel reviews" in prompt and "not a copy" in prompt
        assert "Label: <label> | Text: <text>" in prompt
        assert prompt.endswith("New samples:\n")
        lines = _demo_lines(prompt)
        for label in LABELS:
            mine = [line for line in lines if line.startswith(label_prefix(label))]
            assert len(mine) == 2 and len(set(mine)) == 2
            assert all(line.split("| Text: ", 1)[1] in POOLS[label] for line in mine)
        # every demonstration parses back as the item it shows
        items, report = parse_augmented("\n".join(lines), LABELS)
        assert len(items) == 4 and report["kept"] == 4


def test_prompts_are_seeded_and_stable_as_more_are_asked_for() -> None:
    few = build_prompts(POOLS, n_prompts=2, k=1, seed=7)
    more = build_prompts(POOLS, n_prompts=5, k=1, seed=7)
    assert more[:2] == few
    assert build_prompts(POOLS, n_prompts=5, k=1, seed=8) != more
    # k larger than a pool takes the whole pool
    whole = build_prompts(POOLS, n_prompts=1, k=10, seed=0)[0].prompt
    assert len(_demo_lines(whole)) == 10


def test_clusters_spread_the_demonstrations() -> None:
    pools = {"positive": ["p a x y", "p b x y", "p c x y", "p d x y"]}
    clusters = {"positive": [0, 0, 1, 1]}
    for request in build_prompts(pools, 10, 2, 0, clusters_by_label=clusters):
        shown = [line.split("| Text: ")[1] for line in _demo_lines(request.prompt)]
        assert {clusters["positive"][pools["positive"].index(t)] for t in shown} == {0, 1}


def test_prompt_for_multiple_choice_shows_whole_items() -> None:
    items = [
        McItem("Which gas do plants take in?", ("Oxygen", "Carbon dioxide"), 1),
        McItem("What is the boiling point of water at sea level?", ("100 C", "50 C"), 0),
        McItem("Which planet is red?", ("Mars", "Venus", "Earth"), 0),
    ]
    prompt = build_prompts({"": items}, 1, 2, seed=0, kind="mc")[0].prompt
    lines = _demo_lines(prompt)
    assert len(lines) == 2 and all(line in [format_item(i) for i in items] for line in lines)
    assert "Answer: <letter>" in prompt and prompt.endswith("New items:\n")


def test_prompt_arguments_are_checked() -> None:
    with pytest.raises(ConfigError, match="k="):
        build_prompts(POOLS, 1, 0)
    with pytest.raises(ConfigError, match="kind"):
        build_prompts(POOLS, 1, 1, kind="tabular")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="empty"):
        build_prompts({"positive": []}, 1, 1)
    with pytest.raises(DataError, match="cluster ids"):
        build_prompts(POOLS, 1, 1, clusters_by_label={"positive": [0], "negative": [0] * 4})
    with pytest.raises(DataError, match="McItem"):
        build_prompts(POOLS, 1, 1, kind="mc")


# ---- parsing -----------------------------------------------------------------------------------


MESSY = """Sure! Here are the new samples you asked for:

1. **Label:** Negative | Text: "The carpet was stained and the shower barely worked."
2. Label: positive | Text: Lovely breakfast and the staff remembered our names.
Label: mixed | Text: Some good things and some bad things here.
Label: positive | Text: ok
Label: negative | Text:
Label: positive | Text: Lovely  breakfast and the staff remembered our names.
- Label: negative Text: Noise all night from the bar downstairs. {second_on_the_line}
Label: negative | Te
#$%&*(garbage)*&^%$
Label: positive | Text: The pool was warm and the spa was""".format(
    second_on_the_line="Label: positive | Text: Best view of the harbour we have ever had."
)


def test_parse_keeps_every_well_formed_item_of_a_messy_answer() -> None:
    items, report = parse_augmented(MESSY, LABELS)
    assert items == [
        LabelledText("negative", "The carpet was stained and the shower barely worked."),
        LabelledText("positive", "Lovely breakfast and the staff remembered our names."),
        LabelledText("negative", "Noise all night from the bar downstairs."),
        LabelledText("positive", "Best view of the harbour we have ever had."),
        LabelledText("positive", "The pool was warm and the spa was"),
    ]
    assert report == {
        "kept": 5,
        "unknown_label": 1,  # "mixed"
        "too_short": 1,  # "ok"
        "empty": 1,
        "duplicate": 1,  # the breakfast line again, spacing aside
        "malformed": 1,  # "Label: negative | Te"
        "chatter": 2,  # the opening sentence and the garbage line
    }


def test_parse_does_not_depend_on_the_order_of_labels() -> None:
    forward = "Label: positive | Text: one two three four\nLabel: negative | Text: five six seven"
    backward = "\n".join(reversed(forward.splitlines()))
    assert set(parse_augmented(forward, LABELS)[0]) == set(parse_augmented(backward, LABELS)[0])
    only_negative = "Label: negative | Text: five six seven eight"
    assert parse_augmented(only_negative, LABELS)[0] == [
        LabelledText("negative", "five six seven eight")
    ]


def test_parse_survives_garbage_and_nothing() -> None:
    for text in ["", "\n\n", "I cannot help with that.", "|||::: Text: Label:", "\x00\x01"]:
        items, report = parse_augmented(text, LABELS)
        assert items == [] and report["kept"] == 0
    assert parse_augmented(None, LABELS)[0] == []  # type: ignore[arg-type]


def test_parse_with_another_field_name_and_min_words() -> None:
    text = "Topic: Sci/Tech | Text: New chip doubles battery life\nTopic: World | Text: Talks end"
    items, report = parse_augmented(text, ["World", "Sci/Tech"], field="Topic", min_words=3)
    assert items == [LabelledText("Sci/Tech", "New chip doubles battery life")]
    assert report["too_short"] == 1
    # with no label list, any label is taken as written
    assert len(parse_augmented(text, field="Topic", min_words=1)[0]) == 2


MC_ANSWER = """Here you go:
Question: What is the capital of France? | Choices: A) Paris B) Rome C) Berlin | Answer: A
**Question:** Which planet is called the red planet?
Choices: A) Venus B) Mars C) Jupiter D) Saturn
Answer: B) Mars
I hope this helps!
Question: Broken item with one choice | Choices: A) only | Answer: A
Question: What gas do plants absorb from the air? Choices: A) Oxygen B) Carbon dioxide Answer: b.
Question: What is the capital of France? | Choices: A) Paris B) Rome C) Berlin | Answer: A
Question: Which ocean is the largest? | Choices: A) Pacific B) Atlantic | Answer: C
Question: Cut off at the end of generation | Choices: A) one B) tw"""


def test_parse_multiple_choice_items() -> None:
    items, report = parse_augmented(MC_ANSWER, kind="mc")
    assert items == [
        McItem("What is the capital of France?", ("Paris", "Rome", "Berlin"), 0),
        McItem("Which planet is called the red planet?", ("Venus", "Mars", "Jupiter", "Saturn"), 1),
        McItem("What gas do plants absorb from the air?", ("Oxygen", "Carbon dioxide"), 1),
    ]
    assert report["duplicate"] == 1
    assert report["malformed"] == 3  # one choice, answer C of two, cut off
    assert report["chatter"] == 2
    four, counts = parse_augmented(MC_ANSWER, kind="mc", n_choices=4)
    assert len(four) == 1 and counts["malformed"] == 6  # France twice, the gas item, 3 more


# ---- dedupe ------------------------------------------------------------------------------------


def test_dedupe_against_exact_and_near_verbatim_copies() -> None:
    demos = [
        "The staff were friendly and the room was spotless and quiet.",
        "Terrible food, cold coffee and a rude waiter at breakfast.",
    ]
    items = [
        LabelledText("positive", "the staff were friendly, and the room was spotless and quiet!"),
        LabelledText("negative", "Terrible food, cold coffee and a rude waiter at dinner."),
        LabelledText("negative", "The elevator was broken for our whole stay."),
        LabelledText("positive", "Friendly staff; spotless room; we will come back."),
    ]
    kept, dropped = dedupe_against(items, demos, threshold=0.6)
    assert kept == items[2:] and dropped == 2
    # a high threshold keeps the near copy but never an exact one
    kept, dropped = dedupe_against(items, demos, threshold=1.0)
    assert kept == items[1:] and dropped == 1
    assert dedupe_against(items, [], 0.8) == (list(items), 0)
    with pytest.raises(ConfigError):
        dedupe_against(items, demos, threshold=0)


def test_dedupe_multiple_choice_items_by_question_and_choices() -> None:
    demo = McItem("What is the capital of France?", ("Paris", "Rome"), 0)
    same = McItem("what is the capital of france", ("Paris", "Rome"), 1)
    other = McItem("What is the capital of Spain?", ("Madrid", "Lisbon"), 0)
    assert dedupe_against([same, other], [demo], 0.9) == ([other], 1)


# ---- the resumable run -------------------------------------------------------------------------


def test_augment_parses_dedupes_and_counts() -> None:
    prompts = build_prompts(POOLS, n_prompts=4, k=1, seed=0)
    backend = FakeBackend()
    result = augment(
        backend, prompts, GenerationSettings(batch_size=2), labels=LABELS, demonstrations=[]
    )
    assert len(backend.prompts) == 4
    assert {item.label for item in result.items} == set(LABELS)  # type: ignore[union-attr]
    assert result.report["responses"] == 4
    assert result.report["kept"] == len(result.items)
    assert set(result.responses) == {p.id for p in prompts}


def test_augment_drops_repeats_across_answers_and_copies_of_demonstrations() -> None:
    demo = POOLS["positive"][0]
    answer = f"Label: positive | Text: {demo}\nLabel: negative | Text: the lift was broken again\n"
    prompts = build_prompts(POOLS, n_prompts=3, k=1, seed=0)
    result = augment(
        FakeBackend(answer),
        prompts,
        GenerationSettings(),
        labels=LABELS,
        demonstrations=[t for pool in POOLS.values() for t in pool],
    )
    assert result.items == [LabelledText("negative", "the lift was broken again")]
    assert result.report["duplicate"] == 4  # both items again in answers 2 and 3
    assert result.report["copies_demonstration"] == 1


def test_augment_resumes_from_its_store(tmp_path: Path) -> None:
    prompts = build_prompts(POOLS, n_prompts=5, k=1, seed=0)
    path = tmp_path / "augment.jsonl"
    first = FakeBackend()
    augment(
        first, prompts[:3], GenerationSettings(batch_size=2), ResponseStore(path), labels=LABELS
    )
    assert len(first.prompts) == 3
    second = FakeBackend()
    result = augment(
        second, prompts, GenerationSettings(batch_size=2), ResponseStore(path), labels=LABELS
    )
    assert sorted(second.prompts) == sorted(p.prompt for p in prompts[3:])  # only the new ones
    assert set(result.responses) == {p.id for p in prompts}
    fresh = augment(FakeBackend(), prompts, GenerationSettings(batch_size=2), labels=LABELS)
    assert result.items == fresh.items


def test_zero_shot_prompts_name_every_label_hold_no_demonstration_and_differ() -> None:
    from fedkt.data.augmentation import build_zero_shot_prompts

    labels = ["World", "Sports", "Business", "Sci/Tech"]
    prompts = build_zero_shot_prompts(labels, 4, seed=3, per_label=2, field="Topic",
                                      domain="of news articles")  # fmt: skip
    assert [p.id for p in prompts] == [f"zero-shot{i}" for i in range(4)]
    assert len({p.prompt for p in prompts}) == 4  # each its own label order
    for prompt in prompts:
        assert "Examples:" not in prompt.prompt and "of news articles" in prompt.prompt
        assert all(label in prompt.prompt for label in labels)
        assert "Topic: <label> | Text: <text>" in prompt.prompt
    again = build_zero_shot_prompts(labels, 2, seed=3, per_label=2, field="Topic",
                                    domain="of news articles")  # fmt: skip
    assert [p.prompt for p in again] == [p.prompt for p in prompts[:2]]
    with pytest.raises(DataError, match="no labels"):
        build_zero_shot_prompts([], 2)
