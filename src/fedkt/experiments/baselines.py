"""The five methods FedCoLLM is compared with (arXiv 2411.11707, Table 1), one function each.

Each takes a `TaskRun` and returns ``{"llm": scores or None, "slm": scores or None, ...}``:
the server LLM's and the (mean) client SLM's metrics, plus what that method has to show
(per-client scores, per-round curves, bytes). None means the method does not produce that
model. Training budgets match: a non-federated model trains ``rounds x epochs`` epochs, as
many as a client does over the whole federation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from fedkt.config import Baseline
from fedkt.experiments.federated import fedavg_round
from fedkt.experiments.summary import mean_scores
from fedkt.experiments.task import Role, TaskRun
from fedkt.federation import FederationResult
from fedkt.federation.server_app import federated_round
from fedkt.models import adapter_state, load_adapter_state
from fedkt.training import TrainReport, train_answer_only


def zero_shot(run: TaskRun) -> dict[str, Any]:
    """Both models as loaded, no adapter."""
    return {"llm": run.zero_shot("llm"), "slm": run.zero_shot("slm")}


def standalone(run: TaskRun) -> dict[str, Any]:
    """Each client trains the SLM adapter on its own part alone; the SLM score is their mean."""
    slm, tokenizer = run.load_lora("slm")
    start = adapter_state(slm)
    clients, reports = [], []
    for part in run.clients:
        load_adapter_state(slm, start)  # every client starts from the same fresh adapter
        reports.append(train_answer_only(slm, tokenizer, part, run.local_training))
        clients.append(run.evaluate(slm, tokenizer))
    return {
        "llm": None,
        "slm": mean_scores(clients),
        "clients": clients,
        "train": [_summary(r) for r in reports],
    }


def centralized(run: TaskRun) -> dict[str, Any]:
    """The upper bound: each model's adapter trained on the union of the clients' parts (the
    LLM at FedCoLLM's LLM learning rate)."""
    union = [example for part in run.clients for example in part]
    lrs: dict[Role, float] = {"slm": run.config.train.lr, "llm": run.settings.llm_lr}
    outcome: dict[str, Any] = {"train": {}}
    for role, lr in lrs.items():
        model, tokenizer = run.load_lora(role)
        settings = dataclasses.replace(run.local_training, lr=lr)
        outcome["train"][role] = _summary(train_answer_only(model, tokenizer, union, settings))
        outcome[role] = run.evaluate(model, tokenizer)
    return outcome


def fedavg(run: TaskRun) -> dict[str, Any]:
    """FedCoLLM without server distillation: the SLM adapters are averaged, the LLM is never
    trained, so its score is the zero-shot one."""
    result, curve = run.federate(fedavg_round, roles=("slm",), every_round=False)
    return {"llm": run.zero_shot("llm"), "slm": curve[-1]["slm"], **_communication(result)}


def fedcollm(run: TaskRun) -> dict[str, Any]:
    """The protocol, with the LLM and the global SLM evaluated after every round when
    ``federation.eval_every_round`` is set (else after the last)."""
    every_round = run.config.federation.eval_every_round
    result, curve = run.federate(federated_round, roles=("llm", "slm"), every_round=every_round)
    final = curve[-1]
    return {"llm": final["llm"], "slm": final["slm"], "curve": curve, **_communication(result)}


BASELINES: dict[Baseline, Callable[[TaskRun], dict[str, Any]]] = {
    "zero_shot": zero_shot,
    "standalone": standalone,
    "fedavg": fedavg,
    "centralized": centralized,
    "fedcollm": fedcollm,
}


def _summary(report: TrainReport) -> dict[str, float]:
    return {
        "steps": report.steps,
        "seconds": round(report.seconds, 1),
        "first_loss": report.first_loss,
        "last_loss": report.last_loss,
    }


def _communication(result: FederationResult) -> dict[str, Any]:
    """Payload bytes per round and client (Flower node id), both directions, and the total."""
    rounds = [dataclasses.asdict(record) for record in result.rounds]
    total = sum(r.total_bytes_down + r.total_bytes_up for r in result.rounds)
    return {"rounds": rounds, "total_bytes": total}
