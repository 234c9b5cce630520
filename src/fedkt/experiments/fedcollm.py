"""`fedkt run` for FedCoLLM: the protocol beside the four methods the paper compares it with
(arXiv 2411.11707, Table 1), on one split, scored on the same rows.

Each method returns ``{"llm": scores or None, "slm": scores or None, ...}``: the server LLM's
and the (mean) client SLM's metrics with their standard errors, plus what that method has to
show (per-client scores, per-round curves, bytes). None means the method does not produce that
model. Training budgets match: a non-federated model trains ``rounds x epochs`` epochs, as
many as a client does over the whole federation, and every method starts from the same seeded
adapter (theta_0) as the federation's server.

Beyond the paper, ``fedcollm_dp_aux`` is FedCoLLM without public data: the server distils on
the clients' DP synthetic samples instead of the public part (classification tasks), run
beside ``fedcollm`` on the same rows; its "privacy" entry holds the eps each client's
accountant spent, read back from the clients' own report files (a simulation shares their
disk). ``[fedcollm] aux_source = "dp_synthetic"`` makes ``fedcollm`` itself that method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedkt.algorithms.fedcollm import Adapter, FedCoLLMSettings, ServerModels, client_training
from fedkt.config import FedktConfig
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
    simulate_fedcollm,
)
from fedkt.federation.reports import read_report, report_path
from fedkt.jobs import load_for, placement
from fedkt.models import adapter_state, add_lora, load_adapter_state
from fedkt.privacy.accounting import check_target
from fedkt.report import write_jsonl
from fedkt.training import TrainReport, TrainSettings, train_answer_only

CLAIMS = (
    Claim("slm", "fedcollm", "fedavg"),
    Claim("slm", "fedavg", "standalone"),
    Claim("slm", "standalone", "zero_shot"),
    Claim("slm", "fedcollm", "zero_shot"),
    Claim("llm", "fedcollm", "zero_shot"),
    Claim("llm", "fedcollm", "centralized", non_inferior=True),
    Claim("slm", "fedcollm_dp_aux", "fedcollm", non_inferior=True),
    Claim("llm", "fedcollm_dp_aux", "fedcollm", non_inferior=True),
    Claim("slm", "fedcollm_dp_aux", "fedavg"),
    Claim("llm", "fedcollm_dp_aux", "zero_shot"),
)
"""The paper's claims: the client SLM ranks FedCoLLM > FedAvg > standalone > zero-shot, and
the LLM after FedCoLLM keeps (nearly) centralized accuracy. Without public data (beyond the
paper): FedCoLLM on DP synthetic samples keeps (nearly) the accuracy of FedCoLLM on the public
part, and still beats FedAvg (SLM) and zero-shot (LLM)."""


@dataclass
class FedCoLLMTask:
    """One task's rows and what every method shares: models, LoRA, the scoreboard.

    Zero-shot scores are kept once computed: FedAvg's LLM is the untouched base model, so its
    score is the zero-shot one and is not measured twice.
    """

    config: FedktConfig
    data: TaskData
    board: Scoreboard
    resume: bool = False
    zero_shot_scores: dict[Role, Scores] = field(default_factory=dict)

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
        """The model with the federation's starting adapter (theta_0 or omega_0)."""
        model, tokenizer = self.load_model(role)
        peft_model = add_lora(model, self.config.lora)
        load_adapter_state(peft_model, self.start_adapters[role])
        return peft_model, tokenizer

    @cached_property
    def start_adapters(self) -> dict[Role, Adapter]:
        """omega_0 and theta_0 exactly as the federation's server draws them, so every method
        starts from the same adapter."""
        models = self.federation_spec().load_server_models()
        return {"llm": adapter_state(models.llm), "slm": adapter_state(models.slm)}

    def zero_shot(self, role: Role) -> Scores:
        if role not in self.zero_shot_scores:
            self.zero_shot_scores[role] = self.board.score(
                *self.load_model(role), "zero_shot", role
            )
        return self.zero_shot_scores[role]

    def federate(
        self, label: str, settings: FedCoLLMSettings, roles: tuple[Role, ...], every_round: bool
    ) -> tuple[FederationResult, list[dict[str, Any]]]:
        """Simulate the federation, scoring the server's ``roles`` after every round (or only
        the last) and saving their adapters after the last; returns the result and the
        scores in round order. The server checkpoints every round under the method's folder,
        and with ``--resume`` continues from there."""
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
        result = simulate_fedcollm(spec, after_round=after_round)
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
        )

    def folder(self, label: str) -> Path:
        """Where method ``label``'s adapters, checkpoint and reports go."""
        return method_dir(self.config, self.data.task, label)


# ---- the methods ---------------------------------------------------------------------------


def zero_shot(run: FedCoLLMTask) -> Outcome:
    """Both models as loaded, no adapter."""
    return {"llm": run.zero_shot("llm"), "slm": run.zero_shot("slm")}


def standalone(run: FedCoLLMTask) -> Outcome:
    """Each client trains the SLM adapter on its own part alone, from theta_0 and with its own
    seed; the SLM score is the per-row mean over clients."""
    slm, tokenizer = run.load_lora("slm")
    start = adapter_state(slm)
    clients, reports = [], []
    for k, part in enumerate(run.data.clients):
        load_adapter_state(slm, start)
        reports.append(
            train_answer_only(slm, tokenizer, part, client_training(run.local_training, k, 0))
        )
        clients.append(run.board.score(slm, tokenizer, "standalone", "slm", client=k))
        run.save("standalone", slm, "clients", str(k), "slm")
    slm_scores = run.board.mean_of_clients("standalone", "slm", len(clients))
    return {
        "llm": None,
        "slm": slm_scores,
        "clients": clients,
        "train": [_summary(r) for r in reports],
    }


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
    """FedCoLLM without server distillation (step 4): the SLM adapters are averaged and the
    LLM is never trained, so its score is the zero-shot one."""
    settings = dataclasses.replace(run.settings, distil=False)
    result, curve = run.federate("fedavg", settings, roles=("slm",), every_round=False)
    llm = run.zero_shot("llm")
    run.board.alias("fedavg", "llm", same_as="zero_shot")
    return {"llm": llm, "slm": curve[-1]["slm"], **_communication(result)}


def fedcollm(run: FedCoLLMTask) -> Outcome:
    """The protocol, with the LLM and the global SLM scored after every round when
    ``federation.eval_every_round`` is set (else after the last); D_a as
    ``[fedcollm] aux_source`` says (the public part by default)."""
    return _cotune(run, "fedcollm", run.settings)


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
    "centralized": centralized,
    "fedcollm": fedcollm,
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


def _summary(report: TrainReport) -> dict[str, float]:
    return {
        "steps": report.steps,
        "seconds": round(report.seconds, 1),
        "first_loss": report.first_loss,
        "last_loss": report.last_loss,
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
