"""FedCoT's protocol steps in one process: tiny models, fake LLM/decoder backends."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from fedkt.algorithms.fedcot import (
    FedCoTSettings,
    Recovery,
    client_encode,
    client_recover,
    client_train,
    make_perturber,
    noise_generator,
    privacy_report,
    request_id,
    server_rationales,
)
from fedkt.data import Example
from fedkt.data.cot import label_names, private_fields
from fedkt.errors import ConfigError
from fedkt.generation import GenerationSettings, Request, ResponseStore
from fedkt.models import LoraSettings, add_lora
from fedkt.privacy import RELEASED_IN_CLEAR, TextPerturber, build_kit, public_unigram
from fedkt.training import TrainSettings

EXAMPLES = (
    Example(
        id="arc-1",
        context="Question: Which gas do plants absorb from the air?\nAnswer:",
        choices=("carbon dioxide", "helium balloons"),
        gold=0,
        question="Which gas do plants absorb from the air?",
    ),
    Example(
        id="arc-2",
        context="Question: What do green plants need to grow?\nAnswer:",
        choices=("volcanic rock", "bright sunlight"),
        gold=1,
        question="What do green plants need to grow?",
    ),
    Example(
        id="arc-3",
        context="Question: What is the boiling point of water at sea level?\nAnswer:",
        choices=("100 degrees Celsius", "frozen rock"),
        gold=0,
        question="What is the boiling point of water at sea level?",
    ),
)
RATIONALE = "Plants take in a gas from the air and use sunlight to make food for growth."
TRAIN = TrainSettings(epochs=1, lr=1e-2, batch_size=2, warmup_ratio=0.0, max_length=96)


class FakeBackend:
    """Answers every prompt with a fixed text (or per-call texts), recording the prompts."""

    def __init__(self, texts: Sequence[str] | None = None) -> None:
        self.texts = texts
        self.prompts: list[str] = []

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
        self.prompts += prompts
        if self.texts is None:
            return [RATIONALE] * len(prompts)
        return list(self.texts[: len(prompts)])


@pytest.fixture
def perturber(tiny_tokenizer: PreTrainedTokenizerFast) -> TextPerturber:
    embeddings = torch.randn(len(tiny_tokenizer), 16, generator=torch.Generator().manual_seed(0))
    return TextPerturber(tiny_tokenizer, build_kit(tiny_tokenizer, embeddings, min_letters=1), "em")


def test_settings_refuse_bad_values() -> None:
    with pytest.raises(ConfigError, match="strategy"):
        FedCoTSettings(strategy="laplace")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="eps"):
        FedCoTSettings(eps=-1.0)
    with pytest.raises(ConfigError, match="alpha"):
        FedCoTSettings(alpha=1.5)
    with pytest.raises(ConfigError, match="candidates"):
        FedCoTSettings(candidates="words")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="pad_to"):
        FedCoTSettings(pad_to=0)
    assert FedCoTSettings(strategy="aem", eps=3.0).label == "aem@3"


def test_requests_carry_opaque_ids_and_only_the_perturbed_question(
    perturber: TextPerturber,
) -> None:
    settings = FedCoTSettings(strategy="em", eps=0.5)
    queries = client_encode(EXAMPLES, perturber, settings, torch.Generator().manual_seed(1))
    assert [r.id for r in queries.requests] == [request_id(i) for i in range(3)]
    for request, example, sent in zip(
        queries.requests, EXAMPLES, queries.sent_questions, strict=True
    ):
        assert sent in request.prompt  # the perturbed question is what the server sees
        assert example.question not in request.prompt
        assert example.id not in request.prompt
    assert all(r.strategy == "em" and r.prompt_eps > 0 for r in queries.records)


def test_without_privacy_the_raw_question_is_sent_and_eps_is_infinite(
    perturber: TextPerturber,
) -> None:
    queries = client_encode(EXAMPLES, perturber, FedCoTSettings(strategy="none"), torch.Generator())
    assert all(e.question in r.prompt for e, r in zip(EXAMPLES, queries.requests, strict=True))
    assert all(math.isinf(r.prompt_eps) for r in queries.records)


def test_recovery_uses_the_original_question_and_skips_missing_or_degenerate_answers() -> None:
    settings = FedCoTSettings(strategy="em", eps=1.0)
    decoder = FakeBackend([RATIONALE, "the the the the the the the the"])
    responses = {request_id(0): RATIONALE, request_id(2): RATIONALE, "q9": "x"}
    sent = ["perturbed one", "perturbed two", "perturbed three"]
    recovery = client_recover(decoder, EXAMPLES, sent, responses, settings)
    assert recovery.rationales == {0: RATIONALE}  # q1 had no answer, q2 came back degenerate
    assert (recovery.missing, recovery.rejected) == (1, 1)
    assert (recovery.degenerate, recovery.failed, recovery.inconsistent) == (0, 1, 0)
    assert len(decoder.prompts) == 2
    assert EXAMPLES[0].question in decoder.prompts[0] and "perturbed one" in decoder.prompts[0]


def test_empty_server_answers_count_as_missing_and_none_skips_the_decoder() -> None:
    decoder = FakeBackend()
    responses = {request_id(0): RATIONALE, request_id(1): "   ", request_id(2): RATIONALE}
    recovery = client_recover(
        decoder, EXAMPLES, ["", "", ""], responses, FedCoTSettings(strategy="none")
    )
    assert sorted(recovery.rationales) == [0, 2] and recovery.missing == 1
    assert decoder.prompts == []  # the server's rationale already answers the real question


def test_server_rationales_are_keyed_by_id_and_resume_from_the_store(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "answers.jsonl")
    requests = [Request("a", "prompt a"), Request("b", "prompt b")]
    first = FakeBackend()
    assert server_rationales(first, requests, FedCoTSettings(), store) == dict.fromkeys(
        ("a", "b"), RATIONALE
    )
    again = FakeBackend()
    more = [*requests, Request("c", "prompt c")]
    answers = server_rationales(
        again, more, FedCoTSettings(), ResponseStore(tmp_path / "answers.jsonl")
    )
    assert set(answers) == {"a", "b", "c"} and again.prompts == ["prompt c"]


def test_client_train_learns_both_tasks_with_rationales_where_present(
    tiny_tokenizer: PreTrainedTokenizerFast, tiny_llama: LlamaForCausalLM
) -> None:
    slm = add_lora(tiny_llama, LoraSettings(r=4, alpha=8, dropout=0.0))
    settings = FedCoTSettings(train=TRAIN)
    report = client_train(slm, tiny_tokenizer, EXAMPLES, Recovery({0: RATIONALE}, 0, 0), settings)
    assert report.steps >= 1 and all(math.isfinite(loss) for loss in report.losses)


def test_privacy_report_holds_accounting_and_audit(perturber: TextPerturber) -> None:
    settings = FedCoTSettings(strategy="em", eps=2.0)
    queries = client_encode(EXAMPLES, perturber, settings, torch.Generator().manual_seed(0))
    report = privacy_report(queries, perturber.kit, settings)
    perturbed = report["tokens_perturbed"]
    assert perturbed > 0
    assert report["prompt_eps_max"] == pytest.approx(
        2.0 * max(r.tokens_perturbed for r in queries.records)
    )
    assert 0.0 <= report["protected_recovered"] <= 1.0
    assert 0.0 <= report["gold_answer_leak_rate"] <= 1.0
    plain = FedCoTSettings(strategy="none")
    raw = privacy_report(
        client_encode(EXAMPLES, perturber, plain, torch.Generator()), perturber.kit, plain
    )
    assert raw["gold_answer_leak_rate"] == 1.0  # the choices, gold among them, go out as they are


# ---- the privacy holes of issue 13 --------------------------------------------------------


def _row(i: int, question: str, choices: tuple[str, ...], gold: int = 0) -> Example:
    return Example(
        id=f"row-{i}",
        context=f"Question: {question}\nAnswer:",
        choices=choices,
        gold=gold,
        question=question,
    )


def _draws(generator: torch.Generator) -> torch.Tensor:
    return torch.rand(16, generator=generator)


def test_noise_is_fresh_from_secrets_unless_a_simulation_seeds_it() -> None:
    secure = FedCoTSettings()
    assert secure.noise_seed is None  # the default: no seed anyone could know
    (first, source), (second, _) = noise_generator(secure, 0), noise_generator(secure, 0)
    assert source == "secrets" and not torch.equal(_draws(first), _draws(second))
    seeded = FedCoTSettings(noise_seed=7)
    (a, kind), (b, _), (c, _) = (noise_generator(seeded, k) for k in (0, 0, 1))
    assert kind == "seeded" and torch.equal(_draws(a), _draws(b))
    assert not torch.equal(_draws(a), _draws(c))  # another client, other noise


def test_only_the_private_fields_are_perturbed_and_counted(
    perturber: TextPerturber, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    settings = FedCoTSettings(strategy="em", eps=0.0)
    queries = client_encode(EXAMPLES, perturber, settings, torch.Generator().manual_seed(0))
    for example, sent in zip(EXAMPLES, queries.perturbed, strict=True):
        fields = (example.question, *example.choices)
        tokens = sum(len(tiny_tokenizer(f, add_special_tokens=False)["input_ids"]) for f in fields)
        record = sent.record
        assert record.tokens_perturbed + record.tokens_passed_through == tokens
        assert record.prompt_eps == 0.0
        assert "\nChoices: " in sent.text  # the public template goes out as it is


def test_label_names_of_a_classification_task_stay_in_clear(
    perturber: TextPerturber, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    labels = ("World", "Sports", "Business")
    rows = [_row(0, "The team won the final.", labels), _row(1, "Shares rose today.", labels, 2)]
    assert label_names(rows) == labels and label_names(EXAMPLES) == ()
    assert private_fields(rows[0], labels) == (rows[0].question,)
    settings = FedCoTSettings(strategy="em", eps=1.0)
    queries = client_encode(rows, perturber, settings, torch.Generator(), label_names=labels)
    for row, sent in zip(rows, queries.perturbed, strict=True):
        assert sent.text.endswith("\nChoices: World; Sports; Business")
        size = len(tiny_tokenizer(row.question, add_special_tokens=False)["input_ids"])
        assert sent.record.tokens_perturbed + sent.record.tokens_passed_through == size
    # a classification row is asked (and recovered) with the classification prompt
    assert all(r.prompt.startswith("Classify the text") for r in queries.requests)
    assert "Therefore, the answer is Business." in queries.requests[0].prompt
    mc = client_encode(EXAMPLES[:1], perturber, settings, torch.Generator(), label_names=labels)
    assert mc.requests[0].prompt.startswith("Answer the multiple-choice question")
    decoder = FakeBackend([f"{RATIONALE} Therefore, the answer is World."] * 2)
    responses = {request_id(i): f"{RATIONALE} Therefore, the answer is Sports." for i in (0, 1)}
    recovery = client_recover(
        decoder, rows, queries.sent_questions, responses, settings, label_names=labels
    )
    assert all(prompt.startswith("Classify the text") for prompt in decoder.prompts)
    assert recovery.recovered_correct == (True, False)  # row 0 is World, row 1 Business


def test_the_answer_leak_scans_only_the_perturbed_private_text(perturber: TextPerturber) -> None:
    # "metal" is a word of the public worked example in every multiple-choice request
    rows = [_row(0, "Which one feels cold to touch?", ("wool", "metal"), gold=1)]
    settings = FedCoTSettings(strategy="em", eps=0.0)
    queries = client_encode(rows, perturber, settings, torch.Generator().manual_seed(0))
    assert "metal" in queries.requests[0].prompt
    assert "metal" not in queries.sent_questions[0].lower()
    assert privacy_report(queries, perturber.kit, settings)["gold_answer_leak_rate"] == 0.0
    plain = FedCoTSettings(strategy="none")
    raw = client_encode(rows, perturber, plain, torch.Generator())
    assert privacy_report(raw, perturber.kit, plain)["gold_answer_leak_rate"] == 1.0


def test_the_report_says_what_goes_out_in_clear_and_how_unique_it_is(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    rows = [_row(0, "The sun.", ("wool", "metal")), _row(1, "The sea!", ("wool", "metal"))]
    reference = [private_fields(row) for row in EXAMPLES]
    embeddings = torch.randn(len(tiny_tokenizer), 16, generator=torch.Generator().manual_seed(0))
    prior = public_unigram(tiny_tokenizer, [e.question for e in EXAMPLES])
    unique = {}
    for candidates in ("classes", "vocabulary"):
        kit = build_kit(tiny_tokenizer, embeddings, min_letters=1, partition=candidates)
        settings = FedCoTSettings(strategy="em", eps=1.0, candidates=candidates, noise_seed=0)
        generator, noise = noise_generator(settings, 0)
        perturber = make_perturber(tiny_tokenizer, kit, settings)
        queries = client_encode(rows, perturber, settings, generator)
        report = privacy_report(
            queries,
            kit,
            settings,
            perturber=perturber,
            log_prior=prior,
            reference=reference,
            noise=noise,
        )
        assert report["noise"] == "seeded" and report["candidates"] == candidates
        assert report["released_in_clear"] == RELEASED_IN_CLEAR[candidates]
        assert report["pattern_reference_rows"] == 3
        for key in ("protected_recovered", "protected_recovered_prior", "prior_only_recovered"):
            assert 0.0 <= report[key] <= 1.0
        unique[candidates] = report["pattern_unique_rate"]
        if candidates == "vocabulary":  # every field padded to 8 tokens, pads perturbed
            assert report["tokens_passed_through"] == 0
            assert report["tokens_perturbed"] == 2 * 3 * 8
    # "." and "!" go out in clear with classes; with one vocabulary set only lengths do
    assert unique == {"classes": 1.0, "vocabulary": 0.0}


# ---- utility measured where it moves, and GSM8K end to end (issue 13, items 8-9) ----------


def _gsm(i: int, question: str, answer: str) -> Example:
    return Example(
        id=f"gsm-{i}",
        context=f"Question: {question}\nAnswer:",
        choices=(),
        gold=-1,
        target=f"Worked out.\n#### {answer}",
        answer=answer,
        question=question,
    )


GSM = (
    _gsm(0, "Tom has 3 apples and buys 4 more. How many apples does he have?", "7"),
    _gsm(1, "A box holds 12 eggs. How many eggs are in 5 boxes?", "60"),
    _gsm(2, "A rope of 1,500 cm is cut in 3 equal parts. How long is each part?", "500"),
)


def _solution(answer: str) -> str:
    """A chat model's answer: paragraphs, the answer line, then more numbers (not graded)."""
    return (
        "We read the question and work it out one step at a time.\n\nEach step uses the "
        f"numbers given.\n\nTherefore, the answer is {answer}.\n\nChecked in 2 steps."
    )


