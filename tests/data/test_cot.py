"""FedCoT's formats put the original question only where the spec allows, and round-trip."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from fedkt.data import (
    RATIONALE_STOP,
    TARGET_DELIMITER,
    WORKED_EXAMPLES,
    Example,
    clean_rationale,
    explain_example,
    load_examples,
    predict_example,
    rationale_request,
    recovery_prompt,
    render_question,
)
from fedkt.data.cot import (
    ANSWER_PHRASE,
    answer_choice,
    cut_rationale,
    evaluation_example,
    label_names,
    llm_evaluation_example,
    private_fields,
    render_fields,
    states_answer,
)
from fedkt.errors import ConfigError, DataError
from fedkt.evaluation import score_choices
from fedkt.training import IGNORE_INDEX, encode_answer_only

MC = Example(
    id="arc-7",
    context="Question: Which gas do plants absorb from the air?\nAnswer:",
    choices=("oxygen", "carbon dioxide", "helium"),
    gold=1,
    question="Which gas do plants absorb from the air?",
)
GEN = Example(
    id="gsm8k-train-3",
    context="Question: Natalia sold 48 clips in April and half as many in May. How many?\nAnswer:",
    choices=(),
    gold=-1,
    target="48 / 2 = 24 in May, 48 + 24 = 72.\n#### 72",
    answer="72",
    question="Natalia sold 48 clips in April and half as many in May. How many?",
)
RATIONALE = (
    "Plants take in carbon dioxide and release oxygen during photosynthesis. "
    "Therefore, the answer is carbon dioxide."
)

# Distinct strings: nothing of the original may leak into what the server receives.
ORIGINAL = "Which gas do plants absorb from the air?\nChoices: oxygen; carbon dioxide; helium"
PERTURBED = "Which vapor do trees soak from the sky?\nChoices: ozone; coal monoxide; neon"
PERTURBED_RATIONALE = (
    "Trees take in coal monoxide at night. Therefore, the answer is coal monoxide."
)


def test_render_question_lists_the_choice_texts_or_the_bare_question() -> None:
    assert render_question(MC) == ORIGINAL
    assert render_question(GEN) == GEN.question


def test_private_fields_render_back_into_the_public_template() -> None:
    assert private_fields(MC) == (MC.question, *MC.choices)
    assert private_fields(GEN) == (GEN.question,)
    assert render_fields(MC, private_fields(MC)) == render_question(MC)
    assert render_fields(MC, ("q", "a", "b", "c")) == "q\nChoices: a; b; c"
    labels = MC.choices  # as if the choices were a classification task's label names
    assert private_fields(MC, labels) == (MC.question,)
    assert render_fields(MC, ("q",)) == "q\nChoices: oxygen; carbon dioxide; helium"
    with pytest.raises(DataError, match="fields"):
        render_fields(MC, ("q", "a"))
    assert label_names([MC, MC]) == MC.choices and label_names([MC]) == ()
    assert label_names([GEN, GEN]) == () and label_names([MC, _other_choices()]) == ()


def _other_choices() -> Example:
    return Example(id="x", context="c", choices=("yes", "no"), gold=0, question="q")


def test_render_question_needs_the_raw_question() -> None:
    bare = Example("x", "Question: Q?\nAnswer:", ("a", "b"), 0)
    with pytest.raises(DataError, match="'x' has no question text"):
        render_question(bare)


@pytest.mark.parametrize("kind", ["multiple_choice", "generative"])
def test_rationale_request_holds_the_perturbed_question_only(kind: str) -> None:
    prompt = rationale_request(PERTURBED, kind)
    worked = WORKED_EXAMPLES[kind]
    assert prompt.endswith(f"\n\nQuestion: {PERTURBED}\nRationale:")
    assert f"Question: {worked.question}\nRationale: {worked.rationale}" in prompt
    assert ANSWER_PHRASE in prompt.split("\n\n")[0]  # the instruction asks for the phrase
    for private in ("plants", "absorb", "carbon dioxide", "helium", "air?"):
        assert private not in prompt


@pytest.mark.parametrize("kind", ["multiple_choice", "generative"])
def test_recovery_prompt_demonstrates_then_asks_the_original(kind: str) -> None:
    prompt = recovery_prompt(PERTURBED, PERTURBED_RATIONALE, ORIGINAL, kind)
    worked = WORKED_EXAMPLES[kind]
    blocks = prompt.split("\n\n")
    assert blocks[1:] == [
        f"Question: {worked.question}\nRationale: {worked.rationale}",
        f"Question: {PERTURBED}\nRationale: {PERTURBED_RATIONALE}",
        f"Question: {ORIGINAL}\nRationale:",
    ]
    assert prompt.count(ORIGINAL) == 1


def test_recovery_prompt_cuts_the_server_rationale_at_its_first_block() -> None:
    raw = f"  {PERTURBED_RATIONALE}\n\nQuestion: another one?\nRationale: more"
    assert recovery_prompt(PERTURBED, raw, ORIGINAL, "multiple_choice") == recovery_prompt(
        PERTURBED, PERTURBED_RATIONALE, ORIGINAL, "multiple_choice"
    )


def test_prompts_check_their_parts() -> None:
    with pytest.raises(
        DataError, match=r"unknown task kind 'cloze'.*multiple_choice, classification, generative"
    ):
        rationale_request(PERTURBED, "cloze")
    with pytest.raises(DataError, match="perturbed_question is empty"):
        rationale_request("  ", "multiple_choice")
    with pytest.raises(DataError, match="perturbed_rationale is empty"):
        recovery_prompt(PERTURBED, "\n", ORIGINAL, "multiple_choice")
    with pytest.raises(DataError, match="original_question is empty"):
        recovery_prompt(PERTURBED, PERTURBED_RATIONALE, "", "multiple_choice")


@pytest.mark.parametrize("kind", ["multiple_choice", "generative"])
def test_worked_examples_end_with_their_answer_and_pass_the_filter(kind: str) -> None:
    worked = WORKED_EXAMPLES[kind]
    assert worked.rationale.endswith(f"{ANSWER_PHRASE} {worked.answer}.")
    assert not any(stop in worked.rationale for stop in RATIONALE_STOP)
    assert clean_rationale(worked.rationale) == worked.rationale


def test_worked_examples_are_in_no_dataset_split(shared_data_dir: Path) -> None:
    """They are sent to the server, so they must be public inventions, not task rows."""
    openings = [w.question.split("\n")[0][:60] for w in WORKED_EXAMPLES.values()]
    for path in shared_data_dir.rglob("*.jsonl"):
        text = path.read_text(encoding="utf-8")
        assert not [o for o in openings if o in text], path


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n  ",
        "\n\nQuestion: what next?",  # only the start of a next block
        "Heat flows.",  # too short
        "1 2 3 4 5 6 7 8",  # no letters
        "... !!! ??? --- ### ***",
        "yes yes yes yes yes yes",  # one word repeated
        "answer answer answer is is the answer answer answer answer",  # one word dominates
        "a b c a c b b a c a b c c b a b a c",  # a few words shuffled
        "The heat moves in. " * 8,  # a phrase loop
        "It is hot so it melts. So it melts. So it melts. So it melts. So it melts. So it melts.",
    ],
)
def test_clean_rationale_rejects_empty_and_degenerate_text(text: str) -> None:
    assert clean_rationale(text) is None


def test_clean_rationale_keeps_a_normal_rationale_and_cuts_what_follows() -> None:
    assert clean_rationale(f"  {RATIONALE}  ") == RATIONALE
    assert clean_rationale(f"{RATIONALE}\n\nQuestion: Which gas do we breathe?") == RATIONALE
    assert clean_rationale(f"{RATIONALE}\nQuestion: Which gas?\nRationale: x") == RATIONALE
    assert clean_rationale(f"{RATIONALE}\nRationale: something else entirely") == RATIONALE
    two_lines = "First, 48 / 2 = 24 clips in May.\nThen 48 + 24 = 72 clips in all."
    assert clean_rationale(two_lines) == two_lines  # single newlines stay


def test_clean_rationale_joins_the_paragraphs_of_a_chat_answer() -> None:
    chat = (
        "To solve this, we halve 48.\n\nIn May she sold 48 / 2 = 24 clips.\n \n"
        "In all 48 + 24 = 72.\n\nTherefore, the answer is 72.\n\nAnything else?"
    )
    joined = (
        "To solve this, we halve 48.\nIn May she sold 48 / 2 = 24 clips.\n"
        "In all 48 + 24 = 72.\nTherefore, the answer is 72."
    )
    assert clean_rationale(chat) == cut_rationale(chat) == joined
    assert cut_rationale("  \n ") == "" and cut_rationale("Question: next?") == "Question: next?"


def test_answers_are_read_from_the_answer_line() -> None:
    choices = ("oxygen", "carbon dioxide", "carbon", "helium gas")
    assert states_answer("so The answer is 3.") and states_answer("48 / 2 = 24\n#### 24")
    assert not states_answer("Plants take in carbon dioxide.")
    assert answer_choice("It is a gas. Therefore, the answer is carbon dioxide.", choices) == 1
    assert answer_choice("the answer is: Oxygen!\nMore text about helium gas", choices) == 0
    assert answer_choice("The answer is the carbon dioxide gas.", choices) == 1  # longest held
    assert answer_choice("The answer is helium gas or oxygen.", choices) == 3
    assert answer_choice("The answer is neon.", choices) is None
    assert answer_choice("Carbon dioxide, I think.", choices) is None  # states no answer
    assert answer_choice("The answer is ab or cd.", ("ab", "cd")) is None  # a tie
    # the last answer line counts (a rationale may quote the example's phrase first)
    assert answer_choice("The answer is oxygen? No: the answer is carbon.", choices) == 2


def test_the_test_formats_predict_multiple_choice_and_explain_generative_rows() -> None:
    assert evaluation_example(MC) == predict_example(MC)
    assert llm_evaluation_example(MC) == predict_example(MC)
    slm = evaluation_example(GEN)
    assert slm.context == f"Explain:\nQuestion: {GEN.question}\nRationale:"
    assert (slm.id, slm.answer, slm.is_generative) == (GEN.id, "72", True)
    llm = llm_evaluation_example(GEN)  # the request the non-private server answers
    assert llm.context == rationale_request(GEN.question, "generative")
    assert (llm.id, llm.answer, llm.is_generative) == (GEN.id, "72", True)
    assert "#### 72" not in slm.context + llm.context + slm.target + llm.target


def test_clean_rationale_min_words() -> None:
    assert clean_rationale("Carbon dioxide feeds plants.", min_words=4) is not None
    assert clean_rationale("Carbon dioxide feeds plants.", min_words=5) is None
    with pytest.raises(ConfigError, match="min_words"):
        clean_rationale(RATIONALE, min_words=0)


def test_clean_rationale_keeps_real_worked_solutions(shared_data_dir: Path) -> None:
    """GSM8K's human solutions (before ####) are normal rationales: the filter keeps them."""
    examples = load_examples("gsm8k", "train", shared_data_dir, limit=200)
    solutions = [e.target.split("####")[0].replace("\n\n", "\n").strip() for e in examples]
    long_enough = [s for s in solutions if len(s.split()) >= 5]
    assert len(long_enough) > 190
    assert [clean_rationale(s) for s in long_enough] == long_enough


