"""FedCoT: federated chain-of-thought distillation, without the transport.

Fan, Chen, Kang, Ma, Gu, Song, Fan, Yang, "FedCoT: Federated Chain-of-Thought Distillation for
Large Language Models", arXiv 2406.12403 (v1 "PDSS"; v2 EMNLP Findings 2025).

State. Client k holds private labelled questions D_k, a trainable task SLM, a frozen local
decoder LM (to recover rationales) and a perturbation kit (candidate vocabularies and their
embeddings, from public model weights). The server holds an LLM that writes rationales. No
weights are exchanged; the server never sees a raw question or a label.

One round trip:
  1. encode       x'_i = render(M_eps(fields(x_i))): the private fields of every question (the
                  question, and for multiple choice its choices) are perturbed token by token
                  with a DP mechanism (EM, or adaptive EM at the same prompt budget) and put
                  back into the public template
  2. request      p_i = instruction + worked example + x'_i, sent under an opaque id     (-> server)
  3. rationale    r'_i = LLM(p_i), near-greedy, keyed by id                              (<- server)
  4. recover      r_i = LM_local(worked example + (x'_i, r'_i) + the ORIGINAL x_i), filtered
  5. train        L = alpha CE(explain: x_i -> r_i) + (1 - alpha) CE(predict: x_i -> y_i)
Evaluation uses the predict prefix.

What leaves a client is the perturbed request text and its opaque id, then a bare
acknowledgement of the rationales it received (a count the server already knows), nothing
else: its privacy report (per-token budgets, audit rates, the gold-answer leak rate, the
pattern's uniqueness), losses and rationale counts are derived from its private rows and
stay on its disk. Outside a seeded simulation (``noise_seed`` None) the noise is drawn from
the OS's secure source afresh for every client and run (`noise_generator`). The reference
code's bugs are avoided: Delta u = 2 for cosine utility, a fixed candidate set,
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
    private_fields,
    rationale_request,
    recovery_prompt,
    render_fields,
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
    PARTITIONS,
    RELEASED_IN_CLEAR,
    Partition,
    PerturbationKit,
    PerturbedText,
    PrivacyRecord,
    TextPerturber,
    answer_leak_rate,
    inversion_recovery,
    join_perturbed,
    pattern_uniqueness,
    prior_only_recovery,
    privacy_summary,
    secure_generator,
    unperturbed,
)
from fedkt.training import TrainReport, TrainSettings, derive_seed, train_multitask

Strategy = Literal["em", "aem", "none"]
STRATEGIES: tuple[Strategy, ...] = ("em", "aem", "none")


@dataclass(frozen=True)
class FedCoTSettings:
    """FedCoT hyperparameters (defaults: the reference code's, scaled to small models).

    Args:
        strategy: "em" (Exponential Mechanism per token), "aem" (adaptive EM: the same prompt
            budget spread by public token importance) or "none" (the non-private upper bound:
            the server sees the raw question).
        eps: per-token budget of EM; AEM spreads ``eps x tokens`` of each private field
            over that field's tokens (so the prompt total is ``eps x tokens`` too). ``inf``
            sends the text unchanged (still recorded as such). Only the private fields'
            tokens count (`fedkt.data.cot.private_fields`).
        alpha: weight of the explain (rationale) loss; 1 - alpha weighs the predict loss.
        rationale: the server's generation (near-greedy; the reference uses T = 0.01).
        recovery: the client's generation of the recovered rationale.
        min_rationale_words: shorter rationales are dropped as degenerate.
        min_letters: alphabetic tokens with at least this many letters are perturbed; the
            default 1 protects every word piece (a rare word splits into short pieces, which a
            3-letter floor would pass through in the clear). Punctuation and whitespace pass.
        candidates: "classes" (words, word pieces, numbers, number pieces, each replaced
            within its class; punctuation, whitespace and the class sequence are released in
            clear) or "vocabulary" (every ordinary token replaced over the whole vocabulary;
            only each private field's padded token count is released;
            `fedkt.privacy.candidates`).
        pad_to: with "vocabulary", each private field is padded with a filler token to a
            multiple of this many tokens, the filler perturbed (and counted in eps) like
            any token, so only the padded length shows: on ARC-Easy the per-field token
            counts single out ~78 % of the train questions, padded to 8 ~2 %. Not used
            with "classes" (its filler would pass in clear).
        train: the SLM's multi-task training.
        seed: seeds the SLM's adapter initialisation (not the noise).
        noise_seed: seeds the perturbation noise (with the client's partition), for
            reproducible simulations and tests only: whoever knows it can replay the noise.
            None (the default): every client draws fresh noise from the OS's secure source
            (`secrets`) for every run, the only setting with a real guarantee.
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
    candidates: Partition = "classes"
    pad_to: int = 8
    train: TrainSettings = field(default_factory=TrainSettings)
    seed: int = 0
    noise_seed: int | None = None

    def __post_init__(self) -> None:
        if self.candidates not in PARTITIONS:
            raise ConfigError(
                f"fedcot candidates {self.candidates!r} is unknown; use one of {list(PARTITIONS)}"
            )
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"fedcot strategy {self.strategy!r} is unknown; use one of {list(STRATEGIES)}"
            )
        if math.isnan(self.eps) or self.eps < 0:
            raise ConfigError(f"fedcot eps={self.eps} must be >= 0 (inf: no perturbation)")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"fedcot alpha={self.alpha} must be in [0, 1]")
        if self.pad_to < 1:
            raise ConfigError(f"fedcot pad_to={self.pad_to} must be >= 1 (1: no padding)")
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


