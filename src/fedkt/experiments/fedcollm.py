"""`fedkt run` for FedCoLLM: the protocol beside the four methods the paper compares it with
(arXiv 2411.11707, Table 1), on one split, scored on the same rows.

Each method returns ``{"llm": scores or None, "slm": scores or None, ...}``: the server LLM's
and the (mean) client SLM's metrics with their standard errors, plus what that method has to
show (per-client scores, per-round curves, bytes). None means the method does not produce that
model. Training budgets match: a non-federated model trains ``rounds x epochs`` epochs, as
many as a client does over the whole federation, and every method starts from the same seeded
adapter (theta_0, omega_0) as the federation's server (`lora_seed`: one seed per model, so
theta_0 does not depend on whether the LLM's adapter was drawn first, or at all).

Beyond the paper's five, ``fedavg_server_ce`` is FedAvg whose server fine-tunes the averaged
SLM adapter with plain cross-entropy on the public part D_a each round (no LLM): FedCoLLM's
SLM sees D_a's labels too, so "fedcollm > fedavg_server_ce" is what credits the distillation.

Beyond the paper, ``fedcollm_min_ce`` is FedCoLLM with selective distillation (each side
learns only on the public rows where the other has the lower gold-answer CE), run beside the
paper's ``fedcollm``: it should keep FedCoLLM's gain where the LLM is the stronger model and
stay non-inferior to FedAvg where the client SLM has outgrown the LLM.

Beyond the paper, ``fedcollm_dp_aux`` is FedCoLLM without public data: the server distils on
the clients' DP synthetic samples instead of the public part (classification tasks), run
beside ``fedcollm`` on the same rows; its "privacy" entry holds the eps each client's
accountant spent, read back from the clients' own report files (a simulation shares their
disk). ``[fedcollm] aux_source = "dp_synthetic"`` makes ``fedcollm`` itself that method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedkt.algorithms.fedcollm import (
    FedCoLLMSettings,
    ServerModels,
    client_training,
    lora_seed,
)
from fedkt.config import FedktConfig
from fedkt.data import Example
from fedkt.data.formats import LabelFormat
from fedkt.errors import ConfigError
from fedkt.experiments.harness import (
    Claim,
    Outcome,
    Role,
    Scoreboard,
    Scores,
    TaskData,
    dp_privacy,
    method_dir,
    run_methods,
    save_adapter,
)
from fedkt.experiments.summary import band, errorbar, plot_tasks
from fedkt.federation.fedcollm import (
    FederationResult,
    FederationSpec,
    ServerUpdate,
    simulate_fedcollm,
)
from fedkt.federation.reports import read_report, report_path
from fedkt.jobs import load_for, placement
from fedkt.models import adapter_state, add_lora, load_adapter_state
from fedkt.privacy.accounting import check_target
from fedkt.report import write_jsonl
from fedkt.training import TrainReport, TrainSettings, derive_seed, train_answer_only

CLAIMS = (
    Claim("slm", "fedcollm", "fedavg"),
    Claim("slm", "fedcollm", "fedavg_server_ce"),
    Claim("slm", "fedavg", "standalone"),
    Claim("slm", "standalone", "zero_shot"),
    Claim("slm", "fedcollm", "zero_shot"),
    Claim("llm", "fedcollm", "zero_shot"),
    Claim("llm", "fedcollm", "centralized", non_inferior=True),
    Claim("slm", "fedcollm_min_ce", "fedavg"),
    Claim("slm", "fedcollm_min_ce", "fedavg", non_inferior=True),
    Claim("slm", "fedcollm_min_ce", "fedcollm", non_inferior=True),
    Claim("llm", "fedcollm_min_ce", "fedcollm", non_inferior=True),
    Claim("slm", "fedcollm_dp_aux", "fedcollm", non_inferior=True),
    Claim("llm", "fedcollm_dp_aux", "fedcollm", non_inferior=True),
    Claim("slm", "fedcollm_dp_aux", "fedavg"),
    Claim("llm", "fedcollm_dp_aux", "zero_shot"),
)
"""The paper's claims: the client SLM ranks FedCoLLM > FedAvg > standalone > zero-shot, and
the LLM after FedCoLLM keeps (nearly) centralized accuracy. Beyond the paper: FedCoLLM's SLM
beats FedAvg with server-side cross-entropy on D_a too (the distillation, not D_a's labels
alone, makes the gain); without public data, FedCoLLM on DP synthetic samples keeps (nearly)
the accuracy of FedCoLLM on the public part, and still beats FedAvg (SLM) and zero-shot
(LLM). Selective distillation beats FedAvg where FedCoLLM does, is non-inferior to it where
the LLM is the weaker model, and loses nothing (SLM or LLM) against the paper's FedCoLLM."""


