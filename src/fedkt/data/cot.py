"""FedCoT's text formats: the question rendering, the server and recovery prompts, the
rationale filter, and the two training tasks (spec ``shared/specs/fedcot.md``, protocol 1-5).

Only strings live here; perturbation is `fedkt.privacy`'s job and training is
`fedkt.training.train_multitask`'s. Decisions the spec leaves open:

- Three prompt kinds, each with its instruction and one invented worked example:
  multiple choice (a science question), classification (a row whose choices are the task's
  public label names, e.g. AG News: "what is the text about", a news-topic example; on AG
  News the 135M server LLM's rationales reach the gold label 53 % of the time with it against
  20 % with the multiple-choice prompt, 40 train rows, raw prompts) and generative (GSM8K).
- Choices are rendered ``"Choices: x; y; z"``, choice texts joined by ``"; "`` with no
  letters. The student is trained and scored on the choice *text* (log-likelihood of
  ``choices[gold]``), and a rationale ends "Therefore, the answer is <choice text>"; letters
  would invite "the answer is B", which the predict task never uses.
- Prompts are blocks joined by a blank line: instruction, worked example, (recovery only) the
  perturbed demonstration, then ``"Question: ...\\nRationale:"``. So a blank line or a new
  ``"Question:"`` ends a raw continuation (`RATIONALE_STOP`); a model answering in its chat
  template ends its turn instead, and only ``"Question:"`` stops it (`CHAT_RATIONALE_STOP`).
- The spec writes the training prefixes as ``"Answer:\\n"`` and ``"Rationale:\\n"``. fedkt's
  evaluators put `TARGET_DELIMITER` (one space) between context and every continuation, so
  the contexts here end at ``"Answer:"`` / ``"Rationale:"`` and the space comes from
  `Example.training_pair`: training and log-likelihood scoring see the same token boundary,
  and the explain target reads like the ``"Rationale: ..."`` lines of the prompts.
- Only the private fields of a question are perturbed (`private_fields`): the question and,
  for multiple choice, the choices. The template ("Choices:", separators, the instruction,
  the worked example) and a classification task's label names are public and go out as
  they are (`render_fields` puts the perturbed fields back into the template).
- Derived examples keep the source id unchanged: predict and explain examples live in
  separate lists, and `train_multitask` pairs a question's two tasks by that shared id.
- Test formats (`evaluation_example`): a multiple-choice task is scored with the spec's
  predict prefix (log-likelihood of each choice); a generative reasoning task (GSM8K) is
  scored explain-then-answer: the model writes a rationale after the explain prefix and the
  number its answer line names is graded. A bare number after "Answer:" asks a small model
  to do the arithmetic in one token, which scores ~0 for every method. The server LLM is
  scored on the request it answers in the protocol (`llm_evaluation_example`).
- A generative predict target states the answer as every rationale does
  (``"Therefore, the answer is 72."``), so the answer is read the same way whichever task
  a model learned it from.
- An instruction-tuned server answers in its chat template with paragraphs; a rationale's
  blank lines are joined into single line breaks (`clean_rationale`), so one rationale stays
  one prompt block.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from fedkt.data.example import Example
from fedkt.errors import ConfigError, DataError

ANSWER_PHRASE = "Therefore, the answer is"
"""How every worked rationale ends, and what the instructions ask the LLM to end with."""

CHOICE_SEPARATOR = "; "

RATIONALE_STOP: tuple[str, ...] = ("\n\n", "\nQuestion:")
"""Stop strings for the server's and the recovery generation: prompt blocks are separated by
a blank line, so either marks the start of a next block, not more rationale."""

CHAT_RATIONALE_STOP: tuple[str, ...] = ("\nQuestion:",)
"""The server's stop strings when it answers in its chat template: its end-of-turn token ends
the answer, whose paragraphs are separated by blank lines (joined by `clean_rationale`)."""

MAX_TOP_WORD_SHARE = 0.5
"""`clean_rationale` rejects text in which one word makes up more than half of the words."""

MIN_DISTINCT_WORD_RATIO = 0.2
"""`clean_rationale` rejects text whose distinct words are fewer than 20 % of its words (a few
words shuffled or cycled). The ratio falls with length; all 7,473 GSM8K training solutions
(up to ~200 words, the length of a 256-token rationale) stay above 0.27."""

ANSWER_CUE = re.compile(r"the answer is|####", re.IGNORECASE)
"""What states an answer in a rationale (`states_answer`): the end of `ANSWER_PHRASE`, in
any case ("The answer is 3."), or GSM8K's ``####``."""

