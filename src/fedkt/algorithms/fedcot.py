"""FedCoT: federated chain-of-thought distillation, without the transport.

Fan, Chen, Kang, Ma, Gu, Song, Fan, Yang, "FedCoT: Federated Chain-of-Thought Distillation for
Large Language Models", arXiv 2406.12403 (v1 "PDSS"; v2 EMNLP Findings 2025).

State. Client k holds private labelled questions D_k, a trainable task SLM, a frozen local
decoder LM (to recover rationales) and a perturbation kit (candidate vocabularies and their
embeddings, from public model weights). The server holds an LLM that writes rationales. No
weights are exchanged; the server never sees a raw question or a label.

One round trip:
  1. encode       x'_i = render(M_eps(fields(x_i))): the private fields of every question (the
                  question, and for multiple choice its choices) are perturbed with a DP
                  mechanism (token by token: EM, adaptive EM, k-RR, CusText, metric DP; or
                  rewritten by the local LM: the DP-Prompt paraphrase) and put back into the
                  public template
  2. request      p_i = instruction + worked example + x'_i, sent under an opaque id     (-> server)
  3. rationale    r'_i = LLM(p_i), near-greedy, keyed by id                              (<- server)
  4. recover      r_i = LM_local(worked example + (x'_i, r'_i) + the ORIGINAL x_i), filtered
  5. train        L = alpha CE(explain: x_i -> r_i) + (1 - alpha) CE(predict: x_i -> y_i)
Evaluation uses the predict prefix for multiple choice and explain-then-answer for generative
reasoning tasks (`fedkt.data.cot.evaluation_example`). Utility is measured where it moves:
each client grades, with its own labels, the server's rationales (do they reach the gold
answer of the real question?) and the recovered ones (`Recovery.utility`), beside its SLM.

What leaves a client is the perturbed request text and its opaque id, then a bare
acknowledgement of the rationales it received (a count the server already knows), nothing
else: its privacy report (per-token budgets, audit rates, the gold-answer leak rate, the
pattern's uniqueness), losses, rationale counts and accuracies are derived from its private
rows and stay on its disk. Outside a seeded simulation (``noise_seed`` None) the noise is drawn from
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
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedkt.data import Example
from fedkt.data.cot import (
    RATIONALE_STOP,
    answer_choice,
    clean_rationale,
    cut_rationale,
    explain_example,
    predict_example,
    private_fields,
    prompt_kind,
    rationale_request,
    recovery_prompt,
    render_fields,
    render_question,
    states_answer,
)
from fedkt.errors import ConfigError
from fedkt.evaluation import answer_matches, mean_stderr
from fedkt.generation import (
    Backend,
    GenerationSettings,
    Request,
    ResponseStore,
    applies_chat_template,
    generate_responses,
)
from fedkt.privacy import (
    PARTITIONS,
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
from fedkt.privacy import paraphrase as dp_prompt
from fedkt.privacy.custext import DEFAULT_CLUSTER_SIZE, INNERS, Inner, cluster_kit
from fedkt.privacy.inversion import mechanism_recovery
from fedkt.privacy.paraphrase import Paraphraser, ParaphraseSettings
from fedkt.privacy.perturb import Strategy as TokenStrategy
from fedkt.privacy.perturb import mechanism_guarantee
from fedkt.training import TrainReport, TrainSettings, derive_seed, train_multitask

Strategy = Literal["em", "aem", "krr", "custext", "metric", "paraphrase", "none"]
STRATEGIES: tuple[Strategy, ...] = (
    "em",
    "aem",
    "krr",
    "custext",
    "metric",
    "paraphrase",
    "none",
)


@dataclass(frozen=True)
class FedCoTSettings:
    """FedCoT hyperparameters (defaults: the reference code's, scaled to small models).

    Args:
        strategy: "em" (Exponential Mechanism per token), "aem" (adaptive EM: the same prompt
            budget spread by public token importance), "krr" (k-ary randomized response over
            the token's candidate set: the most tokens kept at an eps), "custext" (EM or k-RR
            within a fixed cluster of public nearest neighbours; the cluster is released),
            "metric" (d_X-privacy, d = sqrt(2 - 2 cos); ``eps`` is eps_d), "paraphrase"
            (DP-Prompt: the client's local decoder LM writes ``paraphrase_tokens`` tokens per
            private field, each an EM draw over its clipped logits at ``eps``; any two texts
            are neighbours, nothing is released in clear; `fedkt.privacy.paraphrase`) or
            "none" (the non-private upper bound: the server sees the raw question). Each
            one's guarantee in words: `fedkt.privacy.perturb.mechanism_guarantee` (for
            "paraphrase" `fedkt.privacy.paraphrase.guarantee`), in the privacy report.
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
        cluster_size: "custext"'s K, the size of its public clusters.
        custext_inner: "custext"'s mechanism inside a cluster: "em" or "krr".
        train: the SLM's multi-task training.
        seed: seeds the SLM's adapter initialisation (not the noise).
        noise_seed: seeds the perturbation noise (with the client's partition), for
            reproducible simulations and tests only: whoever knows it can replay the noise.
            None (the default): every client draws fresh noise from the OS's secure source
            (`secrets`) for every run, the only setting with a real guarantee.
        keep_consistent: keep only recovered rationales whose answer is the row's gold answer
            (the client checks with its own label; the others are dropped and counted as
            ``inconsistent``). Off by default: the filter leaves fewer, more on-target
            rationales, and which helps the SLM is an empirical question; either way the
            rationale accuracies are measured before it. The other fix the literature uses,
            giving the gold answer to the recovery prompt (rationalisation), is not offered:
            the recovered rationale would then reach the gold answer by construction and its
            accuracy would say nothing about the server's help.
        chat_template: the server LLM answers each request as the user's turn of its chat
            template, where its tokenizer has one (an instruction-tuned LLM: fed a raw
            prompt it continues text instead); its end-of-turn then ends a rationale.
        paraphrase_tokens: "paraphrase"'s fixed output length n per private field; a field
            costs n x eps, so a multiple-choice row (question and each choice paraphrased
            separately) costs (1 + choices) x n x eps.
        paraphrase_logit_min, paraphrase_logit_max: "paraphrase"'s public logit clipping
            range (its sensitivity is their difference).
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
    cluster_size: int = DEFAULT_CLUSTER_SIZE
    custext_inner: Inner = "em"
    train: TrainSettings = field(default_factory=TrainSettings)
    seed: int = 0
    noise_seed: int | None = None
    keep_consistent: bool = False
    chat_template: bool = True
    paraphrase_tokens: int = 64
    paraphrase_logit_min: float = -10.0
    paraphrase_logit_max: float = 10.0

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
        if self.cluster_size < 2 or self.custext_inner not in INNERS:
            raise ConfigError(
                f"fedcot cluster_size={self.cluster_size} must be >= 2 and custext_inner="
                f"{self.custext_inner!r} one of {list(INNERS)}"
            )
        if self.min_rationale_words < 1 or self.min_letters < 1:
            raise ConfigError(
                f"fedcot min_rationale_words={self.min_rationale_words} and min_letters="
                f"{self.min_letters} must be >= 1"
            )
        _ = self.paraphrase_settings  # DP-Prompt's own range checks

    @property
    def paraphrase_settings(self) -> ParaphraseSettings:
        """ "paraphrase"'s settings at this point's eps (per generated token)."""
        return ParaphraseSettings(
            eps_per_token=self.eps,
            new_tokens=self.paraphrase_tokens,
            logit_min=self.paraphrase_logit_min,
            logit_max=self.paraphrase_logit_max,
        )

    @property
    def label(self) -> str:
        """How results name this setting, e.g. "em@3" or "none"."""
        return "none" if self.strategy == "none" else f"{self.strategy}@{self.eps:g}"


# ---- client, steps 1-2: perturb and wrap --------------------------------------------------


Perturber = TextPerturber | Paraphraser
"""What perturbs a client's private fields: ``tokenizer`` and ``perturb(texts, eps, generator)``."""


def make_perturber(
    tokenizer: PreTrainedTokenizerBase,
    kit: PerturbationKit,
    settings: FedCoTSettings,
    importance: torch.Tensor | None = None,
    *,
    model: nn.Module | None = None,
) -> Perturber:
    """The mechanism of ``settings`` over ``kit`` (built with ``settings.candidates``),
    padding each field to ``pad_to`` under "vocabulary". "none" gets an EM one too: its
    tokenizer records what is sent. "paraphrase" gets a `Paraphraser` on ``model``, the
    client's local decoder LM (``tokenizer`` its tokenizer; ``kit`` is not used)."""
    if settings.strategy == "paraphrase":
        if model is None:
            raise ConfigError(
                "fedcot strategy 'paraphrase' needs the client's local decoder LM: pass model="
            )
        return Paraphraser(model, tokenizer, settings.paraphrase_settings)
    mechanism: TokenStrategy = "em" if settings.strategy == "none" else settings.strategy
    pad_to = settings.pad_to if settings.candidates == "vocabulary" else 1
    return TextPerturber(
        tokenizer,
        kit,
        mechanism,
        importance,
        pad_to=pad_to,
        cluster_size=settings.cluster_size,
        inner=settings.custext_inner,
    )


COMPOSITION = (
    "per run: every run that perturbs the same private rows again spends its budget again "
    "(sequential composition), so in a deployment a sweep of eps points, or a repeated run, "
    "costs each client the sum of the points' prompt eps, and any point that sends the rows "
    "in clear (eps = inf, the non-private bound) releases them outright"
)
"""What a run's eps means once runs repeat (every privacy report says it; the harness sums
the points of a sweep per client)."""

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

    @property
    def sent_choices(self) -> tuple[tuple[str, ...], ...]:
        """Each question's choices as the server saw them (perturbed, or the public label
        names; () for a generative row), in request order: the client reads the server's
        answer against them (`client_recover`)."""
        return tuple(
            sent[1:] if len(sent) > 1 else example.choices
            for example, sent in zip(self.examples, self.perturbed_fields, strict=True)
        )


def client_encode(
    examples: Sequence[Example],
    perturber: Perturber,
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
    "paraphrase" too rewrites each field separately (each one ``paraphrase_tokens`` draws),
    so the server still sees a question and its choices in the public template.
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
        Request(
            id=request_id(i), prompt=rationale_request(p.text, prompt_kind(example, label_names))
        )
        for i, (example, p) in enumerate(zip(examples, perturbed, strict=True))
    ]
    return ClientQueries(
        tuple(examples),
        tuple(perturbed),
        tuple(requests),
        tuple(fields),
        tuple(sent_fields),
    )


# ---- server, step 3: rationales -----------------------------------------------------------


def server_rationales(
    backend: Backend,
    requests: Sequence[Request],
    settings: FedCoTSettings,
    store: ResponseStore | None = None,
) -> dict[str, str]:
    """Step 3: the LLM's rationale for every request, keyed by request id.

    With a `ResponseStore` on disk, ids answered before a crash are not generated again. A
    backend that answers in its model's chat template (`applies_chat_template`) ends a
    rationale with its end-of-turn token: the blank-line stop is dropped there (a chat
    answer's paragraphs are separated by blank lines; `clean_rationale` joins them).
    """
    generation = settings.rationale
    if applies_chat_template(backend):
        generation = replace(generation, stop=tuple(s for s in generation.stop if s.strip()))
    return generate_responses(backend, requests, generation, store, progress=True)


# ---- client, steps 4-5: recover and train -------------------------------------------------


@dataclass(frozen=True)
class Recovery:
    """Step 4's outcome: a rationale per example index, what was dropped and why, and how
    often the rationales reach the gold answer. Every number is the client's own (measured
    with its labels): it goes to its report file, never into a message.

    Every example is in exactly one of: ``rationales`` (kept), ``missing`` (no server
    rationale, or an empty one), ``degenerate`` (the server's rationale too short or
    repetitive: not worth recovering), ``failed`` (the recovery came back empty or
    degenerate) and ``inconsistent`` (recovered, but not reaching the gold answer, dropped
    with ``keep_consistent``); ``rejected`` is the sum of the last three.
    ``server_correct[i]`` says whether the server's rationale for row i reaches the gold
    answer of the real question (a missing one does not); ``recovered_correct[i]`` the same
    of the recovered rationale, before the consistency filter. ``server_no_answer`` and
    ``recovered_no_answer`` count rationales that state no answer at all
    (`fedkt.data.cot.states_answer`).
    """

    rationales: dict[int, str]
    missing: int
    rejected: int
    degenerate: int = 0
    failed: int = 0
    inconsistent: int = 0
    server_no_answer: int = 0
    recovered_no_answer: int = 0
    server_correct: tuple[bool, ...] = ()
    recovered_correct: tuple[bool, ...] = ()

    def utility(self) -> dict[str, float]:
        """The client's rationale numbers (for its own report): the server rationale's and
        the recovered rationale's answer accuracy over all its prompts (each with its
        standard error and count; "prompts": the denominator), and the counts of what was
        dropped."""
        out: dict[str, float] = {"prompts": len(self.server_correct)}
        for name, correct in (
            ("server_rationale", self.server_correct),
            ("recovered_rationale", self.recovered_correct),
        ):
            if correct:
                acc, stderr = mean_stderr([float(c) for c in correct])
                out |= {f"{name}_acc": acc, f"{name}_acc_stderr": stderr}
            out[f"{name}_correct"] = sum(correct)
        return {
            **out,
            "rationales_kept": len(self.rationales),
            "server_missing": self.missing,
            "server_degenerate": self.degenerate,
            "server_no_answer": self.server_no_answer,
            "recovery_failed": self.failed,
            "recovered_no_answer": self.recovered_no_answer,
            "inconsistent_dropped": self.inconsistent,
        }


def client_recover(
    decoder: Backend,
    examples: Sequence[Example],
    sent_questions: Sequence[str],
    responses: Mapping[str, str],
    settings: FedCoTSettings,
    server_choices: Sequence[Sequence[str]] | None = None,
    *,
    label_names: Sequence[str] = (),
) -> Recovery:
    """Step 4: recover a rationale for each ORIGINAL question with the frozen local LM.

    ``sent_questions[i]`` is the perturbed question the client sent as request ``q{i}`` (kept
    locally since step 1); ``responses`` maps request ids to the server's rationales, missing
    or empty ones being skipped. Without perturbation ("none") the server's rationale already
    answers the real question and is only cleaned.

    The client also grades every rationale against its own gold labels (`Recovery`): a
    generative answer by the number it ends on (as the SLM is scored), a multiple-choice
    answer by the choice its answer line names. The server answered the perturbed question,
    so its choice is read against ``server_choices[i]``, the choices as it saw them (the
    perturbed ones; None: the examples' own, right for "none"): it reaches the gold answer
    when it names the gold position. With ``settings.keep_consistent`` only recovered
    rationales that reach the gold answer are kept. ``label_names`` (a classification task's
    public labels) picks the recovery prompt's kind as in step 2 (`prompt_kind`).
    """
    n = len(examples)
    seen = [e.choices for e in examples] if server_choices is None else server_choices
    server_texts = [cut_rationale(responses.get(request_id(i), "")) for i in range(n)]
    server_correct = tuple(
        _reaches(text, example, choices)
        for text, example, choices in zip(server_texts, examples, seen, strict=True)
    )
    answered = [i for i in range(n) if responses.get(request_id(i), "").strip()]
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
                sent_questions[i],
                text,
                render_question(examples[i]),
                prompt_kind(examples[i], label_names),
            )
            for i, text in usable.items()
        ]
        texts = decoder.generate(prompts, settings.recovery) if prompts else []
    recovered = {}
    for index, text in zip(usable, texts, strict=True):
        cleaned = clean_rationale(text, min_words=words)
        if cleaned is not None:
            recovered[index] = cleaned
    recovered_correct = tuple(
        i in recovered and _reaches(recovered[i], examples[i], examples[i].choices)
        for i in range(n)
    )
    kept = {
        i: text
        for i, text in recovered.items()
        if recovered_correct[i] or not settings.keep_consistent
    }
    return Recovery(
        kept,
        missing=n - len(answered),
        rejected=len(answered) - len(kept),
        degenerate=len(answered) - len(usable),
        failed=len(usable) - len(recovered),
        inconsistent=len(recovered) - len(kept),
        server_no_answer=sum(not states_answer(server_texts[i]) for i in answered),
        recovered_no_answer=sum(not states_answer(text) for text in recovered.values()),
        server_correct=server_correct,
        recovered_correct=recovered_correct,
    )