@dataclass
class FedCoLLMTask:
    """One task's rows and what every method shares: models, LoRA, the scoreboard."""

    config: FedktConfig
    data: TaskData
    board: Scoreboard
    resume: bool = False

    @classmethod
    def load(cls, config: FedktConfig, task: str, resume: bool = False) -> FedCoLLMTask:
        """The rows; with DP synthetic aux data, refuses a non-classification task and a
        delta >= 1/N for the smallest client before any model is loaded."""
        data = TaskData.load(config, task)
        if _uses_dp_aux(config):
            LabelFormat.of(data.evaluation)
            smallest = min(len(part) for part in data.clients)
            check_target(config.fedcollm.eps, config.fedcollm.delta, smallest)
        return cls(config, data, Scoreboard(config, task, data.evaluation), resume)

    def save(self, label: str, model: PeftModel, *parts: str) -> None:
        """Save ``model``'s adapter under the method's folder (baselines' only when
        ``federation.baseline_adapters``; FedCoLLM's own always)."""
        if label.startswith("fedcollm") or self.config.federation.baseline_adapters:
            save_adapter(model, method_dir(self.config, self.data.task, label).joinpath(*parts))

    @property
    def settings(self) -> FedCoLLMSettings:
        return self.config.fedcollm.settings(self.config.train, self.config.lora)

    @property
    def local_training(self) -> TrainSettings:
        """Non-federated training budget: as many epochs as a client trains over all rounds."""
        train = self.config.train
        return dataclasses.replace(train, epochs=train.epochs * self.settings.rounds)

    def load_model(self, role: Role) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        federation = self.config.federation
        return load_for(self.config, federation.llm if role == "llm" else federation.slm)

    def load_lora(self, role: Role) -> tuple[PeftModel, PreTrainedTokenizerBase]:
        """The model with the federation's starting adapter (theta_0 or omega_0), drawn from
        the seed the federation's server draws it from (`lora_seed`): only this model loads."""
        model, tokenizer = self.load_model(role)
        settings = self.settings
        return add_lora(model, settings.lora, seed=lora_seed(settings, role)), tokenizer

    def zero_shot(self, role: Role) -> Scores:
        return self.board.score(*self.load_model(role), "zero_shot", role)

    def untouched_llm(self, label: str) -> Scores | None:
        """The LLM score of a method that never loads or trains the LLM (FedAvg): the
        zero-shot one, its rows aliased for the paired tests, when zero-shot has run (in
        this run or before a --resume); else None."""
        scores = self.board.finished.get("zero_shot", {}).get("llm")
        if scores is None:
            return None
        self.board.alias(label, "llm", same_as="zero_shot")
        return dict(scores)

    def federate(
        self,
        label: str,
        settings: FedCoLLMSettings,
        roles: tuple[Role, ...],
        every_round: bool,
        server_update: ServerUpdate | None = None,
    ) -> tuple[FederationResult, list[dict[str, Any]]]:
        """Simulate the federation (with the extra server step ``server_update``, if any),
        scoring the server's ``roles`` after every round (or only the last) and saving their
        adapters after the last; returns the result and the scores in round order. The
        server checkpoints every round under the method's folder, and with ``--resume``
        continues from there."""
        last = settings.rounds - 1

        def after_round(t: int, models: ServerModels) -> dict[str, Any] | None:
            if not (every_round or t == last):
                return None
            point: dict[str, Any] = {"round": t + 1}
            for role in roles:
                name = label if t == last else f"{label}@round{t + 1}"
                model = getattr(models, role)
                point[role] = self.board.score(model, models.tokenizer, name, role)
                if t == last:
                    self.save(label, model, role)
            return point

        spec = dataclasses.replace(
            self.federation_spec(settings, label),
            checkpoint=str(self.folder(label) / "checkpoint.safetensors"),
            resume=self.resume,
        )
        result = simulate_fedcollm(spec, after_round=after_round, server_update=server_update)
        self.board.restore(label)  # rows scored before a --resume, if any
        return result, [point for point in result.after_round if point is not None]

    def federation_spec(
        self, settings: FedCoLLMSettings | None = None, label: str = "fedcollm"
    ) -> FederationSpec:
        """The run ``label`` with ``settings`` (default: the config's). With DP synthetic aux
        data the server gets no public rows, only the task's format (read off the public
        evaluation rows), and each client writes its DP report under the method's folder."""
        federation, settings = self.config.federation, settings or self.settings
        dtype, device = placement(self.config)
        no_public = settings.distil and settings.aux_source == "dp_synthetic"
        return FederationSpec(
            llm=federation.llm,
            slm=federation.slm,
            client_data=tuple(tuple(part) for part in self.data.clients),
            public_data=() if no_public else tuple(self.data.public),
            settings=settings,
            dtype=dtype,
            device=device,
            client_cpus=federation.client_cpus,
            client_gpus=federation.client_gpus,
            aux_format=LabelFormat.of(self.data.evaluation) if no_public else None,
            generator=self.config.fedcollm.generator,
            reports_dir=str(self.folder(label) / "client-reports") if no_public else None,
            policy=self.config.fedcollm.round_policy(),
        )

    def folder(self, label: str) -> Path:
        """Where method ``label``'s adapters, checkpoint and reports go."""
        return method_dir(self.config, self.data.task, label)