LOOP_NGRAM = 4
MIN_DISTINCT_NGRAM_RATIO = 0.5
"""`clean_rationale` rejects text whose distinct word 4-grams are fewer than half of its
4-grams: a phrase loop repeated k times has a ratio near 1/k, normal text near 1."""


@dataclass(frozen=True)
class WorkedExample:
    """One public demonstration: a rendered question, its rationale, and the answer it names.

    Invented for fedkt, not taken from any dataset split, so sending it reveals nothing.
    """

    question: str  # already rendered, as `render_question` renders a real question
    rationale: str  # ends with ANSWER_PHRASE + " " + answer + "."
    answer: str


def _render(question: str, choices: tuple[str, ...]) -> str:
    """The one place the spec's ``"{question}\\nChoices: {choices}"`` format is written."""
    if not choices:
        return question
    return f"{question}\nChoices: {CHOICE_SEPARATOR.join(choices)}"


WORKED_EXAMPLES: dict[str, WorkedExample] = {
    "multiple_choice": WorkedExample(
        question=_render(
            "Lena puts two identical ice cubes in a warm kitchen, one on a metal tray and one "
            "on a thick wool cloth. Why does the ice cube on the metal tray melt first?",
            (
                "wool makes the ice colder than the air",
                "metal moves heat from the room into the ice quickly",
                "metal reflects light away from the ice",
                "the ice cube on the tray is heavier",
            ),
        ),
        rationale=(
            "Both ice cubes sit in the same warm room, so the difference must come from what "
            "they rest on. Metal is a good conductor of heat, so it carries heat from the room "
            "into the ice cube quickly. Wool is a poor conductor, so it slows the flow of heat "
            "into the other cube. Therefore, the answer is metal moves heat from the room into "
            "the ice quickly."
        ),
        answer="metal moves heat from the room into the ice quickly",
    ),
    "classification": WorkedExample(
        question=_render(
            "Shares of the carmaker fell 4 percent on Tuesday after it cut its profit forecast "
            "for the year, citing weak demand in Europe and higher steel prices.",
            ("World", "Sports", "Business", "Science and Technology"),
        ),
        rationale=(
            "The text is about a company's share price, its profit forecast and demand for its "
            "products. These are matters of companies and markets. Therefore, the answer is "
            "Business."
        ),
        answer="Business",
    ),
    "generative": WorkedExample(
        question=(
            "A school library has 4 shelves with 25 books on each shelf. It gives away 30 "
            "books and then buys 12 new ones. How many books does the library have now?"
        ),
        rationale=(
            "The library starts with 4 * 25 = 100 books. After giving away 30 books it has "
            "100 - 30 = 70 books. Buying 12 new ones gives 70 + 12 = 82 books. Therefore, the "
            "answer is 82."
        ),
        answer="82",
    ),
}

_INSTRUCTIONS: dict[str, str] = {
    "multiple_choice": (
        "Answer the multiple-choice question. Some words of the question may have been "
        "replaced by similar words; answer the question it most likely asks. Reason step by "
        f'step in a few sentences, then end with "{ANSWER_PHRASE}" followed by the text of '
        "the correct choice."
    ),
    "classification": (
        "Classify the text into one of the choices. Some words of the text may have been "
        "replaced by similar words. Explain in one or two sentences what the text is about, "
        f'then end with "{ANSWER_PHRASE}" followed by the correct choice.'
    ),
    "generative": (
        "Solve the problem. Some words of the question may have been replaced by similar "
        "words; solve the problem it most likely states. Reason step by step, showing each "
        f'calculation, then end with "{ANSWER_PHRASE}" followed by the final answer.'
    ),
}


