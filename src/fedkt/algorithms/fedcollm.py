"""FedCoLLM: federated co-tuning of a server LLM and client SLMs, without the transport.

Fan, Kang, Ma, Fan, Liu, Chen, Yang, "Federated Co-tuning Framework for Large and Small
Language Models", arXiv 2411.11707 (2024).

State. The server holds the LLM f (frozen base, its own LoRA adapter omega) and a copy of the
SLM g (frozen base, global LoRA adapter theta). Client k holds the SLM base and private D_k;
the server also holds a small public set D_a. LLM and SLM share one tokenizer.

Without public data (``aux_source = "dp_synthetic"``, beyond the paper), D_a is made once,
before round 1, from the clients' DP synthetic samples:
  0. client k DP-trains a fresh generator adapter on D_k (DP-SGD, `fedkt.training.
     dp_synthesis`), samples texts per label and sends only (label, text) pairs; the server
     turns the pooled pairs into the task's own rows (`aux_examples`). Every later use of
     D_a is post-processing, so each client's D_k keeps the generator's (eps, delta).

One round t:
  1. broadcast        theta_k <- theta                                  (server -> clients)
  2. client update    theta_k <- train E epochs on D_k, CE on answers;  send (theta_k, n_k)
  3. aggregate        theta = sum_k w_k theta_k,  w_k = 1/K (uniform) or n_k / sum_j n_j
  4. distil on D_a    kd_epochs passes over D_a (the paper's reference code: one; kd_steps
                      overrides with a fixed count R), on answer tokens only, with T the
                      temperature,
                        L = [CE(f) + lambda KL(g || f)] + [CE(g) + lambda KL(f || g)]
                      where in each KL the *other* model is the detached target (computed
                      without dropout); omega and theta are updated together (one AdamW each).
                      Beyond the paper, kd_selection = "min_ce" keeps a KL term only on the
                      rows where its teacher has the lower CE on the gold answer (FedMKT).
  5. theta (distilled) is what the clients receive next round; omega never leaves the server.

Only LoRA tensors and example counts cross the client/server boundary (and, in step 0, DP
synthetic texts with their labels). This module is the protocol as plain functions (the
Flower adapter only moves their inputs and outputs); it avoids the reference code's bugs:
the KD target is the teacher's probabilities, each student keeps its gradient, the answer mask
is the CE mask, and the distilled theta is what goes out.

Models of one family may pad their output heads differently (Qwen2/2.5: 151,936 rows up to 3B,
152,064 above, one tokenizer of 151,665 tokens): KD and CE read the first len(tokenizer) rows
of both heads, the padded rows being no token's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Literal

import torch
from peft import PeftModel
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, set_seed

from fedkt.data import Example
from fedkt.data.formats import LabelFormat
from fedkt.data.synthetic import label_prefix
from fedkt.errors import ConfigError, DataError, FedktError, ModelError, TokenizerMismatchError
from fedkt.generation.synthesis import SynthesisSettings
from fedkt.models import (
    LoraSettings,
    adapter_state,
    add_lora,
    check_same_vocabulary,
    load_adapter_state,
    load_model_and_tokenizer,
)
from fedkt.training import (
    TrainReport,
    TrainSettings,
    answer_cross_entropy,
    answer_positions,
    collate,
    derive_seed,
    encode_answer_only,
    grad_scaler,
    min_ce_rows,
    selective_kd_loss,
    sequence_cross_entropy,
    train_answer_only,
)
from fedkt.training.dp_generator import DPSettings
from fedkt.training.dp_synthesis import DPSynthesis, dp_synthesize

Adapter = dict[str, torch.Tensor]
Aggregation = Literal["uniform", "weighted"]
AuxSource = Literal["public", "dp_synthetic"]
KDSelection = Literal["none", "min_ce"]
_Side = tuple[nn.Module, torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]


@dataclass(frozen=True)
class DPAuxSettings:
    """How the clients make D_a when the server has no public data (step 0).

    Args:
        dp: DP-SGD of each client's generator (target eps, delta < 1/N, epochs, batch, lr,
            clipping, tokens per row).
        per_label: synthetic texts each client samples per label (every label of the task).
        synthesis: sampling (temperature 1, top-p 0.9) and the kept texts' lengths.
        label_field: the generator's label prefix, e.g. "Topic" -> "Topic: World | Text:".
        seed: seeds each client's DP noise and sampling (derived per client): a simulation;
            None draws them from `secrets` (a deployment: nobody can replay the noise).
    """

    dp: DPSettings = field(default_factory=DPSettings)
    per_label: int = 20
    synthesis: SynthesisSettings = field(default_factory=SynthesisSettings)
    label_field: str = "Label"
    seed: int | None = 0

    def __post_init__(self) -> None:
        if self.per_label < 1:
            raise ConfigError(f"DPAuxSettings: per_label={self.per_label} must be >= 1.")
        label_prefix("label", self.label_field)  # a field the prefix cannot hold fails here


@dataclass(frozen=True)
class FedCoLLMSettings:
    """FedCoLLM hyperparameters (defaults: the paper, with the FedMKT appendix).

    Args:
        rounds: federated rounds (paper: 5).
        kd_lambda: weight lambda of each KL term in the distillation loss.
        kd_temperature: softmax temperature T of the KL terms (loss scaled by T^2).
        kd_top_k: distil over the teacher's k most likely tokens; None = full vocabulary (exact).
        kd_epochs: passes over D_a per round (paper and reference code: 1), so the distillation
            budget follows the size of D_a.
        kd_steps: a fixed number R of distillation steps per round instead (one public batch
            each, reshuffling at every pass); when set it wins over kd_epochs (quick runs).
        kd_batch_size: public sequences per distillation step.
        kd_selection: "none" (the paper: each model distils from the other on every row) or
            "min_ce" (FedMKT, arXiv 2406.17706: per public row, a model distils from the other
            only where the other has the lower CE on the gold answer, so the model that is
            better on a row is not pulled toward the worse one there).
        aggregation: "uniform" (the paper, w_k = 1/K) or "weighted" (w_k = n_k / sum n).
        llm_lr: peak lr of the LLM adapter during distillation.
        slm_lr: peak lr of the SLM adapter during distillation.
        seed: seeds the public batch order and dropout (derived per round) and the LoRA
            initialisation of both server models.
        distil: run step 4; False is FedAvg (the same rounds without distillation).
        aux_source: where D_a comes from: "public" (the server's public rows) or
            "dp_synthetic" (the clients' DP synthetic samples, step 0; classification only).
        dp_aux: step 0's settings (used only with aux_source = "dp_synthetic").
        client: local training of the clients. The server's two optimisers reuse its betas,
            weight decay, warmup ratio, clip norm and max length (one set in the paper).
        lora: the LoRA adapters of both models.
    """

    rounds: int = 5
    kd_lambda: float = 1.0
    kd_temperature: float = 1.0
    kd_top_k: int | None = None
    kd_epochs: int = 1
    kd_steps: int | None = None
    kd_batch_size: int = 4
    kd_selection: KDSelection = "none"
    aggregation: Aggregation = "uniform"
    llm_lr: float = 3e-5
    slm_lr: float = 3e-4
    seed: int = 0
    distil: bool = True
    aux_source: AuxSource = "public"
    dp_aux: DPAuxSettings = field(default_factory=DPAuxSettings)
    client: TrainSettings = field(default_factory=TrainSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        checks = {
            "rounds": self.rounds >= 1,
            "kd_lambda": self.kd_lambda >= 0,
            "kd_temperature": self.kd_temperature > 0,
            "kd_top_k": self.kd_top_k is None or self.kd_top_k >= 1,
            "kd_epochs": self.kd_epochs >= 1,
            "kd_steps": self.kd_steps is None or self.kd_steps >= 1,
            "kd_batch_size": self.kd_batch_size >= 1,
            "kd_selection": self.kd_selection in ("none", "min_ce"),
            "aggregation": self.aggregation in ("uniform", "weighted"),
            "aux_source": self.aux_source in ("public", "dp_synthetic"),
            "llm_lr": self.llm_lr > 0,
            "slm_lr": self.slm_lr > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise ConfigError(
                f"FedCoLLMSettings: out of range: {values}. Need rounds, kd_epochs, "
                "kd_batch_size >= 1; kd_steps, kd_top_k None or >= 1; kd_lambda >= 0; "
                "kd_temperature, llm_lr, slm_lr > 0; aggregation 'uniform' or 'weighted'; "
                "aux_source 'public' or 'dp_synthetic'; kd_selection 'none' or 'min_ce'."
            )


@dataclass(frozen=True)
class ClientUpdate:
    """What a client sends back: its adapter and example count (`report` stays local)."""

    adapter: Adapter
    n_examples: int
    report: TrainReport | None = None


@dataclass(frozen=True)
class LocalClient:
    """A client of an in-process round: its SLM and private examples.

    Clients may share one SLM object (even the server's): every update starts by loading the
    broadcast adapter, and the server reloads theta after aggregating.
    """

    slm: PeftModel
    examples: Sequence[Example]


@dataclass(frozen=True)
class RoundResult:
    """The distilled global SLM adapter (sent to clients next round) and the round's metrics."""

    adapter: Adapter
    metrics: dict[str, float]


# -- start-up check -------------------------------------------------------------------------


def check_pair(
    llm_tokenizer: PreTrainedTokenizerBase,
    slm_tokenizer: PreTrainedTokenizerBase,
    llm: nn.Module,
    slm: nn.Module,
) -> None:
    """Refuse an LLM/SLM pair whose KD would compare different token ids.

    The tokenizers must be identical (one id per string, the same special ids). The output
    heads may differ in size when padded past the tokenizer (Qwen2.5 0.5B and 7B: 151,936 and
    152,064 rows, one tokenizer): KD compares the first len(tokenizer) rows only.
    """
    check_same_vocabulary(llm_tokenizer, slm_tokenizer, names=("LLM", "SLM"))
    _check_output_vocab(llm, slm, llm_tokenizer)


def _check_output_vocab(llm: nn.Module, slm: nn.Module, tokenizer: PreTrainedTokenizerBase) -> int:
    """The logit rows KD compares, len(tokenizer); refuse a head too small for the tokenizer.

    Rows past len(tokenizer) are padding (for tensor-core-friendly sizes) that no token maps
    to, so dropping them loses nothing; a head with fewer rows than the tokenizer cannot score
    every token and means the model is not the tokenizer's.
    """
    vocab = len(tokenizer)
    short = [
        f"the {role} ({_model_name(model)}) predicts only {_output_vocab(model)}"
        for role, model in (("LLM", llm), ("SLM", slm))
        if _output_vocab(model) < vocab
    ]
    if short:
        raise TokenizerMismatchError(
            f"the tokenizer ({tokenizer.name_or_path or 'unnamed'}) has {vocab} tokens but "
            f"{' and '.join(short)}: the models and the tokenizer do not belong together. Pick "
            "an LLM and an SLM of one family with that tokenizer, or resize a model's "
            "embeddings to it (model.resize_token_embeddings(len(tokenizer)))."
        )
    return vocab


def _output_vocab(model: nn.Module) -> int:
    head = model.get_output_embeddings()  # type: ignore[operator]  # PeftModel forwards it
    return int(head.weight.shape[0])


def _model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "name_or_path", "") or "unnamed")


# -- client ----------------------------------------------------------------------------------


def client_update(
    slm: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    global_adapter: Adapter,
    examples: Sequence[Example],
    settings: TrainSettings,
    *,
    progress: bool = False,
) -> ClientUpdate:
    """Step 2: load the broadcast theta, train on the private answers, return theta_k and n_k."""
    load_adapter_state(slm, global_adapter)
    report = train_answer_only(slm, tokenizer, examples, settings, progress=progress)
    return ClientUpdate(adapter=adapter_state(slm), n_examples=len(examples), report=report)


def client_aux_synthesis(
    generator: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    settings: DPAuxSettings,
    partition: int,
) -> DPSynthesis:
    """Step 0 on client ``partition``: DP-train ``generator`` in place (pass one with a fresh
    LoRA adapter, fp32 trainable weights) on its private rows and sample texts per label.

    Only the returned ``texts`` and ``labels`` may leave the client; its DP report counts the
    private rows and stays local. The noise and the sampling are seeded per client from
    ``settings.seed``, or drawn from `secrets` when it is None. A target with delta >= 1/N is
    refused before any training.
    """
    noise, seed = None, None
    if settings.seed is not None:
        noise = torch.Generator().manual_seed(derive_seed(settings.seed, partition, 1))
        seed = derive_seed(settings.seed, partition, 2)
    return dp_synthesize(
        generator,
        tokenizer,
        examples,
        dp=settings.dp,
        per_label=settings.per_label,
        synthesis=settings.synthesis,
        label_field=settings.label_field,
        noise=noise,
        seed=seed,
    )


# -- server ----------------------------------------------------------------------------------


def aux_examples(pairs: Iterable[tuple[str, str]], fmt: LabelFormat) -> tuple[Example, ...]:
    """Step 0 on the server: D_a as the task's own rows, one per distinct (label, text) pair.

    ``fmt`` is read off rows the server holds (the public evaluation rows). The pairs are
    sorted, so D_a does not depend on the order the clients' replies arrived in. A label the
    task does not have is a malformed reply; no usable pair at all is refused with the fix.
    """
    unique = sorted({(label, text) for label, text in pairs if text.strip()})
    unknown = sorted({label for label, _ in unique} - set(fmt.labels))
    if unknown:
        raise FedktError(
            f"malformed FedCoLLM samples: labels {unknown[:3]} are not the task's "
            f"{list(fmt.labels)}"
        )
    if not unique:
        raise DataError(
            "the clients sent no DP synthetic samples, so the server has no auxiliary set: "
            "raise dp_aux.per_label or the synthesis length, or lower its min_words."
        )
    return tuple(fmt.example(f"aux{i}", label, text) for i, (label, text) in enumerate(unique))


def aggregate_adapters(updates: Sequence[ClientUpdate], how: Aggregation = "uniform") -> Adapter:
    """Step 3: theta = sum_k w_k theta_k, summed in fp32 and returned in the clients' dtype."""
    if not updates:
        raise FedktError(
            "aggregate_adapters got no client updates; a round needs at least one client "
            "that trained and answered."
        )
    _check_same_layout(updates)
    weights = _weights([u.n_examples for u in updates], how)
    return {
        key: _weighted_sum([u.adapter[key] for u in updates], weights) for key in updates[0].adapter
    }


def _weighted_sum(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    total = torch.zeros_like(tensors[0], dtype=torch.float32)
    for weight, tensor in zip(weights, tensors, strict=True):
        total += weight * tensor.float()
    return total.to(tensors[0].dtype)


def _weights(counts: list[int], how: Aggregation) -> list[float]:
    if how == "uniform":
        return [1.0 / len(counts)] * len(counts)
    if how != "weighted":
        raise ConfigError(f"aggregation {how!r} is unknown; use 'uniform' or 'weighted'.")
    if any(n < 1 for n in counts):
        raise DataError(
            f"weighted aggregation needs every client's example count >= 1, got {counts}; "
            "drop clients without data or use aggregation='uniform'."
        )
    return [n / sum(counts) for n in counts]


def _check_same_layout(updates: Sequence[ClientUpdate]) -> None:
    """Refuse updates whose adapters differ in keys or shapes (another base model or rank)."""
    layout = {key: tuple(t.shape) for key, t in updates[0].adapter.items()}
    for k, update in enumerate(updates[1:], start=1):
        other = {key: tuple(t.shape) for key, t in update.adapter.items()}
        diff = sorted(
            key for key in layout.keys() | other.keys() if layout.get(key) != other.get(key)
        )
        if diff:
            raise ModelError(
                f"client update {k}'s adapter differs from update 0's in {len(diff)} tensors "
                f"(e.g. {diff[0]!r}: shape {other.get(diff[0])} vs {layout.get(diff[0])}; None = "
                "missing): every client must use the same SLM and LoraSettings."
            )


def mutual_distillation(
    llm: PeftModel,
    slm: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    public_examples: Sequence[Example],
    settings: FedCoLLMSettings,
    *,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Step 4: `distil_steps` steps of mutual distillation on the public answers.

    Per step both models see the same batch and the loss
        L = [CE(f) + lambda KL(g || f)] + [CE(g) + lambda KL(f || g)]
    is minimised by two AdamW optimisers (LLM adapter at llm_lr, SLM adapter at slm_lr; warmup
    + cosine over the round's steps; each model's gradient clipped on its own). Each KL target
    is the other model's detached, dropout-free logits, so each KL term trains only its student
    and the sum's gradient splits cleanly between the models. Both models must sit on one
    device. Returns the mean of each term over the steps, the mean share of rows each direction
    distilled ("llm_kd_share": rows where the SLM taught the LLM; 1 with kd_selection "none"),
    the step count and the seconds.
    """
    if not public_examples:
        raise DataError("mutual_distillation got no public examples; FedCoLLM needs D_a.")
    vocab = _check_output_vocab(llm, slm, tokenizer)
    steps = distil_steps(len(public_examples), settings)
    set_seed(seed)
    sides: list[_Side] = [
        (llm, *_optimiser(llm, settings.llm_lr, settings, steps)),
        (slm, *_optimiser(slm, settings.slm_lr, settings, steps)),
    ]
    scaler = grad_scaler(llm, slm)  # a no-op unless a model computes in fp16
    device = next(llm.parameters()).device
    names = ("llm_ce", "llm_kd", "slm_ce", "slm_kd", "llm_kd_share", "slm_kd_share", "loss")
    totals = dict.fromkeys(names, 0.0)
    start = time.perf_counter()
    llm.train()
    slm.train()
    try:
        batches = _public_batches(tokenizer, public_examples, settings, seed, steps)
        for batch in tqdm(batches, total=steps, desc="distil", disable=not progress):
            batch = {k: v.to(device) for k, v in batch.items()}
            terms = _distil_step(sides, batch, settings, vocab, scaler)
            for name, value in terms.items():
                totals[name] += value / steps
    finally:
        llm.eval()
        slm.eval()
    return {**totals, "steps": float(steps), "seconds": time.perf_counter() - start}


def distil_steps(n_public: int, settings: FedCoLLMSettings) -> int:
    """Distillation steps of one round: ``kd_steps`` if set, else ``kd_epochs`` passes over
    the ``n_public`` rows of D_a in batches of ``kd_batch_size`` (the last one partial)."""
    if settings.kd_steps is not None:
        return settings.kd_steps
    return settings.kd_epochs * math.ceil(n_public / settings.kd_batch_size)


def _distil_step(
    sides: list[_Side],
    batch: dict[str, torch.Tensor],
    settings: FedCoLLMSettings,
    vocab: int,
    scaler: torch.amp.GradScaler,
) -> dict[str, float]:
    """One joint step: a single backward of L fills both adapters' gradients, then each side
    clips its own (unscaled) gradient and steps its own optimiser."""
    (llm, *_), (slm, *_) = sides
    for _, optimiser, _ in sides:
        optimiser.zero_grad(set_to_none=True)
    terms = _mutual_loss(llm, slm, batch, settings, vocab)
    scaler.scale(terms["loss"]).backward()
    for model, optimiser, scheduler in sides:
        scaler.unscale_(optimiser)
        trainable = [p for p in model.parameters() if p.requires_grad]
        nn.utils.clip_grad_norm_(trainable, settings.client.max_grad_norm)
        scaler.step(optimiser)
        scheduler.step()
    scaler.update()
    return {name: value.item() for name, value in terms.items()}


def _mutual_loss(
    llm: nn.Module,
    slm: nn.Module,
    batch: dict[str, torch.Tensor],
    settings: FedCoLLMSettings,
    vocab: int,
) -> dict[str, torch.Tensor]:
    """The four terms of L on one batch, their lambda-weighted sum under "loss", and the share
    of rows each KL term distilled ("llm_kd_share", "slm_kd_share").

    Logits are cut to the tokenizer's ``vocab`` rows (a padded head's extra rows are no token's).
    """
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    llm_logits = llm(**inputs, use_cache=False).logits[..., :vocab]  # (B, L, V)
    slm_logits = slm(**inputs, use_cache=False).logits[..., :vocab]  # (B, L, V)
    llm_target = _target_logits(llm, inputs, llm_logits, vocab)
    slm_target = _target_logits(slm, inputs, slm_logits, vocab)
    labels, mask = batch["labels"], answer_positions(batch["labels"])
    llm_rows, slm_rows = _kd_rows(llm_target, slm_target, labels, settings.kd_selection)
    kd = partial(selective_kd_loss, temperature=settings.kd_temperature, top_k=settings.kd_top_k)
    terms = {
        "llm_ce": answer_cross_entropy(llm_logits, labels),
        "llm_kd": kd(llm_logits, slm_target, mask, llm_rows),  # KL(g || f): the SLM teaches
        "slm_ce": answer_cross_entropy(slm_logits, labels),
        "slm_kd": kd(slm_logits, llm_target, mask, slm_rows),  # KL(f || g): the LLM teaches
    }
    lam = settings.kd_lambda
    terms["loss"] = (
        terms["llm_ce"] + lam * terms["llm_kd"] + terms["slm_ce"] + lam * terms["slm_kd"]
    )
    terms["llm_kd_share"] = llm_rows.float().mean()
    terms["slm_kd_share"] = slm_rows.float().mean()
    return terms


def _kd_rows(
    llm_target: torch.Tensor, slm_target: torch.Tensor, labels: torch.Tensor, how: KDSelection
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) bool each: the rows the LLM distils on (from the SLM) and the rows the SLM does.

    "none" keeps every row. "min_ce" ranks the two models per row by their gold-answer CE,
    read off the dropout-free targets: a model distils only where the other is strictly better.
    """
    every = torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device)
    if how == "none":
        return every, every
    llm_ce = sequence_cross_entropy(llm_target, labels)
    slm_ce = sequence_cross_entropy(slm_target, labels)
    return min_ce_rows(llm_ce, slm_ce), min_ce_rows(slm_ce, llm_ce)


def _target_logits(
    model: nn.Module, inputs: dict[str, torch.Tensor], logits: torch.Tensor, vocab: int
) -> torch.Tensor:
    """``model``'s detached logits as a KD target (and for min-CE ranking), without dropout.

    In mutual distillation each model is the other's teacher while it trains, so its training
    forward runs with dropout; a target taken from that pass would be one random dropout mask's
    noisy view. Without any active dropout the training logits already are the eval-mode
    logits, so they are reused (free); otherwise (LoRA dropout 0.05 in the paper) one extra
    no-grad forward in eval mode gives the target, about a third of a training step's cost.
    """
    if not _has_dropout(model):
        return logits.detach()
    model.eval()
    try:
        with torch.no_grad():
            return model(**inputs, use_cache=False).logits[..., :vocab]
    finally:
        model.train()


def _has_dropout(model: nn.Module) -> bool:
    """Whether a train-mode forward of ``model`` is random: a dropout layer with p > 0 (LoRA's,
    GPT-2's), or a config dropout probability > 0 (Llama's and Qwen2's attention dropout is
    applied functionally, with no layer to see)."""
    layers = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
    if any(isinstance(m, layers) and m.p > 0 for m in model.modules()):
        return True
    to_dict = getattr(getattr(model, "config", None), "to_dict", None)
    values = to_dict().items() if callable(to_dict) else ()
    return any(
        ("dropout" in key or "pdrop" in key) and isinstance(value, float) and value > 0
        for key, value in values
    )


def _public_batches(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    settings: FedCoLLMSettings,
    seed: int,
    steps: int,
) -> Iterator[dict[str, torch.Tensor]]:
    """``steps`` padded batches of the public set, reshuffled (seeded) at every pass."""
    if tokenizer.pad_token_id is None:
        raise ModelError(
            f"tokenizer {tokenizer.name_or_path!r} has no pad token; set one "
            "(fedkt.models.load_tokenizer always does) before distilling."
        )
    max_length, size = settings.client.max_length, settings.kd_batch_size
    encoded = [encode_answer_only(tokenizer, *ex.training_pair(), max_length) for ex in examples]
    generator = torch.Generator().manual_seed(seed)
    done = 0
    while True:
        order = torch.randperm(len(encoded), generator=generator).tolist()
        for start in range(0, len(order), size):
            if done == steps:
                return
            yield collate([encoded[i] for i in order[start : start + size]], tokenizer.pad_token_id)
            done += 1


def _optimiser(
    model: nn.Module, lr: float, settings: FedCoLLMSettings, steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the adapter (matrices decay, as in `train_answer_only`), warmup + cosine
    over the round's ``steps`` (`warmup_cosine`)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ModelError(
            "mutual_distillation: a model has no trainable parameters; give both models LoRA "
            "adapters (fedkt.models.add_lora)."
        )
    train = settings.client
    groups = [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": train.weight_decay},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimiser = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=train.betas)
    warmup = math.ceil(train.warmup_ratio * steps)
    factor = partial(warmup_cosine, warmup=warmup, total=steps)
    return optimiser, torch.optim.lr_scheduler.LambdaLR(optimiser, factor)


def warmup_cosine(step: int, *, warmup: int, total: int) -> float:
    """The lr factor of optimiser step ``step`` (0-based): linear warmup over ``warmup`` steps,
    then cosine decay toward 0 at ``total``.

    Unlike `transformers.get_cosine_schedule_with_warmup`, warmup counts the first step as
    step 1: its factor is 1 / (warmup + 1), not 0. The paper's 0.8 % warmup rounds up to one
    step in a round of a few dozen distillation steps, so HF's schedule would spend every
    round's first step at lr 0 (a wasted batch, 5 % of a 20-step round).
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


# -- the server's models ----------------------------------------------------------------------


@dataclass(frozen=True)
class ServerModels:
    """The server's LLM (adapter omega; None for FedAvg, which never distils), its SLM copy
    (global adapter theta), one tokenizer."""

    llm: PeftModel | None
    slm: PeftModel
    tokenizer: PreTrainedTokenizerBase


_LORA_STREAMS = {"llm": 0, "slm": 1}


def lora_seed(settings: FedCoLLMSettings, role: str) -> int:
    """The seed of ``role``'s ("llm" or "slm") starting adapter, derived from
    ``settings.seed``: one stream per model, so neither start depends on the other."""
    return derive_seed(settings.seed, _LORA_STREAMS[role])


def load_server_models(
    llm_name: str,
    slm_name: str,
    settings: FedCoLLMSettings,
    *,
    dtype: str | None = None,
    device: str | None = None,
) -> ServerModels:
    """The SLM copy with theta_0 and, when the server distils, the LLM with omega_0 (after
    checking the pair shares a vocabulary). FedAvg (``settings.distil`` off) never loads the
    LLM: `server_round` reads it only to distil.

    Each adapter's start is drawn from its own seed (`lora_seed`), so theta_0 is the same
    whether or not the LLM's LoRA was drawn first: FedAvg, FedCoLLM and every baseline that
    starts from `lora_seed` begin from one theta_0.
    """
    slm, tokenizer = load_model_and_tokenizer(slm_name, dtype=dtype, device=device)
    theta = add_lora(slm, settings.lora, seed=lora_seed(settings, "slm"))
    if not settings.distil:
        return ServerModels(None, theta, tokenizer)
    llm, llm_tokenizer = load_model_and_tokenizer(llm_name, dtype=dtype, device=device)
    check_pair(llm_tokenizer, tokenizer, llm, slm)
    omega = add_lora(llm, settings.lora, seed=lora_seed(settings, "llm"))
    return ServerModels(omega, theta, llm_tokenizer)


# -- one round -------------------------------------------------------------------------------

Exchange = Callable[[Adapter, int], Mapping[int, ClientUpdate]]
"""Steps 1-2 as a transport performs them: send theta of round t to every client, return each
client's update keyed by its partition id (Flower messages in `fedkt.federation.fedcollm`,
plain calls in `local_exchange`)."""


def client_training(train: TrainSettings, partition: int, round_index: int) -> TrainSettings:
    """Client ``partition``'s local training in round ``round_index``: its own seed, so no two
    clients (and no two rounds) share a batch order or dropout mask."""
    return replace(train, seed=derive_seed(train.seed, partition, round_index))


def server_round(
    models: ServerModels,
    public_examples: Sequence[Example],
    settings: FedCoLLMSettings,
    round_index: int,
    exchange: Exchange,
    *,
    progress: bool = False,
) -> RoundResult:
    """One round, as the server runs it; ``models`` are updated in place (omega stays inside
    ``models.llm``). With ``settings.distil`` off this is FedAvg: steps 1-3 only."""
    theta = adapter_state(models.slm)  # 1. broadcast theta
    updates = exchange(theta, round_index)  # 2. local training on the clients
    ordered = [updates[k] for k in sorted(updates)]  # partition order: reruns sum identically
    load_adapter_state(models.slm, aggregate_adapters(ordered, settings.aggregation))  # 3.
    metrics = {
        "clients": float(len(ordered)),
        "client_examples": float(sum(u.n_examples for u in ordered)),
    }
    if settings.distil:  # 4. mutual distillation on D_a
        if models.llm is None:
            raise ConfigError("server_round: settings.distil needs the server's LLM (got None)")
        distil = mutual_distillation(
            models.llm,
            models.slm,
            models.tokenizer,
            public_examples,
            settings,
            seed=derive_seed(settings.seed, round_index),
            progress=progress,
        )
        metrics |= {f"distil_{name}": value for name, value in distil.items()}
    return RoundResult(adapter=adapter_state(models.slm), metrics=metrics)  # 5. theta out


def local_exchange(
    clients: Sequence[LocalClient],
    tokenizer: PreTrainedTokenizerBase,
    settings: FedCoLLMSettings,
    *,
    progress: bool = False,
) -> Exchange:
    """Steps 1-2 by plain calls: client k (partition id k) trains in this process."""

    def exchange(theta: Adapter, round_index: int) -> dict[int, ClientUpdate]:
        return {
            k: client_update(
                client.slm,
                tokenizer,
                theta,
                client.examples,
                client_training(settings.client, k, round_index),
                progress=progress,
            )
            for k, client in enumerate(clients)
        }

    return exchange


def run_round(
    models: ServerModels,
    clients: Sequence[LocalClient],
    public_examples: Sequence[Example],
    settings: FedCoLLMSettings,
    *,
    round_index: int = 0,
    progress: bool = False,
) -> RoundResult:
    """One round in this process: `server_round` over `local_exchange`."""
    exchange = local_exchange(clients, models.tokenizer, settings, progress=progress)
    return server_round(models, public_examples, settings, round_index, exchange, progress=progress)