# ---- the methods ---------------------------------------------------------------------------


def zero_shot(run: FedCoLLMTask) -> Outcome:
    """Both models as loaded, no adapter."""
    return {"llm": run.zero_shot("llm"), "slm": run.zero_shot("slm")}


def standalone(run: FedCoLLMTask) -> Outcome:
    """Each client trains the SLM adapter on its own part alone, from theta_0, exactly as it
    trains in the federation (`client_training`: its own seed per round, a fresh optimiser
    and schedule each round) but keeping its own adapter instead of the average: standalone
    and FedAvg differ only in the averaging. The SLM score is the per-row mean over clients."""
    slm, tokenizer = run.load_lora("slm")
    start = adapter_state(slm)
    clients, reports = [], []
    for k, part in enumerate(run.data.clients):
        load_adapter_state(slm, start)
        reports.append(_summary(*_train_alone(run, slm, tokenizer, part, k)))
        clients.append(run.board.score(slm, tokenizer, "standalone", "slm", client=k))
        run.save("standalone", slm, "clients", str(k), "slm")
    slm_scores = run.board.mean_of_clients("standalone", "slm", len(clients))
    return {
        "llm": None,
        "slm": slm_scores,
        "clients": clients,
        "train": reports,
    }


def _train_alone(
    run: FedCoLLMTask,
    slm: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    part: Sequence[Example],
    k: int,
) -> list[TrainReport]:
    """Client ``k``'s federated schedule on its own part, every round from its own adapter."""
    client = run.settings.client
    return [
        train_answer_only(slm, tokenizer, part, client_training(client, k, t))
        for t in range(run.settings.rounds)
    ]


def centralized(run: FedCoLLMTask) -> Outcome:
    """The upper bound: each model's adapter trained on the union of the clients' parts (the
    LLM at FedCoLLM's LLM learning rate)."""
    union = [example for part in run.data.clients for example in part]
    lrs: dict[Role, float] = {"slm": run.config.train.lr, "llm": run.settings.llm_lr}
    outcome: Outcome = {"train": {}}
    for role, lr in lrs.items():
        model, tokenizer = run.load_lora(role)
        settings = dataclasses.replace(run.local_training, lr=lr)
        outcome["train"][role] = _summary(train_answer_only(model, tokenizer, union, settings))
        outcome[role] = run.board.score(model, tokenizer, "centralized", role)
        run.save("centralized", model, role)
    return outcome


def fedavg(run: FedCoLLMTask) -> Outcome:
    """FedCoLLM without server distillation (step 4): the SLM adapters are averaged. The LLM
    is never loaded, nor trained: its score is the zero-shot one (`untouched_llm`)."""
    settings = dataclasses.replace(run.settings, distil=False)
    result, curve = run.federate("fedavg", settings, roles=("slm",), every_round=False)
    llm = run.untouched_llm("fedavg")
    return {"llm": llm, "slm": curve[-1]["slm"], **_communication(result)}