def render_question(example: Example) -> str:
    """``"{question}\\nChoices: c1; c2; ..."`` (multiple choice) or the bare question (generative).

    This is the text a client perturbs and the question line of every FedCoT format.
    """
    if not example.question.strip():
        raise DataError(
            f"example {example.id!r} has no question text; FedCoT re-wraps the raw question, "
            "so load examples with fedkt.data.load_examples (its tasks fill `question`)"
        )
    return _render(example.question, example.choices)


def private_fields(example: Example, label_names: Sequence[str] = ()) -> tuple[str, ...]:
    """The private parts of `render_question` (what a client perturbs and counts eps for).

    The question, and for multiple choice its choices; the template ("Choices:", the
    separators) is public. So are a classification task's label names: a row whose choices
    are exactly ``label_names`` keeps them in clear (see `label_names`).
    """
    render_question(example)  # refuses a row without question text
    if example.choices and tuple(example.choices) != tuple(label_names):
        return (example.question, *example.choices)
    return (example.question,)


def render_fields(example: Example, fields: Sequence[str]) -> str:
    """`render_question` of ``example`` with its `private_fields` replaced by ``fields`` (e.g.
    their perturbed texts), in the same order."""
    if len(fields) not in (1, 1 + len(example.choices)):
        raise DataError(
            f"example {example.id!r}: render_fields got {len(fields)} fields; give the "
            f"question alone or the question and its {len(example.choices)} choices"
        )
    question, *choices = fields
    return _render(question, tuple(choices) if choices else example.choices)


def label_names(examples: Sequence[Example]) -> tuple[str, ...]:
    """A classification task's label names: the choices every row shares (at least two rows,
    e.g. AG News's topics), public by nature; ``()`` for multiple choice or generative rows."""
    rows = list(examples)
    if len(rows) < 2 or not rows[0].choices:
        return ()
    first = tuple(rows[0].choices)
    return first if all(tuple(row.choices) == first for row in rows) else ()


def prompt_kind(example: Example, label_names: Sequence[str] = ()) -> str:
    """The FedCoT prompt kind of a row: "generative", "classification" (its choices are the
    task's public ``label_names``) or "multiple_choice"."""
    if example.is_generative:
        return "generative"
    if label_names and tuple(example.choices) == tuple(label_names):
        return "classification"
    return "multiple_choice"


def rationale_request(perturbed_question: str, kind: str) -> str:
    """The prompt sent to the server (spec step 2); it holds the perturbed question only.

    Instruction, the public worked example of `kind`, then the perturbed question, ending
    ``"Rationale:"`` so the LLM continues with a chain of thought.
    """
    question = _require_text(perturbed_question, "perturbed_question")
    return _prompt(kind, [], question)


def recovery_prompt(
    perturbed_question: str, perturbed_rationale: str, original_question: str, kind: str
) -> str:
    """The client's few-shot prompt that recovers a rationale for the real question (step 4).

    The worked example, then (perturbed question, perturbed rationale) as a demonstration,
    then the ORIGINAL question, ending ``"Rationale:"``. The perturbed rationale is cut like
    `clean_rationale` cuts (first `RATIONALE_STOP`, end of the answer line), so a blank line
    inside it cannot end the demonstration early; it is not filtered (use `clean_rationale`
    for that). This prompt never leaves the client.
    """
    demonstration = (
        _require_text(perturbed_question, "perturbed_question"),
        _require_text(_cut(perturbed_rationale), "perturbed_rationale"),
    )
    original = _require_text(original_question, "original_question")
    return _prompt(kind, [demonstration], original)