def _reaches(rationale: str, example: Example, choices: Sequence[str]) -> bool:
    """True when ``rationale`` ends on the gold answer of ``example``: the same number
    (generative, read as the evaluator reads it) or the choice at the gold position of
    ``choices`` (the choices as the rationale's writer saw them)."""
    if not rationale.strip():
        return False
    if example.is_generative:
        return answer_matches(rationale, example.answer)
    return answer_choice(rationale, choices) == example.gold


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
    perturber: Perturber | None = None,
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
    - ``composition``: that these budgets are per run (`COMPOSITION`): a sweep or a repeated
      run over the same rows pays the sum.
    - ``pattern_unique_rate``: share of prompts whose released pattern no other text (of
      ``reference``, the task's public questions as private fields, or of this client's)
      shares; ``pattern_unique_public``: the same share within ``reference`` alone. Needs
      the ``perturber`` that made the queries (its tokenizer and padding). Without
      perturbation ("none", eps = inf) the pattern is the text itself.

    "paraphrase" (`fedkt.privacy.paraphrase`) reports its guarantee (needs the ``perturber``
    for its vocabulary size), the noise source and the gold-answer leak rate of the
    paraphrases; the token-alignment attackers do not apply (an output token has no input
    position) and the pattern is 0 by construction: nothing but sampled tokens is sent.
    """
    summary = privacy_summary(queries.records)
    summary.pop("strategies")
    if settings.strategy == "paraphrase":
        return _paraphrase_report(queries, settings, summary, perturber, noise)
    plain = settings.strategy == "none"
    in_clear = plain or math.isinf(settings.eps)
    # what an observer sees of each perturbed token: its set, or its cluster under custext
    seen = kit
    if settings.strategy == "custext":
        seen = cluster_kit(kit, settings.cluster_size)
    if plain:
        audit: dict[str, float] = {"protected_recovered": 1.0, "all_recovered": 1.0}
    else:
        audit = _recovery(queries.perturbed, kit, settings, None)
        if log_prior is not None:
            informed = _recovery(queries.perturbed, kit, settings, log_prior)
            audit["protected_recovered_prior"] = informed["protected_recovered"]
            audit.update(prior_only_recovery(queries.perturbed, seen, log_prior))
    golds = [_gold_text(example) for example in queries.examples]
    private_sent = ["\n".join(fields) for fields in queries.perturbed_fields]
    guarantee = _guarantee(kit, settings, in_clear)
    report: dict[str, Any] = {
        "strategy": settings.strategy,
        "eps": settings.eps,
        "noise": "none (nothing perturbed)" if in_clear else noise,
        "candidates": "none" if plain else settings.candidates,
        "released_in_clear": "everything" if in_clear else guarantee["released_in_clear"],
        "guarantee": guarantee,
        **summary,
        **audit,
        "gold_answer_leak_rate": answer_leak_rate(private_sent, golds),
        "composition": COMPOSITION,
    }
    if isinstance(perturber, TextPerturber):
        uniqueness = pattern_uniqueness(
            perturber.tokenizer,
            None if in_clear else seen,
            queries.fields,
            reference,
            pad_to=1 if in_clear else perturber.pad_to,
            pad_id=None if in_clear else perturber.pad_id,
        )
        report.update(uniqueness)
    return report


def _paraphrase_report(
    queries: ClientQueries,
    settings: FedCoTSettings,
    summary: dict[str, Any],
    perturber: Perturber | None,
    noise: str,
) -> dict[str, Any]:
    """`privacy_report` of "paraphrase": its guarantee, noise, leak rate; no pattern."""
    if perturber is None:
        raise ConfigError("privacy_report of 'paraphrase' needs the perturber (its tokenizer)")
    golds = [_gold_text(example) for example in queries.examples]
    private_sent = ["\n".join(fields) for fields in queries.perturbed_fields]
    guarantee = dp_prompt.guarantee(settings.paraphrase_settings, len(perturber.tokenizer))
    if math.isinf(settings.eps):
        guarantee["statement"] = "not private: the greedy paraphrase (eps = inf)"
    return {
        "strategy": settings.strategy,
        "eps": settings.eps,
        "noise": "none (greedy paraphrase)" if math.isinf(settings.eps) else noise,
        "candidates": "vocabulary (every generated token)",
        "released_in_clear": dp_prompt.RELEASED_IN_CLEAR,
        "guarantee": guarantee,
        **summary,
        "gold_answer_leak_rate": answer_leak_rate(private_sent, golds),
        "pattern_unique_rate": 0.0,
        "pattern": "none: only sampled tokens are sent (fixed number of draws per field)",
        "composition": COMPOSITION,
    }


def _recovery(
    perturbed: Sequence[PerturbedText],
    kit: PerturbationKit,
    settings: FedCoTSettings,
    log_prior: torch.Tensor | None,
) -> dict[str, float]:
    """The MAP attacker of the strategy: `inversion_recovery` for EM and AEM,
    `mechanism_recovery` for k-RR, CusText and metric DP."""
    if settings.strategy in ("em", "aem"):
        return inversion_recovery(
            perturbed, kit, settings.eps, settings.strategy, log_prior=log_prior
        )
    return mechanism_recovery(
        perturbed,
        kit,
        settings.strategy,
        settings.eps,
        cluster_size=settings.cluster_size,
        inner=settings.custext_inner,
        log_prior=log_prior,
    )


def _guarantee(kit: PerturbationKit, settings: FedCoTSettings, in_clear: bool) -> dict[str, Any]:
    """The strategy's guarantee in words (`mechanism_guarantee`); none when nothing is
    perturbed."""
    if in_clear:
        return {
            "mechanism": settings.strategy,
            "statement": "not private: the private fields are sent as they are",
            "released_in_clear": "everything",
        }
    if settings.candidates != kit.partition:
        raise ConfigError(
            f"privacy_report: settings say candidates={settings.candidates!r} but the kit is "
            f"a {kit.partition!r} kit; pass the kit the perturber used."
        )
    return mechanism_guarantee(
        settings.strategy,
        settings.eps,
        kit,
        cluster_size=settings.cluster_size,
        inner=settings.custext_inner,
    )


def _gold_text(example: Example) -> str:
    return example.answer if example.is_generative else example.choices[example.gold]