def fedavg_server_ce(run: FedCoLLMTask) -> Outcome:
    """FedAvg whose server, after averaging, fine-tunes theta with plain cross-entropy on the
    public part D_a each round (no LLM, no KD), so the clients receive theta trained on D_a's
    labels. FedCoLLM's SLM sees those labels too (its CE term); this baseline has them
    without the distillation, which ``fedcollm > fedavg_server_ce`` then isolates."""
    settings = dataclasses.replace(run.settings, distil=False)
    public = list(run.data.public)

    def server_ce(t: int, models: ServerModels) -> dict[str, float]:
        training = server_ce_training(settings, t)
        report = train_answer_only(models.slm, models.tokenizer, public, training, progress=False)
        return {f"server_ce_{name}": value for name, value in _summary(report).items()}

    label = "fedavg_server_ce"
    result, curve = run.federate(
        label, settings, ("slm",), every_round=False, server_update=server_ce
    )
    llm = run.untouched_llm(label)
    return {"llm": llm, "slm": curve[-1]["slm"], **_communication(result)}


def server_ce_training(settings: FedCoLLMSettings, round_index: int) -> TrainSettings:
    """The server's CE step of `fedavg_server_ce` in round ``round_index``: FedCoLLM's SLM
    side of step 4 without the KD term, so both see D_a alike: ``kd_epochs`` passes over it
    (or ``kd_steps`` steps when set) at the SLM lr and the KD batch size, seeded as that
    round's distillation, with the clients' optimiser settings."""
    steps = settings.kd_steps
    return dataclasses.replace(
        settings.client,
        lr=settings.slm_lr,
        batch_size=settings.kd_batch_size,
        grad_accum=1,
        epochs=settings.kd_epochs if steps is None else steps,  # a pass is at least a step
        max_steps=steps,
        seed=derive_seed(settings.seed, round_index),
    )


def fedcollm(run: FedCoLLMTask) -> Outcome:
    """The protocol, with the LLM and the global SLM scored after every round when
    ``federation.eval_every_round`` is set (else after the last); D_a as
    ``[fedcollm] aux_source`` says (the public part by default)."""
    return _cotune(run, "fedcollm", run.settings)


def fedcollm_min_ce(run: FedCoLLMTask) -> Outcome:
    """FedCoLLM with selective distillation (``kd_selection = "min_ce"``) beside the paper's
    ``fedcollm`` on the same rows: each model distils from the other only on the public rows
    where the other has the lower gold-answer cross-entropy, so a weaker teacher cannot pull a
    stronger student down (FedMKT's selection)."""
    settings = dataclasses.replace(run.settings, kd_selection="min_ce")
    return _cotune(run, "fedcollm_min_ce", settings)


def fedcollm_dp_aux(run: FedCoLLMTask) -> Outcome:
    """FedCoLLM without public data: before round 1 every client DP-trains a generator on its
    rows and sends synthetic (label, text) pairs, the server's D_a for every round."""
    settings = dataclasses.replace(run.settings, aux_source="dp_synthetic")
    return _cotune(run, "fedcollm_dp_aux", settings)


def _cotune(run: FedCoLLMTask, label: str, settings: FedCoLLMSettings) -> Outcome:
    every_round = run.config.federation.eval_every_round
    result, curve = run.federate(label, settings, ("llm", "slm"), every_round)
    final = curve[-1]
    outcome = {"llm": final["llm"], "slm": final["slm"], "curve": curve}
    if result.aux is None:
        return outcome | _communication(result)
    folder = run.folder(label)
    rows = [{"label": ex.choices[ex.gold], "text": ex.question} for ex in result.aux.examples]
    write_jsonl(folder / "server" / "aux.jsonl", rows)  # DP synthetic: not private
    reports = [
        read_report(report_path(str(folder / "client-reports"), k))
        for k in range(len(run.data.clients))
    ]
    return outcome | {
        "privacy": dp_privacy(reports, settings.dp_aux.dp.target_epsilon, settings.dp_aux.dp.delta),
        "aux_rows": len(rows),
        **_communication(result),
    }


METHODS: dict[str, Callable[[FedCoLLMTask], Outcome]] = {
    "zero_shot": zero_shot,
    "standalone": standalone,
    "fedavg": fedavg,
    "fedavg_server_ce": fedavg_server_ce,
    "centralized": centralized,
    "fedcollm": fedcollm,
    "fedcollm_min_ce": fedcollm_min_ce,
    "fedcollm_dp_aux": fedcollm_dp_aux,
}