def clean_rationale(text: str, *, min_words: int = 5) -> str | None:
    """A generated rationale cut to its first block, or None when it is empty or degenerate.

    Cleaning: strip; join paragraphs (a blank line becomes one line break: a chat model's
    answer has paragraphs, and the prompt formats use blank lines between blocks); cut at
    the first `RATIONALE_STOP` (a new ``"Question:"`` line); cut after the line that says
    `ANSWER_PHRASE` (what follows it is not rationale); strip again. Rejected (None): fewer
    than `min_words` words (punctuation-only tokens do not count), no letter at all, one word
    above `MAX_TOP_WORD_SHARE` of the words, distinct words below `MIN_DISTINCT_WORD_RATIO` of
    the words, or distinct word `LOOP_NGRAM`-grams below `MIN_DISTINCT_NGRAM_RATIO` of all
    of them (a phrase loop). Words are compared lower-cased, surrounding punctuation removed.
    """
    if min_words < 1:
        raise ConfigError(f"clean_rationale: min_words must be >= 1, got {min_words}")
    cleaned = _cut(text)
    words = [w.strip(string.punctuation).lower() for w in cleaned.split()]
    words = [w for w in words if w]
    if len(words) < min_words or not any(c.isalpha() for c in cleaned):
        return None
    return None if _repetitive(words) else cleaned


def cut_rationale(text: str) -> str:
    """`clean_rationale`'s cut without its filter: paragraphs joined, cut at the first stop
    and after the answer line (what the client reads an answer from); may be empty."""
    return _cut(text)


def predict_example(example: Example) -> Example:
    """The predict task: ``"Predict:\\nQuestion: {q}\\nChoices: {choices}\\nAnswer:"``.

    A multiple-choice example keeps choices and gold, so the log-likelihood evaluator scores
    it with this prefix (the spec's test format). A generative one is trained on its label
    only, the final answer stated as a rationale states it (`answer_statement`, GSM8K:
    "Therefore, the answer is 72.", not the worked solution): FedCoT's premise is that a
    client holds questions and labels, and rationales come from the LLM. A row's own human
    rationale would otherwise reach the label-only baseline and the predict task.
    """
    context = f"Predict:\nQuestion: {render_question(example)}\nAnswer:"
    if example.is_generative:
        target = answer_statement(example.answer)
        return dataclasses.replace(example, context=context, target=target)
    return dataclasses.replace(example, context=context)


def answer_statement(answer: str) -> str:
    """``"Therefore, the answer is <answer>."``: how every rationale ends."""
    return f"{ANSWER_PHRASE} {answer.strip()}."


def evaluation_example(example: Example) -> Example:
    """The row every client SLM (and the harness's SLM baselines) is scored on.

    Multiple choice: the predict prefix, scored by log-likelihood (the spec's test format).
    Generative: explain-then-answer, ``"Explain:\\nQuestion: {q}\\nRationale:"``; the model
    writes its rationale and the number it ends on is graded against ``answer`` (exact
    match). The generation budget must hold a whole rationale (GSM8K: ~256 new tokens).
    """
    if not example.is_generative:
        return predict_example(example)
    return explain_example(example, answer_statement(example.answer))


def llm_evaluation_example(example: Example) -> Example:
    """The row the server LLM is scored on: multiple choice as `evaluation_example`; a
    generative question as the protocol's request for the raw question (instruction, worked
    example, ``"Question: {q}\\nRationale:"``), i.e. what the non-private server answers.
    Generate it in the LLM's chat template where it has one (`fedkt.generation.chat`)."""
    if not example.is_generative:
        return predict_example(example)
    request = rationale_request(render_question(example), "generative")
    return dataclasses.replace(
        example, context=request, target=answer_statement(example.answer), choices=()
    )


def states_answer(text: str) -> bool:
    """True when a rationale states an answer (`ANSWER_CUE`)."""
    return ANSWER_CUE.search(text) is not None


