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
    privacy_report,
    request_id,
    server_rationales,
)
from fedkt.data import Example
from fedkt.errors import ConfigError
from fedkt.generation import GenerationSettings, Request, ResponseStore
from fedkt.models import LoraSettings, add_lora
from fedkt.privacy import TextPerturber, build_kit
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