def _uses_dp_aux(config: FedktConfig) -> bool:
    """Whether a method of this run distils on DP synthetic samples; refuses running
    ``fedcollm_dp_aux`` beside a ``fedcollm`` that already does (the same run twice)."""
    names = config.federation.baselines
    own = config.fedcollm.aux_source == "dp_synthetic" and "fedcollm" in names
    if own and "fedcollm_dp_aux" in names:
        raise ConfigError(
            "federation.baselines has fedcollm_dp_aux, but fedcollm.aux_source = "
            "'dp_synthetic' makes fedcollm the same method: drop one, or set aux_source = "
            "'public' to compare FedCoLLM with and without public data."
        )
    return own or "fedcollm_dp_aux" in names


def run_fedcollm_experiment(config: FedktConfig, *, resume: bool = False) -> dict[str, Any]:
    """Every method of ``federation.baselines`` on every task; writes results.json, and each
    method's adapters and run.json under ``<output_dir>/<task>/<method>/``."""

    def single(name: str) -> Callable[[FedCoLLMTask], Iterator[tuple[str, Outcome]]]:
        return lambda run: iter([(name, METHODS[name](run))])

    methods = {name: single(name) for name in METHODS}
    names = config.federation.baselines
    return run_methods(
        config, "fedcollm", FedCoLLMTask.load, methods, names, lambda _: CLAIMS, resume=resume
    )


def _summary(*reports: TrainReport) -> dict[str, float]:
    """Steps and seconds of one or more consecutive trainings, the first loss of the first
    and the last loss of the last."""
    return {
        "steps": sum(report.steps for report in reports),
        "seconds": round(sum(report.seconds for report in reports), 1),
        "first_loss": reports[0].first_loss,
        "last_loss": reports[-1].last_loss,
    }


def _communication(result: FederationResult) -> dict[str, Any]:
    """Payload bytes per round and client (partition id), both directions, and the total
    (with the DP aux query's bytes, all clients together, where there was one)."""
    rounds = [dataclasses.asdict(record) for record in result.rounds]
    total = sum(r.total_bytes_down + r.total_bytes_up for r in result.rounds)
    if result.aux is None:
        return {"rounds": rounds, "total_bytes": total}
    query = {"bytes_down": result.aux.bytes_down, "bytes_up": result.aux.bytes_up}
    return {"rounds": rounds, "aux_query": query, "total_bytes": total + sum(query.values())}


# ---- the plot -----------------------------------------------------------------------------

_COLORS = {"llm": "tab:blue", "slm": "tab:orange"}
_STYLES = {
    "zero_shot": ":",
    "standalone": (0, (3, 1, 1, 1, 1, 1)),
    "fedavg": "--",
    "fedavg_server_ce": (0, (5, 1)),
    "centralized": "-.",
}


def plot_fedcollm(results: dict[str, Any], path: Path) -> Path:
    """One panel per task: FedCoLLM's LLM and SLM score per round with error bars (one
    standard error), the other methods as horizontal lines with a one-stderr band."""
    return plot_tasks(results, path, _panel, size=(6.5, 4))


_CURVES = {"fedcollm": {"llm": "tab:blue", "slm": "tab:orange"},
           "fedcollm_dp_aux": {"llm": "tab:cyan", "slm": "tab:red"}}  # fmt: skip


def _panel(ax: Any, task: str, baselines: dict[str, Any]) -> None:
    for role, color in _COLORS.items():
        for name, style in _STYLES.items():
            scores = baselines.get(name, {}).get(role)
            if scores is not None:
                band(ax, scores, color=color, linestyle=style, label=f"{name} {role.upper()}")
        for name, colors in _CURVES.items():
            curve = baselines.get(name, {}).get("curve", [])
            if curve:
                rounds = [point["round"] for point in curve]
                points = [p[role] for p in curve]
                errorbar(ax, rounds, points, color=colors[role], label=f"{name} {role.upper()}")
                ax.set_xticks(rounds)
    ax.set(title=task, xlabel="FedCoLLM round", ylabel="accuracy (%), ±1 s.e.")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))


__all__: Sequence[str] = ("METHODS", "FedCoLLMTask", "plot_fedcollm", "run_fedcollm_experiment")