def answer_choice(text: str, choices: Sequence[str]) -> int | None:
    """The index of the choice a rationale's answer names, or None.

    The answer is what follows the last "the answer is" (any case) up to the end of its
    line. It names a choice when, lower-cased with punctuation removed, it equals the
    choice, or else holds it as whole words (the longest such choice; None when two of
    equal length tie, or none is there). Pass the choices as the rationale's writer saw
    them: the server saw the perturbed choices, a recovered rationale the real ones.
    """
    matches = list(re.finditer(r"the answer is", text, re.IGNORECASE))
    if not matches:
        return None
    line = text[matches[-1].end() :].split("\n", 1)[0]
    said = _words(line)
    names = [_words(choice) for choice in choices]
    if said in names:
        return names.index(said)
    found = [
        (len(name), i)
        for i, name in enumerate(names)
        if name and re.search(rf"(?:^| ){re.escape(name)}(?: |$)", said)
    ]
    if not found:
        return None
    found.sort(reverse=True)
    if len(found) > 1 and found[0][0] == found[1][0]:
        return None
    return found[0][1]


def _words(text: str) -> str:
    """Lower-cased words, punctuation removed, single spaces."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def explain_example(example: Example, rationale: str) -> Example:
    """The explain task: a generative example whose target is the (recovered) rationale.

    Context ``"Explain:\\nQuestion: {q}\\nChoices: {choices}\\nRationale:"``; id, question and
    (generative) answer are kept.
    """
    target = rationale.strip()
    if not target:
        raise DataError(
            f"example {example.id!r}: explain_example got an empty rationale; drop the "
            "question (clean_rationale returns None for such samples) instead"
        )
    return Example(
        id=example.id,
        context=f"Explain:\nQuestion: {render_question(example)}\nRationale:",
        choices=(),
        gold=-1,
        target=target,
        answer=example.answer,
        question=example.question,
    )


def _prompt(kind: str, demonstrations: list[tuple[str, str]], question: str) -> str:
    """Instruction, worked example, demonstrations, then the open question; blank-line blocks."""
    if kind not in WORKED_EXAMPLES:
        raise DataError(
            f"unknown task kind {kind!r} for a FedCoT prompt; use one of "
            f"{', '.join(WORKED_EXAMPLES)} (a TaskSpec's kind)"
        )
    worked = WORKED_EXAMPLES[kind]
    shots = [(worked.question, worked.rationale), *demonstrations]
    blocks = [
        _INSTRUCTIONS[kind],
        *(f"Question: {q}\nRationale: {r}" for q, r in shots),
        f"Question: {question}\nRationale:",
    ]
    return "\n\n".join(blocks)


def _cut(text: str) -> str:
    """`text` with its paragraphs joined, up to its first stop string, and up to the end of
    its answer line."""
    text = re.sub(r"\n[ \t]*(?:\n[ \t]*)+", "\n", text.strip())
    for stop in RATIONALE_STOP:  # each split keeps the part before that stop's first match
        text = text.split(stop, 1)[0]
    answer_at = text.find(ANSWER_PHRASE)
    if answer_at != -1:
        end = text.find("\n", answer_at)
        text = text if end == -1 else text[:end]
    return text.strip()


def _repetitive(words: list[str]) -> bool:
    """True for one word repeated, a few words cycled, or a phrase loop (thresholds above)."""
    top_share = Counter(words).most_common(1)[0][1] / len(words)
    distinct = len(set(words)) / len(words)
    grams = [tuple(words[i : i + LOOP_NGRAM]) for i in range(len(words) - LOOP_NGRAM + 1)]
    loop = bool(grams) and len(set(grams)) < MIN_DISTINCT_NGRAM_RATIO * len(grams)
    return top_share > MAX_TOP_WORD_SHARE or distinct < MIN_DISTINCT_WORD_RATIO or loop


def _require_text(value: str, name: str) -> str:
    text = value.strip()
    if not text:
        raise DataError(f"{name} is empty; a FedCoT prompt needs the text of every part")
    return text