class Solver:
    """A scripted backend that answers the last question of every prompt correctly (the
    questions of ``rows``), as a chat model would; ``chat_template`` as a fedkt backend."""

    def __init__(self, rows: Sequence[Example], *, chat_template: bool = False) -> None:
        self.answers = {row.question: row.answer for row in rows}
        self.chat_template = chat_template
        self.settings: list[GenerationSettings] = []

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
        self.settings.append(settings)
        questions = [p.rsplit("Question: ", 1)[1].split("\nRationale:", 1)[0] for p in prompts]
        return [_solution(self.answers[q]) for q in questions]


@pytest.mark.parametrize("strategy", ["none", "em"])
def test_a_server_and_decoder_that_answer_correctly_score_every_rationale(
    perturber: TextPerturber, strategy: str
) -> None:
    # eps = inf: EM sends the text as it is, so the scripted server can read the question
    settings = FedCoTSettings(strategy=strategy, eps=math.inf)  # type: ignore[arg-type]
    queries = client_encode(GSM, perturber, settings, torch.Generator().manual_seed(0))
    server = Solver(GSM, chat_template=True)
    responses = server_rationales(server, queries.requests, settings)
    assert "\n\n" not in server.settings[0].stop  # a chat answer's paragraphs do not stop it
    decoder = Solver(GSM)
    recovery = client_recover(
        decoder, GSM, queries.sent_questions, responses, settings, queries.sent_choices
    )
    assert len(recovery.rationales) == 3 and recovery.rejected == recovery.missing == 0
    for index, rationale in recovery.rationales.items():
        assert "\n\n" not in rationale  # the paragraphs joined: one block of a prompt
        assert rationale.endswith(f"the answer is {GSM[index].answer}.")
    utility = recovery.utility()
    assert utility["server_rationale_acc"] == utility["recovered_rationale_acc"] == 1.0
    assert utility["server_rationale_correct"] == utility["recovered_rationale_correct"] == 3
    assert utility["prompts"] == utility["rationales_kept"] == 3
    assert utility["server_no_answer"] == utility["recovered_no_answer"] == 0
    assert bool(decoder.settings) == (strategy != "none")  # "none": the server's rationale


