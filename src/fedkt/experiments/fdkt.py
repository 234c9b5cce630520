"""`fedkt run` for FDKT: the spec's baselines on one split, side by side.

Per task the train rows are cut as for the other algorithms (K + 1 parts; ``iid`` or
``dirichlet`` re-split the clients' rows): the K client parts are the private labelled rows;
FDKT uses no public data (the last part is unused). Every method is scored on the same
evaluation rows, in the task's own format:

- ``zero_shot``: the server LLM and the client SLM as loaded;
- ``local_only``: each client fine-tunes the SLM on its private rows only;
- ``dp_synthetic_only``: FDKT without the LLM: the server curates the clients' DP synthetic
  samples and sends them back; each client trains on private + those (at
  ``fdkt.synthetic_only_eps``);
- ``fdkt``: FDKT at every eps of ``[fdkt] eps`` (inf: the generator trains without noise).

The SLM score of a federated method is the mean over clients (each trains its own SLM); the
server's samples (what it received and sent) go to ``<method>/server/*.jsonl``. Each
client's DP report (the eps its accountant spent) is read back from its own report file (a
simulation shares the clients' disk) into results.json under "privacy".

Not done here (spec, beyond the paper): the LLM zero-shot augmentation baseline without
demonstrations, and the canary / distance-to-closest-record leakage audit.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from fedkt.algorithms.fdkt import LabelFormat
from fedkt.config import FedktConfig
from fedkt.experiments.harness import (
    Claim,
    ClientModelsTask,
    Scoreboard,
    TaskData,
    communication,
    run_methods,
    save_adapter,
    zero_shot_both,
)
from fedkt.experiments.summary import band, errorbar, mean_scores, plot_tasks
from fedkt.federation.fdkt import FDKTSpec, read_report, simulate_fdkt
from fedkt.jobs import load_for
from fedkt.models import adapter_state, add_lora, load_adapter_state
from fedkt.privacy.accounting import check_target
from fedkt.report import format_table, read_jsonl, write_jsonl
from fedkt.training import derive_seed, train_answer_only

CLAIMS_AGAINST = ("local_only",)
"""Every FDKT point is tested against these methods' SLM (the paper's headline)."""


@dataclasses.dataclass(frozen=True)
class FDKTTask(ClientModelsTask):
    """One task's rows and scoreboard (the task must be classification-like)."""

    OWN_PREFIX = "fdkt@"

    @classmethod
    def load(cls, config: FedktConfig, task: str, resume: bool = False) -> FDKTTask:
        """The rows; refuses a non-classification task and a delta >= 1/N for the smallest
        client before any model is loaded."""
        data = TaskData.load(config, task)
        LabelFormat.of(data.evaluation)
        smallest = min(len(part) for part in data.clients)
        for eps in (*config.fdkt.eps, config.fdkt.synthetic_only_eps):
            check_target(eps, config.fdkt.delta, smallest)
        return cls(config, data, Scoreboard(config, task, data.evaluation))

    def spec(self, label: str, eps: float, use_llm: bool) -> FDKTSpec:
        config, task = self.config, self.data.task
        store = Path(config.output_dir) / "responses" / f"{task}-{label}.jsonl"
        return FDKTSpec(
            **self.spec_fields(label, str(store)),
            generator=config.fdkt.generator or config.federation.slm,
            settings=config.fdkt.settings(config.train, eps, use_llm),
            embedder=config.fdkt.embedder,
            reports_dir=str(self.method_dir(label) / "client-reports"),
        )


zero_shot = zero_shot_both


def local_only(run: FDKTTask) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each client fine-tunes a fresh SLM adapter on its private rows; every client starts
    from the same fresh adapter, with the seeds FDKT's clients use."""
    model, tokenizer = load_for(run.config, run.config.federation.slm)
    torch.manual_seed(run.config.fdkt.seed)
    slm = add_lora(model, run.config.lora)
    fresh = adapter_state(slm)
    clients = []
    for k, part in enumerate(run.data.clients):
        load_adapter_state(slm, fresh)
        train = dataclasses.replace(run.config.train, seed=derive_seed(run.config.train.seed, k))
        train_answer_only(slm, tokenizer, part, train)
        clients.append(run.board.score(slm, tokenizer, "local_only", "slm", client=k))
        if run.saves("local_only"):
            save_adapter(slm, run.method_dir("local_only") / "clients" / str(k) / "slm")
    slm_scores = run.board.mean_of_clients("local_only", "slm", len(clients))
    yield "local_only", {"llm": None, "slm": slm_scores, "clients": clients}


def dp_synthetic_only(run: FDKTTask) -> Iterator[tuple[str, dict[str, Any]]]:
    eps = run.config.fdkt.synthetic_only_eps
    yield "dp_synthetic_only", _federated(run, "dp_synthetic_only", eps, use_llm=False)