def make_perturber(
    tokenizer: PreTrainedTokenizerBase,
    kit: PerturbationKit,
    settings: FedCoTSettings,
    importance: torch.Tensor | None = None,
) -> TextPerturber:
    """The mechanism of ``settings`` over ``kit`` (built with ``settings.candidates``): EM or
    AEM, padding each field to ``pad_to`` under "vocabulary". "none" gets one too: its
    tokenizer records what is sent."""
    mechanism: Literal["em", "aem"] = "aem" if settings.strategy == "aem" else "em"
    pad_to = settings.pad_to if settings.candidates == "vocabulary" else 1
    return TextPerturber(tokenizer, kit, mechanism, importance, pad_to=pad_to)


NOISE_SECRETS = "secrets"
NOISE_SEEDED = "seeded"


def noise_generator(
    settings: FedCoTSettings, partition: int, device: torch.device | str = "cpu"
) -> tuple[torch.Generator, str]:
    """The perturbation's generator for one client and run, and where its noise comes from:
    fresh state from `secrets` ("secrets", `fedkt.privacy.secure_generator`), or
    ``noise_seed`` with the partition ("seeded": reproducible, so a simulation only)."""
    if settings.noise_seed is None:
        return secure_generator(device), NOISE_SECRETS
    seed = derive_seed(settings.noise_seed, partition)
    return torch.Generator(device=device).manual_seed(seed), NOISE_SEEDED


@dataclass(frozen=True)
class ClientQueries:
    """A client's questions after step 2: what it keeps and what it sends.

    Only `requests` leave the client; `examples`, `fields` (each question's private fields),
    `perturbed` (which holds the source token ids for the leakage audit) and
    `perturbed_fields` stay local. Request ids are opaque positions ("q0", "q1", ...): a
    dataset's own ids can carry information, so they are never sent.
    """

    examples: tuple[Example, ...]
    perturbed: tuple[PerturbedText, ...]
    requests: tuple[Request, ...]
    fields: tuple[tuple[str, ...], ...]
    perturbed_fields: tuple[tuple[str, ...], ...]

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
    *,
    label_names: Sequence[str] = (),
) -> ClientQueries:
    """Steps 1-2: perturb each question's private fields (unless "none"), put them back into
    the public template, wrap that for the server.

    Only the question and (multiple choice) the choices are perturbed and counted in the
    prompt's eps; "Choices:" and the separators are public, and so are the choices of a row
    that are exactly ``label_names`` (a classification task's labels, `fedkt.data.cot`).
    """
    fields = [private_fields(example, label_names) for example in examples]
    flat = [text for row in fields for text in row]
    if settings.strategy == "none":
        parts = unperturbed(perturber.tokenizer, flat)
    else:
        parts = perturber.perturb(flat, settings.eps, generator)
    perturbed, sent_fields, at = [], [], 0
    for example, row in zip(examples, fields, strict=True):
        own = parts[at : at + len(row)]
        at += len(row)
        texts = tuple(p.text for p in own)
        perturbed.append(join_perturbed(own, render_fields(example, texts)))
        sent_fields.append(texts)
    requests = [
        Request(id=request_id(i), prompt=rationale_request(p.text, _kind(example)))
        for i, (example, p) in enumerate(zip(examples, perturbed, strict=True))
    ]
    return ClientQueries(
        tuple(examples),
        tuple(perturbed),
        tuple(requests),
        tuple(fields),
        tuple(sent_fields),
    )


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