def test_without_a_chat_template_the_blank_line_still_stops_the_server() -> None:
    server = Solver(GSM)
    server_rationales(server, [Request("a", f"Question: {GSM[0].question}\nRationale:")],
                      FedCoTSettings())  # fmt: skip
    assert "\n\n" in server.settings[0].stop


def test_the_server_answer_is_read_against_the_choices_it_saw(perturber: TextPerturber) -> None:
    """The server answers the perturbed question: naming the perturbed gold choice reaches
    the gold answer; the recovered rationale names a real choice."""
    settings = FedCoTSettings(strategy="em", eps=0.0)
    queries = client_encode(EXAMPLES[:2], perturber, settings, torch.Generator().manual_seed(3))
    seen = queries.sent_choices
    assert all(len(c) == 2 for c in seen) and seen != tuple(e.choices for e in EXAMPLES[:2])
    gold_seen = seen[0][EXAMPLES[0].gold]  # row 0: gold 0; row 1: the wrong one named
    wrong_seen = seen[1][1 - EXAMPLES[1].gold]
    responses = {
        request_id(0): f"{RATIONALE} Therefore, the answer is {gold_seen}.",
        request_id(1): f"{RATIONALE} Therefore, the answer is {wrong_seen}.",
    }
    real = [
        f"{RATIONALE} Therefore, the answer is {EXAMPLES[0].choices[EXAMPLES[0].gold]}.",
        f"{RATIONALE} Therefore, the answer is {EXAMPLES[1].choices[EXAMPLES[1].gold]}.",
    ]
    recovery = client_recover(
        FakeBackend(real), EXAMPLES[:2], queries.sent_questions, responses, settings, seen
    )
    assert recovery.server_correct == (True, False)
    assert recovery.recovered_correct == (True, True)