def fdkt(run: FDKTTask) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every eps, one at a time (each is written as soon as it is done)."""
    for eps in run.config.fdkt.eps:
        label = f"fdkt@{eps:g}"
        if label in run.board.finished:  # done before --resume
            continue
        yield label, _federated(run, label, eps, use_llm=True)


BASELINES: dict[str, Callable[[FDKTTask], Iterable[tuple[str, dict[str, Any]]]]] = {
    "zero_shot": zero_shot,
    "local_only": local_only,
    "dp_synthetic_only": dp_synthetic_only,
    "fdkt": fdkt,
}


def claims(labels: Sequence[str]) -> list[Claim]:
    """Each FDKT point against the local-only SLM (paired, same rows), and against DP
    synthetic data without the LLM (does the augmentation help?)."""
    points = [label for label in labels if label.startswith("fdkt@")]
    out = [Claim("slm", point, other) for point in points for other in CLAIMS_AGAINST]
    return out + [Claim("slm", point, "dp_synthetic_only") for point in points]


def run_fdkt_experiment(config: FedktConfig, *, resume: bool = False) -> dict[str, Any]:
    """Every FDKT baseline on every task; writes results.json after each method, and each
    method's adapters (one per client), client reports and run.json under
    ``<output_dir>/<task>/<method>/``."""
    return run_methods(
        config, "fdkt", FDKTTask.load, BASELINES, config.fdkt.baselines, claims, resume=resume
    )


def _federated(run: FDKTTask, label: str, eps: float, *, use_llm: bool) -> dict[str, Any]:
    """One simulated FDKT run; the clients write their per-row predictions and reports, which
    are read back here (simulation: the harness shares the clients' disk)."""
    start = time.perf_counter()
    spec = run.spec(label, eps, use_llm)
    result = simulate_fdkt(spec)
    server = run.method_dir(label) / "server"  # DP synthetic and augmented: not private
    write_jsonl(server / "synthetic.jsonl", map(dataclasses.asdict, result.received_samples))
    write_jsonl(server / "augmented.jsonl", map(dataclasses.asdict, result.sent_samples))
    reports = []
    for k in range(spec.num_clients):
        rows = read_jsonl(Path(str(spec.predictions_dir)) / f"slm-client{k}.jsonl")
        run.board.add(label, "slm", rows, client=k, write=False)
        reports.append(read_report(Path(str(spec.reports_dir)) / f"client{k}.json"))
    return {
        "llm": None,
        "slm": run.board.mean_of_clients(label, "slm", spec.num_clients),
        "clients": [report.get("train", {}) for report in reports],
        "privacy": _privacy(reports, eps),
        "server": {
            "synthetic": result.synthetic,
            "curation": result.curation,
            "augmentation": result.augmentation,
            "sent": result.sent,
        },
        **communication(result.bytes_up, result.bytes_down),
        "seconds": time.perf_counter() - start,
    }


def _privacy(reports: list[dict[str, Any]], eps: float) -> dict[str, Any]:
    """The clients' DP numbers: each one's spent eps (max: the run's guarantee) and means."""
    synthesis = [report.get("synthesis", {}) for report in reports]
    spent = [_number(s.get("epsilon")) for s in synthesis]
    numbers = [{k: v for k, v in s.items() if isinstance(v, int | float)} for s in synthesis]
    return {
        "target_epsilon": eps,
        "epsilon_max": max(spent) if spent else math.nan,
        "epsilon_per_client": spent,
        **{f"mean_{k}": v for k, v in mean_scores(numbers).items() if k != "epsilon"},
    }


def _number(value: Any) -> float:
    """A report's eps: strict JSON writes inf as a string or null."""
    if isinstance(value, int | float):
        return float(value)
    return math.inf


# ---- what a run shows ---------------------------------------------------------------------


def privacy_table(results: dict[str, Any]) -> str:
    """One line per task and federated method: the target eps, the largest eps a client's
    accountant spent, the mean private rows, synthetic samples sent and augmented received."""
    rows = [
        [
            task,
            name,
            _eps_text(outcome["privacy"]["target_epsilon"]),
            _eps_text(outcome["privacy"]["epsilon_max"]),
            f"{outcome['privacy'].get('mean_private_rows', math.nan):.0f}",
            sum(outcome["server"]["synthetic"].values()),
            outcome["server"]["sent"],
        ]
        for task, entry in results["tasks"].items()
        for name, outcome in entry["baselines"].items()
        if "privacy" in outcome
    ]
    headers = ["task", "method", "target eps", "spent eps (max)", "rows/client", "synthetic",
               "augmented"]  # fmt: skip
    return format_table(headers, rows)


def _eps_text(value: Any) -> str:
    eps = _number(value)
    return "inf" if math.isinf(eps) else f"{eps:.2f}"


def plot_fdkt(results: dict[str, Any], path: Path) -> Path:
    """Per task: the clients' mean SLM accuracy against the generator's eps, with the
    local-only, DP-synthetic-only and zero-shot scores as horizontal bands."""
    return plot_tasks(results, path, _eps_panel, size=(6.5, 4.2))


def _eps_panel(ax: Any, task: str, baselines: dict[str, Any]) -> None:
    points = sorted(
        (float(name.split("@", 1)[1]), outcome)
        for name, outcome in baselines.items()
        if name.startswith("fdkt@")
    )
    if points:
        xs = list(range(len(points)))
        errorbar(ax, xs, [o["slm"] for _, o in points], color="tab:orange", label="FDKT SLM")
        ax.set_xticks(xs, ["inf" if math.isinf(e) else f"{e:g}" for e, _ in points])
    lines = (
        ("local_only", "slm", "tab:gray", "--"),
        ("dp_synthetic_only", "slm", "tab:green", "-."),
        ("zero_shot", "slm", "tab:gray", ":"),
        ("zero_shot", "llm", "tab:blue", ":"),
    )
    for name, role, color, style in lines:
        scores = baselines.get(name, {}).get(role)
        if scores is not None:
            band(ax, scores, color=color, linestyle=style, label=f"{name} {role.upper()}")
    ax.set(title=task, xlabel="generator epsilon (DP-SGD)", ylabel="accuracy (%), ±1 s.e.")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