def test_predict_example_keeps_the_choices_and_trains_a_generative_one_on_its_label() -> None:
    predict = predict_example(MC)
    assert predict.context == f"Predict:\nQuestion: {ORIGINAL}\nAnswer:"
    assert (predict.id, predict.choices, predict.gold, predict.question) == (
        MC.id,
        MC.choices,
        MC.gold,
        MC.question,
    )
    assert predict.training_pair() == (predict.context, TARGET_DELIMITER + "carbon dioxide")
    generative = predict_example(GEN)
    assert generative.context == f"Predict:\nQuestion: {GEN.question}\nAnswer:"
    # the label only, stated as a rationale states it: the row's own worked solution is not
    # what a FedCoT client holds
    statement = f"{ANSWER_PHRASE} 72."
    assert (generative.id, generative.target, generative.answer) == (GEN.id, statement, "72")


def test_explain_example_trains_on_the_rationale() -> None:
    explain = explain_example(MC, f"  {RATIONALE}\n")
    assert explain.context == f"Explain:\nQuestion: {ORIGINAL}\nRationale:"
    assert (explain.id, explain.is_generative, explain.target) == (MC.id, True, RATIONALE)
    assert explain.training_pair() == (explain.context, TARGET_DELIMITER + RATIONALE)
    assert explain_example(GEN, RATIONALE).context == (
        f"Explain:\nQuestion: {GEN.question}\nRationale:"
    )
    with pytest.raises(DataError, match="'arc-7': explain_example got an empty rationale"):
        explain_example(MC, " \n")