def test_degenerate_rationales_failed_recoveries_and_the_consistency_filter_are_counted() -> None:
    rows = (*GSM, _gsm(3, "Ann reads 10 pages a day. How many pages in 3 days?", "30"))
    responses = {
        # q0: no answer at all (missing)
        request_id(1): "five five five five five five five five",  # degenerate: repeated
        request_id(2): "We split the rope in equal parts, each part the same length.",
        request_id(3): _solution("30"),
    }
    recovered = [_solution("400"), "ok"]  # q2: a wrong answer; q3: the recovery failed
    sent = [row.question for row in rows]
    for keep in (False, True):
        settings = FedCoTSettings(strategy="em", eps=1.0, keep_consistent=keep)
        recovery = client_recover(FakeBackend(recovered), rows, sent, responses, settings)
        utility = recovery.utility()
        assert (recovery.missing, recovery.degenerate, recovery.failed) == (1, 1, 1)
        assert utility["server_no_answer"] == 2  # the repeated one and q2 state no answer
        assert recovery.server_correct == (False, False, False, True)
        assert recovery.recovered_correct == (False, False, False, False)
        assert utility["server_rationale_acc"] == 0.25
        assert utility["recovered_rationale_acc"] == 0.0
        # q2's recovered rationale reaches 400, not 500: kept unless the filter is on
        assert sorted(recovery.rationales) == ([] if keep else [2])
        assert recovery.inconsistent == int(keep)
        assert recovery.rejected == 2 + int(keep)
        counted = len(recovery.rationales) + recovery.missing + recovery.rejected
        assert counted == len(rows)


