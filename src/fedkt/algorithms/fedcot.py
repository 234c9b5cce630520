"""FedCoT: federated chain-of-thought distillation, without the transport.

Fan, Chen, Kang, Ma, Gu, Song, Fan, Yang, "FedCoT: Federated Chain-of-Thought Distillation for
Large Language Models", arXiv 2406.12403 (v1 "PDSS"; v2 EMNLP Findings 2025).

State. Client k holds private labelled questions D_k, a trainable task SLM, a frozen local
decoder LM (to recover rationales) and a perturbation kit (candidate vocabularies and their
embeddings, from public model weights). The server holds an LLM that writes rationales. No
weights are exchanged; the server never sees a raw question or a label.

One round trip:
  1. encode       x'_i = M_eps(render(x_i)): every question is perturbed token by token with a
                  DP mechanism (EM, or adaptive EM at the same prompt budget)
  2. request      p_i = instruction + worked example + x'_i, sent under an opaque id     (-> server)
  3. rationale    r'_i = LLM(p_i), near-greedy, keyed by id                              (<- server)
  4. recover      r_i = LM_local(worked example + (x'_i, r'_i) + the ORIGINAL x_i), filtered
  5. train        L = alpha CE(explain: x_i -> r_i) + (1 - alpha) CE(predict: x_i -> y_i)
Evaluation uses the predict prefix.

What leaves a client is the perturbed request text and its opaque id, nothing else. The
reference code's bugs are avoided: Delta u = 2 for cosine utility, a fixed candidate set,
numbers perturbed, responses matched by id, EOS learned, rationales filtered
(see `fedkt.privacy`, `fedkt.data.cot`, `fedkt.training.train_multitask`).

The non-private upper bound ("none") sends the raw question and trains on the server's
rationale directly (no recovery: it already answers the real question).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedkt.data import Example
from fedkt.data.cot import (
    RATIONALE_STOP,
    clean_rationale,
    explain_example,
    predict_example,
    rationale_request,
    recovery_prompt,
    render_question,
)
from fedkt.errors import ConfigError
from fedkt.generation import (
    Backend,
    GenerationSettings,
    Request,
    ResponseStore,
    generate_responses,
)
from fedkt.privacy import (
    PerturbationKit,
    PerturbedText,
    PrivacyRecord,
    TextPerturber,
    answer_leak_rate,
    inversion_recovery,
    privacy_summary,
    unperturbed,
)
from fedkt.training import TrainReport, TrainSettings, train_multitask

Strategy = Literal["em", "aem", "none"]
STRATEGIES: tuple[Strategy, ...] = ("em", "aem", "none")


@dataclass(frozen=True)
class FedCoTSettings:
    """FedCoT hyperparameters (defaults: the reference code's, scaled to small models).

    Args:
        strategy: "em" (Exponential Mechanism per token), "aem" (adaptive EM: the same prompt
            budget spread by public token importance) or "none" (the non-private upper bound:
            the server sees the raw question).
        eps: per-token budget of EM; AEM spreads ``eps x tokens`` over the prompt. ``inf``
            sends the text unchanged (still recorded as such).
        alpha: weight of the explain (rationale) loss; 1 - alpha weighs the predict loss.
        rationale: the server's generation (near-greedy; the reference uses T = 0.01).
        recovery: the client's generation of the recovered rationale.
        min_rationale_words: shorter rationales are dropped as degenerate.
        min_letters: alphabetic tokens with at least this many letters are perturbed; the
            default 1 protects every word piece (a rare word splits into short pieces, which a
            3-letter floor would pass through in the clear). Punctuation and whitespace pass.
        train: the SLM's multi-task training.
        seed: seeds the perturbation (offset by the client's partition).
    """

    strategy: Strategy = "em"
    eps: float = 3.0
    alpha: float = 0.5
    rationale: GenerationSettings = field(
        default_factory=lambda: GenerationSettings(max_new_tokens=128, stop=RATIONALE_STOP)
    )
    recovery: GenerationSettings = field(
        default_factory=lambda: GenerationSettings(max_new_tokens=128, stop=RATIONALE_STOP)
    )
    min_rationale_words: int = 5
    min_letters: int = 1
    train: TrainSettings = field(default_factory=TrainSettings)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"fedcot strategy {self.strategy!r} is unknown; use one of {list(STRATEGIES)}"
            )
        if math.isnan(self.eps) or self.eps < 0:
            raise ConfigError(f"fedcot eps={self.eps} must be >= 0 (inf: no perturbation)")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"fedcot alpha={self.alpha} must be in [0, 1]")
        if self.min_rationale_words < 1 or self.min_letters < 1:
            raise ConfigError(
                f"fedcot min_rationale_words={self.min_rationale_words} and min_letters="
                f"{self.min_letters} must be >= 1"
            )

    @property
    def label(self) -> str:
        """How results name this setting, e.g. "em@3" or "none"."""
        return "none" if self.strategy == "none" else f"{self.strategy}@{self.eps:g}"


# ---- client, steps 1-2: perturb and wrap --------------------------------------------------


@dataclass(frozen=True)
class ClientQueries:
    """A client's questions after step 2: what it keeps and what it sends.

    Only `requests` leave the client; `examples` and `perturbed` (which holds the source
    token ids for the leakage audit) stay local. Request ids are opaque positions ("q0",
    "q1", ...): a dataset's own ids can carry information, so they are never sent.
    """

    examples: tuple[Example, ...]
    perturbed: tuple[PerturbedText, ...]
    requests: tuple[Request, ...]

    @property
    def records(self) -> tuple[PrivacyRecord, ...]:
        return tuple(p.record for p in self.perturbed)

    @property
    def sent_questions(self) -> tuple[str, ...]:
        """The perturbed questions, in request order (what recovery pairs the rationales with)."""
        return tuple(p.text for p in self.perturbed)


def client_encode(
    examples: Sequence[Example],
    perturber: TextPerturber,
    settings: FedCoTSettings,
    generator: torch.Generator,
) -> ClientQueries:
    """Steps 1-2: render each question, perturb it (unless "none"), wrap it for the server."""
    questions = [render_question(example) for example in examples]
    if settings.strategy == "none":
        perturbed = unperturbed(perturber.tokenizer, questions)
    else:
        perturbed = perturber.perturb(questions, settings.eps, generator)
    requests = [
        Request(id=request_id(i), prompt=rationale_request(p.text, _kind(example)))
        for i, (example, p) in enumerate(zip(examples, perturbed, strict=True))
    ]
    return ClientQueries(tuple(examples), tuple(perturbed), tuple(requests))


def _kind(example: Example) -> str:
    return "generative" if example.is_generative else "multiple_choice"


# ---- server, step 3: rationales -----------------------------------------------------------


def server_rationales(
    backend: Backend,
    requests: Sequence[Request],
    settings: FedCoTSettings,
    store: ResponseStore | None = None,
) -> dict[str, str]:
    """Step 3: the LLM's rationale for every request, keyed by request id.

    With a `ResponseStore` on disk, ids answered before a crash are not generated again.
    """
    return generate_responses(backend, requests, settings.rationale, store, progress=True)


# ---- client, steps 4-5: recover and train -------------------------------------------------


@dataclass(frozen=True)
class Recovery:
    """Step 4's outcome: a rationale per example index, and what was dropped."""

    rationales: dict[int, str]
    missing: int  # no (usable) server answer for the request
    rejected: int  # recovered text empty or degenerate


def client_recover(
    decoder: Backend,
    examples: Sequence[Example],
    sent_questions: Sequence[str],
    responses: Mapping[str, str],
    settings: FedCoTSettings,
) -> Recovery:
    """Step 4: recover a rationale for each ORIGINAL question with the frozen local LM.

    ``sent_questions[i]`` is the perturbed question the client sent as request ``q{i}`` (kept
    locally since step 1); ``responses`` maps request ids to the server's rationales, missing
    or empty ones being skipped. Without perturbation ("none") the server's rationale already
    answers the real question and is only cleaned.
    """
    answered = [i for i in range(len(examples)) if responses.get(request_id(i), "").strip()]
    words = settings.min_rationale_words
    usable = {
        i: text
        for i in answered
        if (text := clean_rationale(responses[request_id(i)], min_words=words)) is not None
    }  # a degenerate server rationale is not worth a recovery generation
    if settings.strategy == "none":
        texts = list(usable.values())
    else:
        prompts = [
            recovery_prompt(
                sent_questions[i], text, render_question(examples[i]), _kind(examples[i])
            )
            for i, text in usable.items()
        ]
        texts = decoder.generate(prompts, settings.recovery) if prompts else []
    rationales = {}
    for index, text in zip(usable, texts, strict=True):
        cleaned = clean_rationale(text, min_words=words)
        if cleaned is not None:
            rationales[index] = cleaned
    missing = len(examples) - len(answered)
    return Recovery(rationales, missing, rejected=len(answered) - len(rationales))


def request_id(index: int) -> str:
    """The opaque id of a client's ``index``-th request."""
    return f"q{index}"


def client_train(
    slm: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    recovery: Recovery,
    settings: FedCoTSettings,
) -> TrainReport:
    """Step 5: multi-task training, predict on every example, explain where a rationale exists."""
    predict = [predict_example(example) for example in examples]
    explain = [
        explain_example(examples[index], rationale)
        for index, rationale in sorted(recovery.rationales.items())
    ]
    return train_multitask(slm, tokenizer, predict, explain, settings.alpha, settings.train)


# ---- privacy report -----------------------------------------------------------------------


def privacy_report(
    queries: ClientQueries, kit: PerturbationKit, settings: FedCoTSettings
) -> dict[str, Any]:
    """Epsilon accounting and the leakage audit of one client's requests (spec: "Leakage
    audit"): what an attacker holding the same embeddings recovers by inverting the
    mechanism, and how often a gold answer appears in what was sent. Computed on the
    client from what it sent and what it kept; only these numbers are reported onwards."""
    summary = privacy_summary(queries.records)
    summary.pop("strategies")
    if settings.strategy == "none":
        audit = {"protected_recovered": 1.0, "all_recovered": 1.0}
    else:
        audit = inversion_recovery(queries.perturbed, kit, settings.eps, settings.strategy)
    golds = [_gold_text(example) for example in queries.examples]
    sent = [request.prompt for request in queries.requests]
    return {
        "eps": settings.eps,
        **summary,
        **audit,
        "gold_answer_leak_rate": answer_leak_rate(sent, golds),
    }


def _gold_text(example: Example) -> str:
    return example.answer if example.is_generative else example.choices[example.gold]