@pytest.mark.parametrize(
    ("example", "answer"),
    [
        (predict_example(MC), " carbon dioxide"),
        (predict_example(GEN), f" {ANSWER_PHRASE} 72."),
        (explain_example(MC, RATIONALE), " " + RATIONALE),
    ],
)
def test_derived_examples_round_trip_through_training_pairs(
    tiny_tokenizer: PreTrainedTokenizerFast, example: Example, answer: str
) -> None:
    encoded = encode_answer_only(tiny_tokenizer, *example.training_pair(), max_length=512)
    n_context = encoded["labels"].count(IGNORE_INDEX)  # labels: -100 * context, then answer
    assert encoded["labels"][n_context:] == encoded["input_ids"][n_context:]
    assert tiny_tokenizer.decode(encoded["input_ids"][:n_context]) == example.context
    learned = tiny_tokenizer.decode(encoded["input_ids"][n_context:])
    assert learned == answer + tiny_tokenizer.eos_token


def test_predict_examples_are_scored_with_the_predict_prefix(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    scores = score_choices(tiny_llama, tiny_tokenizer, [MC, predict_example(MC)])
    assert [len(s) for s in scores] == [3, 3]
    assert scores[0] != scores[1]  # the prefix is part of what is scored


@pytest.mark.parametrize(
    ("task", "split"),
    [
        ("arc_easy", "train"),
        ("arc_challenge", "validation"),
        ("openbookqa", "train"),
        ("commonsense_qa", "validation"),
        ("gsm8k", "train"),
        ("ag_news", "train"),
    ],
)
def test_real_rows_render_into_every_format(shared_data_dir: Path, task: str, split: str) -> None:
    for example in load_examples(task, split, shared_data_dir, limit=3):
        assert example.question and example.question in example.context
        rendered = render_question(example)
        assert rendered.startswith(example.question)
        assert ("\nChoices: " in rendered) != example.is_generative
        assert predict_example(example).context.startswith(f"Predict:\nQuestion: {rendered}")
        assert explain_example(example, RATIONALE).id == example.id
        assert rendered in recovery_prompt(PERTURBED, PERTURBED_RATIONALE, rendered, "generative")