def test_paraphrase_rewrites_each_field_with_the_local_lm_at_a_fixed_length(
    tiny_tokenizer: PreTrainedTokenizerFast, tiny_llama: LlamaForCausalLM
) -> None:
    embeddings = torch.randn(len(tiny_tokenizer), 16, generator=torch.Generator().manual_seed(0))
    kit = build_kit(tiny_tokenizer, embeddings, min_letters=1)
    settings = FedCoTSettings(strategy="paraphrase", eps=2.0, paraphrase_tokens=5)
    with pytest.raises(ConfigError, match="local decoder LM"):
        make_perturber(tiny_tokenizer, kit, settings)
    paraphraser = make_perturber(tiny_tokenizer, kit, settings, model=tiny_llama)
    generator = torch.Generator().manual_seed(0)
    queries = client_encode(EXAMPLES, paraphraser, settings, generator)
    for example, sent in zip(EXAMPLES, queries.perturbed, strict=True):
        fields = len(private_fields(example))  # question and choices, each its own paraphrase
        assert len(sent.output_ids) == fields * 5  # n draws per field, whatever the input
        assert sent.record.tokens_perturbed == fields * 5 and sent.record.strategy == "paraphrase"
        assert sent.record.prompt_eps == pytest.approx(fields * 5 * 2.0)
        assert example.question not in sent.text
    report = privacy_report(queries, kit, settings, perturber=paraphraser, noise="seeded")
    assert report["guarantee"]["prompt_eps"] == pytest.approx(10.0)
    assert report["guarantee"]["neighbours"].startswith("any two private texts")
    assert report["pattern_unique_rate"] == 0.0 and report["noise"] == "seeded"
    assert 0.0 <= report["gold_answer_leak_rate"] <= 1.0
    assert "protected_recovered" not in report  # no token alignment to invert
    with pytest.raises(ConfigError, match="paraphrase"):
        FedCoTSettings(strategy="paraphrase", paraphrase_logit_min=1.0, paraphrase_logit_max=0.0)
