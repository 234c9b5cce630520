"""Typed configuration: frozen dataclasses, loaded from one TOML file in exactly one place.

Every section is a frozen dataclass whose fields carry defaults and help text; the libraries own
their own settings (`TrainSettings`, `LoraSettings`) and this module only composes them. Loading
is strict: an unknown key (a typo) or a value of the wrong type is a `ConfigError` naming the
file, the dotted key and what was expected, so a run never starts on a silently ignored setting.

Example (configs/quickstart.toml)::

    output_dir = "runs/quickstart"

    [model]
    name = "smollm2-135m"

    [data]
    tasks = ["ag_news", "arc_easy"]
    split = "validation"
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from fedkt.algorithms.fdkt import FDKTSettings
from fedkt.algorithms.fedcollm import (
    Aggregation,
    AuxSource,
    DPAuxSettings,
    FedCoLLMSettings,
    KDSelection,
)
from fedkt.algorithms.fedcot import FedCoTSettings
from fedkt.data.cot import RATIONALE_STOP
from fedkt.data.curation import CurationSettings
from fedkt.data.custom import CustomTask
from fedkt.data.tasks import TASKS, TaskSpec, get_task
from fedkt.errors import ConfigError, DataError
from fedkt.federation.fedcollm import RoundPolicy
from fedkt.federation.secagg import SecAggSettings
from fedkt.generation import GenerationSettings
from fedkt.generation.synthesis import SynthesisSettings
from fedkt.models import LoraSettings
from fedkt.training import TrainSettings
from fedkt.training.dp_generator import DPSettings

T = TypeVar("T")

Baseline = Literal[
    "zero_shot",
    "standalone",
    "fedavg",
    "fedavg_server_ce",
    "centralized",
    "fedcollm",
    "fedcollm_min_ce",
    "fedcollm_dp_aux",
]
BASELINES: tuple[Baseline, ...] = (
    "zero_shot",
    "standalone",
    "fedavg",
    "fedavg_server_ce",
    "centralized",
    "fedcollm",
)
"""The methods `fedkt run` compares by default: the paper's five in the order its tables list
them, plus ``fedavg_server_ce`` (FedAvg whose server also fine-tunes the aggregated SLM adapter
with plain cross-entropy on the public set D_a each round, no LLM): FedCoLLM's SLM sees D_a's
labels too, so only "fedcollm > fedavg_server_ce" credits the distillation rather than the extra
labelled rows. ``fedcollm_dp_aux`` (FedCoLLM without public data: its auxiliary set is the
clients' DP synthetic samples) and ``fedcollm_min_ce`` (FedCoLLM with selective distillation,
beside the paper's on the same rows) run only when named."""

_FEDCOLLM = FedCoLLMSettings()
_SECAGG = SecAggSettings()  # the defaults of [fedcollm] are the protocol's own
_DP_AUX = _FEDCOLLM.dp_aux


@dataclass(frozen=True)
class ModelConfig:
    """Which model to load and where.

    Args:
        name: the embedded ``smollm2-135m``, a truncated student ``smollm2-135m@layers=8``,
            a local directory or a Hugging Face hub id.
        dtype: ``auto`` (bf16 where the device supports it) or float32/bfloat16/float16.
        device: ``auto`` (CUDA when present) or a torch device string.
    """

    name: str = "smollm2-135m"
    dtype: str = "auto"
    device: str = "auto"


@dataclass(frozen=True)
class DataConfig:
    """Which tasks and rows.

    Args:
        dir: local data directory laid out like ../shared/data; empty means $FEDKT_DATA_DIR,
            and when that is unset too, the Hugging Face hub.
        tasks: task names (arc_easy, arc_challenge, openbookqa, commonsense_qa, gsm8k, ag_news,
            or a custom task defined in a [tasks.<name>] table).
        split: split to evaluate on; ``dev`` (in `fedkt run`) scores on the dev rows, for
            tuning learning rates, epsilon grids and other settings without touching
            validation, which stays for reporting.
        splits: per-task evaluation splits over ``split``, e.g. ``{ arc_easy = "test" }``:
            FedCoLLM's paper scores ARC and OpenBookQA on test but CommonsenseQA (whose test
            split has no labels) on validation. Each key must be one of ``tasks``; a split
            the task does not have is refused naming the key (before any model loads).
        limit: use only the first N rows of each split (0 = all).
        train_limit: use only the first N training rows (after the dev rows are taken out)
            when fine-tuning or federating (0 = all).
        dev_rows: `fedkt run` first carves this many rows, drawn at random with
            ``dev_seed``, from the whole train split as the dev split: the same rows
            whatever ``train_limit``, and never in a client's or the public part.
        dev_seed: seed of the dev rows' draw.
    """

    dir: str = ""
    tasks: tuple[str, ...] = ("arc_easy",)
    split: str = "validation"
    splits: dict[str, str] = field(default_factory=dict)
    limit: int = 0
    train_limit: int = 0
    dev_rows: int = 200
    dev_seed: int = 0

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError("data.tasks is empty: name at least one task, e.g. ['arc_easy']")
        for task, split in self.splits.items():
            if task not in self.tasks:
                raise ConfigError(
                    f"data.splits.{task}: {task!r} is not one of data.tasks "
                    f"({', '.join(self.tasks)}); name a task of the run or drop the key"
                )
            if not split.strip():
                raise ConfigError(f"data.splits.{task} is empty: name a split, e.g. 'test'")
        if self.limit < 0 or self.train_limit < 0 or self.dev_rows < 0:
            raise ConfigError(
                "data.limit, data.train_limit and data.dev_rows must be >= 0 (limits: 0 means "
                "all rows)"
            )

    def split_for(self, task: str) -> str:
        """The split ``task`` is evaluated on: its ``splits`` entry, else ``split``."""
        return self.splits.get(task, self.split)

    @property
    def evaluation_splits(self) -> dict[str, str]:
        """Every task's evaluation split, for results files (one run may mix splits)."""
        return {task: self.split_for(task) for task in self.tasks}


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate.

    Args:
        models: models to compare side by side; empty means just ``model.name``.
        batch_size: sequences per forward pass.
        max_new_tokens: generation budget for generative tasks (GSM8K).
        margin: non-inferiority margin of paired comparisons, as a fraction of accuracy
            (0.01: "not worse by more than 1 point").
    """

    models: tuple[str, ...] = ()
    batch_size: int = 16
    max_new_tokens: int = 256
    margin: float = 0.01

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ConfigError("eval.batch_size and eval.max_new_tokens must be at least 1")
        if not 0.0 <= self.margin < 1.0:
            raise ConfigError(f"eval.margin = {self.margin} must be in [0, 1) (0.01 = 1 point)")


@dataclass(frozen=True)
class FinetuneConfig:
    """Standalone / centralized fine-tuning (the baselines' local step).

    Args:
        method: ``lora`` (adapters only, peft) or ``full`` (every weight).
    """

    method: Literal["lora", "full"] = "lora"


@dataclass(frozen=True)
class FedCoLLMConfig:
    """FedCoLLM's server-side hyperparameters (see `FedCoLLMSettings` for their meaning).

    The clients' local training and both models' LoRA come from the top-level [train] and
    [lora] sections, so each setting has exactly one place in the file. ``kd_top_k`` left out
    means distillation over the full vocabulary (exact). The distillation budget is
    ``kd_epochs`` passes over D_a per round (default 1, the paper's); ``kd_steps``, when set,
    is a fixed step count that wins over it (quick runs). ``kd_selection = "min_ce"`` distils
    each row only toward the model with the lower gold-answer CE on it (FedMKT; default
    "none", the paper).

    Without public data (beyond the paper): ``aux_source = "dp_synthetic"`` makes the
    ``fedcollm`` method distil on the clients' DP synthetic samples instead of the public
    part, and the ``fedcollm_dp_aux`` baseline does so beside the ordinary ``fedcollm`` (the
    comparison). Classification tasks only. The DP settings of that step:

    Args:
        aux_source: the auxiliary set D_a of ``fedcollm``: "public" or "dp_synthetic".
        generator: the clients' generator base, DP-trained with a LoRA adapter in fp32
            ("": the SLM).
        eps, delta: each client's DP budget for its generator; delta must be below 1/N for
            the smallest client's N private rows (checked when the rows are cut).
        dp_epochs, dp_batch_size, dp_lr, dp_max_grad_norm, dp_max_length: DP-SGD of the
            generator (expected Poisson batch, Adam, per-row clipping norm, tokens per row).
        per_label: synthetic texts per label and client.
        synthesis_tokens, min_words, max_words: sampling length and the kept texts' words.
        label_field: the label prefix's field name ("Topic": "Topic: World | Text: ...").

    Rounds over Flower (`fedkt.federation.fedcollm.RoundPolicy`, `fedkt.federation.secagg`):

    Args:
        min_clients: the fewest answers a round aggregates (0, the default: every client).
        reply_timeout: seconds to wait for a round's replies (left out: no limit).
        secure_aggregation: SecAgg+ for the adapter uploads (default false): the server
            learns only their mean. With it, secagg_shares (0: every client) and
            secagg_threshold (0: a majority of the shares) set who may drop out,
            secagg_clipping_range and secagg_quantization_range the quantisation, and
            secagg_max_weight the largest example count under "weighted" aggregation.
    """

    rounds: int = _FEDCOLLM.rounds
    kd_lambda: float = _FEDCOLLM.kd_lambda
    kd_temperature: float = _FEDCOLLM.kd_temperature
    kd_top_k: int | None = _FEDCOLLM.kd_top_k
    kd_epochs: int = _FEDCOLLM.kd_epochs
    kd_steps: int | None = _FEDCOLLM.kd_steps
    kd_batch_size: int = _FEDCOLLM.kd_batch_size
    kd_selection: KDSelection = _FEDCOLLM.kd_selection
    aggregation: Aggregation = _FEDCOLLM.aggregation
    llm_lr: float = _FEDCOLLM.llm_lr
    slm_lr: float = _FEDCOLLM.slm_lr
    seed: int = _FEDCOLLM.seed
    aux_source: AuxSource = _FEDCOLLM.aux_source
    generator: str = ""
    eps: float = _DP_AUX.dp.target_epsilon
    delta: float = _DP_AUX.dp.delta
    dp_epochs: int = _DP_AUX.dp.epochs
    dp_batch_size: int = _DP_AUX.dp.batch_size
    dp_lr: float = _DP_AUX.dp.lr
    dp_max_grad_norm: float = _DP_AUX.dp.max_grad_norm
    dp_max_length: int = _DP_AUX.dp.max_length
    per_label: int = _DP_AUX.per_label
    synthesis_tokens: int = _DP_AUX.synthesis.max_new_tokens
    min_words: int = _DP_AUX.synthesis.min_words
    max_words: int = _DP_AUX.synthesis.max_words
    label_field: str = _DP_AUX.label_field
    min_clients: int = 0
    reply_timeout: float | None = None
    secure_aggregation: bool = False
    secagg_shares: int = _SECAGG.num_shares
    secagg_threshold: int = _SECAGG.threshold
    secagg_clipping_range: float = _SECAGG.clipping_range
    secagg_quantization_range: int = _SECAGG.quantization_range
    secagg_max_weight: float = _SECAGG.max_weight

    def __post_init__(self) -> None:
        self.settings(TrainSettings(), LoraSettings())  # the protocol's own range checks
        self.round_policy()  # and the transport's

    def round_policy(self) -> RoundPolicy:
        """Dropouts, timeouts and secure aggregation of the Flower rounds."""
        secure = SecAggSettings(
            num_shares=self.secagg_shares,
            threshold=self.secagg_threshold,
            clipping_range=self.secagg_clipping_range,
            quantization_range=self.secagg_quantization_range,
            max_weight=self.secagg_max_weight,
        )
        return RoundPolicy(
            min_clients=self.min_clients,
            reply_timeout=self.reply_timeout,
            secure_aggregation=secure if self.secure_aggregation else None,
        )

    def settings(self, client: TrainSettings, lora: LoraSettings) -> FedCoLLMSettings:
        """The protocol settings: these fields plus the clients' training and the LoRA."""
        return FedCoLLMSettings(
            rounds=self.rounds,
            kd_lambda=self.kd_lambda,
            kd_temperature=self.kd_temperature,
            kd_top_k=self.kd_top_k,
            kd_epochs=self.kd_epochs,
            kd_steps=self.kd_steps,
            kd_batch_size=self.kd_batch_size,
            kd_selection=self.kd_selection,
            aggregation=self.aggregation,
            llm_lr=self.llm_lr,
            slm_lr=self.slm_lr,
            seed=self.seed,
            aux_source=self.aux_source,
            dp_aux=self.dp_aux(),
            client=client,
            lora=lora,
        )

    def dp_aux(self) -> DPAuxSettings:
        """Step 0's settings (the clients' DP generator and its sampling), seeded by ``seed``."""
        return DPAuxSettings(
            dp=_dp_settings(self, self.eps),
            per_label=self.per_label,
            synthesis=_synthesis_settings(self),
            label_field=self.label_field,
            seed=self.seed,
        )


@dataclass(frozen=True)
class FederationConfig:
    """Who takes part in `fedkt run`, how the train split is shared, and what is compared.

    Args:
        llm: the server LLM's model name.
        slm: the clients' SLM (and the server's copy of it); must share the LLM's vocabulary.
        clients: number of clients K.
        partition: ``fedcollm`` cuts the train rows into K + 1 equal random parts (the last
            is the server's public set); ``iid`` and ``dirichlet`` keep that public part and
            re-split the clients' rows, ``dirichlet`` skewing their labels by ``alpha``.
        alpha: Dirichlet concentration (``dirichlet`` only; small = few labels per client).
        seed: seed of the partition (FedCoLLM: 123).
        baselines: methods to run, in this order.
        eval_every_round: evaluate FedCoLLM's LLM and SLM after every round (a learning
            curve), not only after the last one.
        client_cpus: CPU cores each simulated client reserves (clients run side by side when
            the machine has room for several).
        client_gpus: share of a GPU each simulated client reserves (0: clients on CPU).
        baseline_adapters: also save the baselines' trained adapters under
            ``<output_dir>/<task>/<method>/`` (the algorithm's own are always saved).
    """

    llm: str = "smollm2-135m"
    slm: str = "smollm2-135m@layers=8,healed=true"
    clients: int = 4
    partition: Literal["fedcollm", "iid", "dirichlet"] = "fedcollm"
    alpha: float = 1.0
    seed: int = 123
    baselines: tuple[Baseline, ...] = BASELINES
    eval_every_round: bool = True
    client_cpus: int = 1
    client_gpus: float = 0.0
    baseline_adapters: bool = True

    def __post_init__(self) -> None:
        if self.clients < 1 or self.client_cpus < 1 or self.client_gpus < 0 or self.alpha <= 0:
            raise ConfigError(
                f"federation: clients={self.clients} and client_cpus={self.client_cpus} must "
                f"be >= 1, client_gpus={self.client_gpus} >= 0 and alpha={self.alpha} > 0"
            )
        if not self.baselines or len(set(self.baselines)) != len(self.baselines):
            raise ConfigError(
                f"federation.baselines = {list(self.baselines)}: name each of "
                f"{list(typing.get_args(Baseline))} at most once, and at least one"
            )


FedCoTBaseline = Literal["zero_shot", "standalone", "cot_upper_bound", "fedcot"]
FedCoTStrategy = Literal["em", "aem", "krr", "custext", "metric", "paraphrase"]
FEDCOT_BASELINES: tuple[FedCoTBaseline, ...] = typing.get_args(FedCoTBaseline)
"""What `fedkt run` compares for FedCoT: both models zero-shot, the SLM trained on labels only,
non-private CoT distillation (the server sees raw questions: the upper bound), and FedCoT
for every strategy and epsilon."""


@dataclass(frozen=True)
class FedCoTConfig:
    """FedCoT's settings (see `fedkt.algorithms.fedcot.FedCoTSettings` for their meaning).

    The clients' SLM, the server LLM, the number of clients and the partition come from
    [federation]; the SLM's training from [train] and [lora].

    Args:
        decoder: the clients' frozen local LM that recovers rationales (and whose embeddings
            make the perturbation candidates).
        strategies: DP mechanisms to compare: "em", "aem", "krr", "custext", "metric",
            "paraphrase" (`fedkt.algorithms.fedcot.FedCoTSettings`).
        eps: privacy budgets to compare (per token for EM, k-RR and CusText; AEM spends the same
            prompt total; eps_d for metric DP; per generated token for "paraphrase", whose inf is
            the greedy paraphrase, a run of its own); ``inf`` sends the text unperturbed and is run
            once for all (token) strategies. The default is the paper's grid, at which EM keeps
            almost no token. Each mechanism's own grid (used with ``measured_grids``), the eps where
            its retention r(eps) on 200 public questions (ARC-Easy and AG News, geometric mean;
            SmolLM2-135M kit, "classes") crosses 1, 5, 20, 50, 80 and 95 % (`fedkt retention`,
            bench/fedcot_retention.py, `fedkt.privacy.retention.MEASURED_GRIDS`), each then inf: em
            15, 27, 36, 50, 73, 100; aem 19, 30, 40, 54, 78, 110; krr 1.9, 5.9, 8.7, 10, 12, 13;
            custext (K = 20, EM inside; it keeps 1/K = 5 % at eps = 0) 11, 21, 35, 55, with k-RR
            inside 1.5, 2.9, 4.3, 5.9; metric (eps_d) 4, 9.4, 13, 16, 19, 24. With "vocabulary" they
            move little (em 23 to 100, krr 6.2 to 14, metric 8.6 to 24).
        baselines: methods to run, in this order.
        alpha: weight of the explain loss (1 - alpha: the predict loss).
        rationale_tokens: new tokens the server LLM may write per rationale.
        recovery_tokens: new tokens the client's decoder may write per recovered rationale.
        min_rationale_words: shorter rationales are dropped as degenerate.
        min_letters: alphabetic tokens with at least this many letters are perturbed (1: all).
        candidates: "classes" (tokens replaced within their class; punctuation, whitespace
            and the class pattern go out in clear) or "vocabulary" (every token replaced over
            the whole vocabulary; only each field's token count, padded to a multiple of
            ``pad_to``, goes out in clear).
        pad_to: the "vocabulary" mode's padding (1: none).
        cluster_size: CusText's cluster size K.
        custext_inner: CusText's mechanism inside a cluster, "em" or "krr".
        seed: seeds the SLM adapters' initialisation.
        noise_seed: seeds the perturbation noise, for a reproducible simulation (anyone who
            knows it can replay the noise). Left out: fresh noise from `secrets` per client
            and run, as in a deployment.
        keep_consistent: keep only the recovered rationales that reach the row's gold answer
            (the client checks with its own label); off by default.
        chat_template: the server LLM answers in its chat template where its tokenizer has
            one (instruction-tuned LLMs), and is scored zero-shot on generative tasks so too.
        measured_grids: each strategy sweeps its own measured grid
            (`fedkt.privacy.retention.MEASURED_GRIDS` for ``candidates``, ending in inf)
            instead of ``eps``; "paraphrase" has none and keeps ``eps``.
        grids: eps to sweep per strategy, e.g. ``{ krr = [0, 8.7, 10, 12] }``, over
            ``measured_grids`` and ``eps`` for the strategies it names (the knee points of a
            mechanism read off `fedkt retention`; 0 is each mechanism's no-information end).
        train_slm: false stops every point after step 4 (a utility sweep): the clients
            recover and grade the rationales against their labels and write their privacy
            report, but train and score no SLM. Cheap; choose eps with it, then train there.
        paraphrase_tokens: "paraphrase"'s tokens drawn per private field (its eps is per
            token: a field costs paraphrase_tokens x eps).
        paraphrase_logit_min, paraphrase_logit_max: "paraphrase"'s public logit clipping range.
    """

    decoder: str = "smollm2-135m"
    strategies: tuple[FedCoTStrategy, ...] = ("em", "aem")
    eps: tuple[float, ...] = (1.0, 3.0, 5.0, 10.0, float("inf"))
    baselines: tuple[FedCoTBaseline, ...] = FEDCOT_BASELINES
    alpha: float = 0.5
    rationale_tokens: int = 128
    recovery_tokens: int = 128
    min_rationale_words: int = 5
    min_letters: int = 1
    candidates: Literal["classes", "vocabulary"] = "classes"
    pad_to: int = 8
    cluster_size: int = 20
    custext_inner: Literal["em", "krr"] = "em"
    seed: int = 0
    noise_seed: int | None = None
    keep_consistent: bool = False
    chat_template: bool = True
    measured_grids: bool = False
    grids: dict[str, tuple[float, ...]] = field(default_factory=dict)
    train_slm: bool = True
    paraphrase_tokens: int = 64
    paraphrase_logit_min: float = -10.0
    paraphrase_logit_max: float = 10.0

    def __post_init__(self) -> None:
        if not self.strategies or not self.baselines:
            raise ConfigError("fedcot.strategies and fedcot.baselines need at least one entry")
        if any(e < 0 or e != e for e in self.eps):
            raise ConfigError(f"fedcot.eps = {list(self.eps)}: every budget must be >= 0")
        for strategy, grid in self.grids.items():
            if strategy not in typing.get_args(FedCoTStrategy):
                known = ", ".join(typing.get_args(FedCoTStrategy))
                raise ConfigError(f"fedcot.grids.{strategy}: unknown strategy; use one of {known}")
            if not grid or any(e < 0 or e != e for e in grid):
                raise ConfigError(
                    f"fedcot.grids.{strategy} = {list(grid)}: give at least one eps, each >= 0"
                )
        if self.rationale_tokens < 1 or self.recovery_tokens < 1:
            raise ConfigError("fedcot.rationale_tokens and recovery_tokens must be at least 1")
        self.settings(TrainSettings())  # the protocol's own range checks

    def settings(
        self, train: TrainSettings, strategy: str = "em", eps: float = 3.0
    ) -> FedCoTSettings:
        """The protocol settings of one (strategy, eps) point."""
        return FedCoTSettings(
            strategy=strategy,  # type: ignore[arg-type]
            eps=eps,
            alpha=self.alpha,
            rationale=GenerationSettings(max_new_tokens=self.rationale_tokens, stop=RATIONALE_STOP),
            recovery=GenerationSettings(max_new_tokens=self.recovery_tokens, stop=RATIONALE_STOP),
            min_rationale_words=self.min_rationale_words,
            min_letters=self.min_letters,
            candidates=self.candidates,
            pad_to=self.pad_to,
            cluster_size=self.cluster_size,
            custext_inner=self.custext_inner,
            train=train,
            seed=self.seed,
            noise_seed=self.noise_seed,
            keep_consistent=self.keep_consistent,
            chat_template=self.chat_template,
            paraphrase_tokens=self.paraphrase_tokens,
            paraphrase_logit_min=self.paraphrase_logit_min,
            paraphrase_logit_max=self.paraphrase_logit_max,
        )


FDKTBaseline = Literal[
    "zero_shot", "local_only", "zero_shot_augmentation", "dp_synthetic_only", "fdkt"
]
FDKT_BASELINES: tuple[FDKTBaseline, ...] = typing.get_args(FDKTBaseline)
"""What `fedkt run` compares for FDKT: both models zero-shot, each client's SLM on its private
rows only, private + samples the LLM writes from the label names alone (no demonstrations),
private + curated DP synthetic samples (no LLM), and FDKT at every epsilon."""


@dataclass(frozen=True)
class FDKTConfig:
    """FDKT's settings (see `fedkt.algorithms.fdkt.FDKTSettings` for their meaning).

    The clients' SLM, the server LLM, the number of clients and the partition come from
    [federation]; the SLM's training from [train] and both adapters from [lora].

    Args:
        generator: the clients' generator base, DP-trained with LoRA ("": the SLM).
        embedder: the server's sentence embedder.
        eps: privacy budgets of the generator to compare (``inf``: no noise).
        delta: DP delta; must be below 1/N for a client's N private rows.
        synthetic_only_eps: the budget of the ``dp_synthetic_only`` baseline.
        baselines: methods to run, in this order.
        dp_epochs, dp_batch_size, dp_lr, dp_max_grad_norm, dp_max_length: DP-SGD of the
            generator (expected Poisson batch, Adam, per-row clipping norm, tokens per row).
        per_label: synthetic texts per label and client (multiple-choice tasks: whole items
            per client).
        synthesis_tokens, min_words, max_words: sampling length and the kept texts' words.
        n_prompts, demos_per_label, new_per_label: the server's augmentation prompts.
        augment_tokens, augment_temperature: the LLM's decoding.
        label_field, domain: the label prefix's field ("Topic") and the instruction's domain.
        canaries: the leakage audit's canary sentences put into client 0's generator
            training data (0: no audit; `fedkt.privacy.leakage`). They count as private rows
            for the accountant; their exposure under the DP generator and any near-verbatim
            copy in what the client sent go into results.json.
        seed: seeds the noise, sampling and prompts (offset per client).
    """

    generator: str = ""
    embedder: str = "all-minilm-l6-v2"
    eps: tuple[float, ...] = (1.0, 3.0, 8.0, float("inf"))
    delta: float = 1e-5
    synthetic_only_eps: float = 3.0
    baselines: tuple[FDKTBaseline, ...] = FDKT_BASELINES
    dp_epochs: int = 1
    dp_batch_size: int = 8
    dp_lr: float = 5e-4
    dp_max_grad_norm: float = 1.0
    dp_max_length: int = 128
    per_label: int = 20
    synthesis_tokens: int = 64
    min_words: int = 5
    max_words: int = 200
    n_prompts: int = 8
    demos_per_label: int = 2
    new_per_label: int = 5
    augment_tokens: int = 256
    augment_temperature: float = 0.7
    label_field: str = "Label"
    domain: str = ""
    canaries: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.canaries < 0:
            raise ConfigError(f"fdkt.canaries = {self.canaries}: need >= 0 (0: no audit)")
        if not self.eps or not self.baselines or len(set(self.baselines)) != len(self.baselines):
            raise ConfigError(
                f"fdkt.eps and fdkt.baselines need at least one entry, each baseline once "
                f"(one of {list(FDKT_BASELINES)})"
            )
        for eps in (*self.eps, self.synthetic_only_eps):
            self.settings(TrainSettings(), eps)  # eps <= 0 and the protocol's ranges fail here

    def settings(self, train: TrainSettings, eps: float, use_llm: bool = True) -> FDKTSettings:
        """The protocol settings of one eps point (without the LLM: no prompts)."""
        return FDKTSettings(
            dp=_dp_settings(self, eps),
            per_label=self.per_label,
            synthesis=_synthesis_settings(self),
            curation=CurationSettings(seed=self.seed),
            n_prompts=self.n_prompts if use_llm else 0,
            demos_per_label=self.demos_per_label,
            new_per_label=self.new_per_label,
            augmentation=GenerationSettings(
                max_new_tokens=self.augment_tokens,
                temperature=self.augment_temperature,
                top_p=0.9,
                seed=self.seed,
            ),
            label_field=self.label_field,
            domain=self.domain,
            train=train,
            seed=self.seed,
        )


@dataclass(frozen=True)
class DeploymentConfig:
    """[deployment]: FedCoLLM across machines on Flower's deployment engine (`fedkt server`,
    `fedkt client`; README "Run across machines"). Paths are relative to the working directory.

    Args:
        superlink: host:port of the SuperLink, as the SuperNodes and the server reach it; its
            one port serves the Fleet, Control and Runtime APIs (Flower 1.41).
        listen: the address `fedkt server` binds its SuperLink to ("": the host of
            ``superlink``; "0.0.0.0" to accept other machines).
        ca_cert: the CA certificate the clients trust (``fedkt certs`` writes ``ca.crt``).
        server_cert, server_key: the SuperLink's TLS certificate and key.
        node_auth: only SuperNodes whose public key is in ``node_keys`` may join.
        node_keys: the SuperNodes' public keys (``client<k>.pub``), registered at start.
        insecure: no TLS and no node authentication (a warning says so); only for trials.
        timeout: seconds the server waits for the run (nodes joining, all rounds).
    """

    superlink: str = "127.0.0.1:9092"
    listen: str = ""
    ca_cert: str = "certs/ca.crt"
    server_cert: str = "certs/server.crt"
    server_key: str = "certs/server.key"
    node_auth: bool = True
    node_keys: tuple[str, ...] = ("certs/client0.pub", "certs/client1.pub")
    insecure: bool = False
    timeout: float = 24 * 3600.0

    def __post_init__(self) -> None:
        host, _, port = self.superlink.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"deployment.superlink = {self.superlink!r}: expected host:port")
        if self.timeout <= 0:
            raise ConfigError(f"deployment.timeout = {self.timeout} must be > 0")


@dataclass(frozen=True)
class FedktConfig:
    """The whole run: one of these per TOML file.

    ``algorithm`` picks what `fedkt run` runs: "fedcollm" (with [fedcollm]), "fedcot"
    (with [fedcot]) or "fdkt" (with [fdkt]); all take their parties from [federation].
    ``tasks`` defines the user's own tasks, one ``[tasks.<name>]`` table each
    (`fedkt.data.custom.CustomTask`), which ``data.tasks`` then names like the built-in ones.
    """

    output_dir: str = "runs/default"
    cache_dir: str = ""
    algorithm: Literal["fedcollm", "fedcot", "fdkt"] = "fedcollm"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    fedcollm: FedCoLLMConfig = field(default_factory=FedCoLLMConfig)
    fedcot: FedCoTConfig = field(default_factory=FedCoTConfig)
    fdkt: FDKTConfig = field(default_factory=FDKTConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    deployment: DeploymentConfig = field(default_factory=DeploymentConfig)
    tasks: dict[str, CustomTask] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.tasks:
            if name in TASKS:
                raise ConfigError(
                    f"[tasks.{name}] would shadow the built-in task {name!r}: give your task "
                    f"another name, e.g. 'my_{name}'"
                )
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ConfigError(
                    f"[tasks.{name}]: a task name is letters, digits, _ . - (it names folders)"
                )

    def task_spec(self, name: str) -> TaskSpec:
        """The task called `name`: a custom task of [tasks] first, else a built-in one."""
        if name in self.tasks:
            return self.tasks[name].spec(name)
        if name in TASKS or not self.tasks:
            return get_task(name)  # an unknown name: the error lists the built-in tasks
        known = [*self.tasks, *TASKS]
        close = difflib.get_close_matches(name.lower().replace("-", "_"), known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(
            f"unknown task {name!r}; known tasks: {', '.join(known)} (define your own in a "
            f"[tasks.{name}] table).{hint}"
        )


class _GeneratorFields(Protocol):
    """The [fedcollm] and [fdkt] settings of a DP generator and its sampling (same names)."""

    @property
    def delta(self) -> float: ...
    @property
    def dp_epochs(self) -> int: ...
    @property
    def dp_batch_size(self) -> int: ...
    @property
    def dp_lr(self) -> float: ...
    @property
    def dp_max_grad_norm(self) -> float: ...
    @property
    def dp_max_length(self) -> int: ...
    @property
    def synthesis_tokens(self) -> int: ...
    @property
    def min_words(self) -> int: ...
    @property
    def max_words(self) -> int: ...


def _dp_settings(section: _GeneratorFields, eps: float) -> DPSettings:
    return DPSettings(
        target_epsilon=eps,
        delta=section.delta,
        epochs=section.dp_epochs,
        batch_size=section.dp_batch_size,
        lr=section.dp_lr,
        max_grad_norm=section.dp_max_grad_norm,
        max_length=section.dp_max_length,
    )


def _synthesis_settings(section: _GeneratorFields) -> SynthesisSettings:
    return SynthesisSettings(
        max_new_tokens=section.synthesis_tokens,
        min_words=section.min_words,
        max_words=section.max_words,
    )


def load_config(path: str | Path) -> FedktConfig:
    """Read `path` (TOML) into a `FedktConfig`; the only place TOML is parsed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found: pass the path of a TOML file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from err
    return build_config(raw, source=str(path))


def build_config(raw: dict[str, Any], source: str = "<dict>") -> FedktConfig:
    """Turn a parsed TOML table into a `FedktConfig`, checking every key and type."""
    return _build(FedktConfig, raw, source, prefix="")


def with_overrides(config: T, **changes: Any) -> T:
    """A copy of a config section with some fields replaced (CLI flags over the file)."""
    kept = {k: v for k, v in changes.items() if v is not None}
    return dataclasses.replace(config, **kept)  # type: ignore[type-var]


def _build(cls: type[T], raw: dict[str, Any], source: str, prefix: str, section: str = "") -> T:
    """Recursively build dataclass `cls` from `raw`, refusing unknown keys and wrong types;
    `section` starts its own range errors (a table in a dict names its key there)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [{prefix.rstrip('.')}] must be a table")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or key not in names:
            raise ConfigError(_unknown_key_message(source, prefix + str(key), str(key), names))
        kwargs[key] = _coerce(hints[key], value, source, prefix + key)
    try:
        return cls(**kwargs)
    except _CHECK_ERRORS as err:
        raise ConfigError(_range_message(cls, kwargs, err, source, prefix, section)) from err


_CHECK_ERRORS = (ConfigError, ValueError, TypeError, ArithmeticError)
"""What a section's own range checks (``__post_init__``) may raise on a well-typed value: a
ConfigError on purpose, the others by accident (e.g. ``int()`` of a non-ASCII digit)."""


def _range_message(
    cls: type, kwargs: dict[str, Any], err: Exception, source: str, prefix: str, section: str
) -> str:
    """``err`` of section ``cls``, naming the dotted keys at fault: each one set here that
    fails on its own (else all set here: a combination), unless the message names it already
    (the libraries' checks name their own fields, e.g. DPSettings' ``target_epsilon`` for
    ``fedcollm.eps``)."""
    at_fault = [key for key in kwargs if _fails_alone(cls, key, kwargs[key])] or list(kwargs)
    unnamed = [prefix + key for key in at_fault if prefix + key not in str(err)]
    detail = str(err) if isinstance(err, ConfigError) else f"{type(err).__name__}: {err}"
    if not unnamed:
        return f"{source}: {section}{detail}"
    values = ", ".join(f"{prefix}{key} = {kwargs[key]!r}" for key in at_fault)
    return f"{source}: {section}{values} is out of range: {detail}"


def _fails_alone(cls: type, key: str, value: Any) -> bool:
    try:
        cls(**{key: value})
    except _CHECK_ERRORS:
        return True
    return False


def _coerce(hint: Any, value: Any, source: str, key: str) -> Any:
    """Check `value` against the type `hint`, converting TOML lists to tuples."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source, prefix=key + ".")  # type: ignore[arg-type]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _coerce(option, value, source, key)
            except ConfigError:
                continue
        raise _type_error(source, key, hint, value)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {key} = {value!r} must be one of {list(args)}")
        return value
    if origin is dict:  # a TOML table of named entries, e.g. [tasks.<name>]
        if not isinstance(value, dict):
            raise _type_error(source, key, hint, value)
        return {
            name: _entry(args[1], item, source, f"{key}.{name}") for name, item in value.items()
        }
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _type_error(source, key, hint, value)
        item_types = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        if len(item_types) != len(value):
            raise _type_error(source, key, hint, value)
        return tuple(_coerce(t, v, source, key) for t, v in zip(item_types, value, strict=True))
    return _coerce_scalar(hint, value, source, key)


def _entry(hint: Any, value: Any, source: str, key: str) -> Any:
    """One value of a dict-typed setting; a table's range errors name its key."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, source, prefix=key + ".", section=f"[{key}] ")
    return _coerce(hint, value, source, key)


def _coerce_scalar(hint: Any, value: Any, source: str, key: str) -> Any:
    if hint is type(None):
        if value is not None:
            raise _type_error(source, key, hint, value)
        return None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # TOML integers have no size limit in tomllib
            raise ConfigError(f"{source}: {key} = {value} is too large for a float") from None
    if hint is int and isinstance(value, bool):
        raise _type_error(source, key, hint, value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise _type_error(source, key, hint, value)
    return value


def _type_error(source: str, key: str, hint: Any, value: Any) -> ConfigError:
    expected = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
    return ConfigError(f"{source}: {key} = {value!r} has the wrong type; expected {expected}")


def _unknown_key_message(source: str, dotted: str, key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(names)}"
    return f"{source}: unknown setting {dotted!r}; {hint}"