# ---- privacy report (the client's own: never sent) ----------------------------------------


def privacy_report(
    queries: ClientQueries,
    kit: PerturbationKit,
    settings: FedCoTSettings,
    *,
    perturber: TextPerturber | None = None,
    log_prior: torch.Tensor | None = None,
    reference: Sequence[Sequence[str]] = (),
    noise: str = NOISE_SECRETS,
) -> dict[str, Any]:
    """Epsilon accounting and the leakage audit of one client's requests (spec: "Leakage
    audit", "Guarantee in deployment"). Every number here is derived from the private rows
    (per-token budgets under AEM, audit rates over the private token ids, the gold-answer leak
    rate), none is covered by eps, so the report stays on the client (its own file, its log).

    - ``noise``: where the perturbation's noise came from ("secrets" or "seeded").
    - ``released_in_clear``: what the prompts show beside the perturbed tokens.
    - ``protected_recovered``: MAP inversion by an attacker holding the same embeddings
      (uniform prior); ``protected_recovered_prior``: the same under the public unigram prior
      ``log_prior``; ``prior_only_recovered``: that prior's best guess per candidate set
      without looking at the output (the baseline the attack lifts off).
    - ``gold_answer_leak_rate``: share of prompts whose gold answer appears in the perturbed
      private fields (not in the public instruction and worked example around them).
    - ``pattern_unique_rate``: share of prompts whose released pattern no other text (of
      ``reference``, the task's public questions as private fields, or of this client's)
      shares; ``pattern_unique_public``: the same share within ``reference`` alone. Needs
      the ``perturber`` that made the queries (its tokenizer and padding). Without
      perturbation ("none", eps = inf) the pattern is the text itself.
    """
    summary = privacy_summary(queries.records)
    summary.pop("strategies")
    plain = settings.strategy == "none"
    in_clear = plain or math.isinf(settings.eps)
    if plain:
        audit: dict[str, float] = {"protected_recovered": 1.0, "all_recovered": 1.0}
    else:
        audit = inversion_recovery(queries.perturbed, kit, settings.eps, settings.strategy)
        if log_prior is not None:
            informed = inversion_recovery(
                queries.perturbed, kit, settings.eps, settings.strategy, log_prior=log_prior
            )
            audit["protected_recovered_prior"] = informed["protected_recovered"]
            audit.update(prior_only_recovery(queries.perturbed, kit, log_prior))
    golds = [_gold_text(example) for example in queries.examples]
    private_sent = ["\n".join(fields) for fields in queries.perturbed_fields]
    report: dict[str, Any] = {
        "strategy": settings.strategy,
        "eps": settings.eps,
        "noise": "none (nothing perturbed)" if in_clear else noise,
        "candidates": "none" if plain else settings.candidates,
        "released_in_clear": "everything" if in_clear else RELEASED_IN_CLEAR[settings.candidates],
        **summary,
        **audit,
        "gold_answer_leak_rate": answer_leak_rate(private_sent, golds),
    }
    if perturber is not None:
        uniqueness = pattern_uniqueness(
            perturber.tokenizer,
            None if in_clear else kit,
            queries.fields,
            reference,
            pad_to=1 if in_clear else perturber.pad_to,
            pad_id=None if in_clear else perturber.pad_id,
        )
        report.update(uniqueness)
    return report


def _gold_text(example: Example) -> str:
    return example.answer if example.is_generative else example.choices[example.gold]
