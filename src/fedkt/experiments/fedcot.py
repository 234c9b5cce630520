"""`fedkt run` for FedCoT: the spec's baselines on one split, side by side.

Per task the train rows are cut as for FedCoLLM (K + 1 equal random parts): the K client
parts are the private labelled questions, the last part is public text (the adaptive
mechanism's token importance only). Every method is scored on the same evaluation rows,
with FedCoT's predict prefix:

- ``zero_shot``: the server LLM and the client SLM as loaded;
- ``standalone``: each client fine-tunes the SLM on its labels only (no rationale);
- ``cot_upper_bound``: FedCoT with the raw questions sent (no privacy);
- ``fedcot``: FedCoT for every strategy x eps of [fedcot]; at eps = inf neither mechanism
  perturbs, so that point runs once and serves both strategies.

The SLM score of a federated method is the mean over clients (each trains its own SLM). The
clients send the server nothing but their perturbed prompts; their privacy reports, counts
and scores are read back from their own report files (simulation: the harness shares the
clients' disk). Pattern uniqueness is measured against the task's whole train split (public).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from fedkt.config import FedktConfig
from fedkt.data import Example
from fedkt.data.cot import label_names, predict_example
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
from fedkt.federation.fedcot import FedCoTSpec, simulate_fedcot
from fedkt.federation.reports import read_report
from fedkt.jobs import load_for, task_examples
from fedkt.models import adapter_state, add_lora, load_adapter_state
from fedkt.report import format_table, read_jsonl
from fedkt.training import derive_seed, train_answer_only

PRIVACY_COLUMNS = (
    "noise",
    "candidates",
    "prompt_eps_mean",
    "protected_recovered",
    "protected_recovered_prior",
    "prior_only_recovered",
    "gold_answer_leak_rate",
    "pattern_unique_rate",
)


CLAIMS_AGAINST = ("standalone", "zero_shot")
"""Every federated FedCoT point is tested against these methods' SLM, and the non-private
upper bound against each point (how much the privacy costs)."""


@dataclasses.dataclass(frozen=True)
class FedCoTTask(ClientModelsTask):
    """One task's rows and scoreboard; the evaluation rows carry FedCoT's predict prefix (the
    clients put it on themselves; the harness scores the zero-shot and standalone models on
    the same prefixed rows)."""

    OWN_PREFIX = "fedcot-"
    reference: tuple[Example, ...] = ()
    """The task's whole train split (public): the pattern-uniqueness reference."""

    @classmethod
    def load(cls, config: FedktConfig, task: str, resume: bool = False) -> FedCoTTask:
        data = TaskData.load(config, task)
        scored = [predict_example(e) for e in data.evaluation]
        reference = tuple(task_examples(config, task, "train", 0))
        return cls(config, data, Scoreboard(config, task, scored), reference)

    def spec(self, label: str, strategy: str, eps: float) -> FedCoTSpec:
        config, task = self.config, self.data.task
        store = Path(config.output_dir) / "responses" / f"{task}-{strategy}-{eps:g}.jsonl"
        return FedCoTSpec(
            **self.spec_fields(label, str(store)),
            decoder=config.fedcot.decoder,
            public_texts=tuple(e.question for e in self.data.public),
            settings=config.fedcot.settings(config.train, strategy, eps),
            reports_dir=str(self.method_dir(label) / "client-reports"),
            label_names=label_names([*self.data.evaluation, *self.data.public]),
            pattern_reference=self.reference,
        )


zero_shot = zero_shot_both


def standalone(run: FedCoTTask) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each client fine-tunes a fresh SLM adapter on its own labels (predict task only); the
    SLM is loaded once and every client starts from the same fresh adapter."""
    model, tokenizer = load_for(run.config, run.config.federation.slm)
    torch.manual_seed(run.config.fedcot.seed)
    slm = add_lora(model, run.config.lora)
    fresh = adapter_state(slm)
    clients = []
    for k, part in enumerate(run.data.clients):
        load_adapter_state(slm, fresh)
        train = dataclasses.replace(run.config.train, seed=derive_seed(run.config.train.seed, k))
        train_answer_only(slm, tokenizer, [predict_example(e) for e in part], train)
        clients.append(run.board.score(slm, tokenizer, "standalone", "slm", client=k))
        if run.saves("standalone"):
            save_adapter(slm, run.method_dir("standalone") / "clients" / str(k) / "slm")
    slm_scores = run.board.mean_of_clients("standalone", "slm", len(clients))
    yield "standalone", {"llm": None, "slm": slm_scores, "clients": clients}


def cot_upper_bound(run: FedCoTTask) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "cot_upper_bound", _federated(run, "cot_upper_bound", "none", math.inf)


def fedcot(run: FedCoTTask) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every strategy x eps, one at a time (each is written as soon as it is done); eps = inf
    runs once (nothing is perturbed) and serves every strategy."""
    fedcot_config = run.config.fedcot
    unperturbed: tuple[str, dict[str, Any]] | None = None
    for strategy in fedcot_config.strategies:
        for eps in fedcot_config.eps:
            label = f"fedcot-{strategy}@{eps:g}"
            if label in run.board.finished:  # done before --resume
                if math.isinf(eps) and unperturbed is None:
                    unperturbed = (label, run.board.finished[label])
                continue
            if math.isinf(eps) and unperturbed is not None:
                run.board.alias(label, "slm", same_as=unperturbed[0])
                yield label, {**unperturbed[1], "same_run_as": unperturbed[0]}
                continue
            outcome = _federated(run, label, strategy, eps)
            if math.isinf(eps):
                unperturbed = (label, outcome)
            yield label, outcome


BASELINES: dict[str, Callable[[FedCoTTask], Iterable[tuple[str, dict[str, Any]]]]] = {
    "zero_shot": zero_shot,
    "standalone": standalone,
    "cot_upper_bound": cot_upper_bound,
    "fedcot": fedcot,
}


def claims(labels: Sequence[str]) -> list[Claim]:
    """Each FedCoT point against the standalone and zero-shot SLM, and the non-private upper
    bound against each point."""
    points = [label for label in labels if label.startswith("fedcot-")]
    out = [Claim("slm", point, other) for point in points for other in CLAIMS_AGAINST]
    out += [Claim("slm", "cot_upper_bound", point) for point in points]
    return [*out, Claim("slm", "cot_upper_bound", "standalone")]


def run_fedcot_experiment(config: FedktConfig, *, resume: bool = False) -> dict[str, Any]:
    """Every FedCoT baseline on every task; writes results.json after each method, and each
    method's adapters (one per client) and run.json under ``<output_dir>/<task>/<method>/``."""
    return run_methods(
        config,
        "fedcot",
        FedCoTTask.load,
        BASELINES,
        config.fedcot.baselines,
        claims,
        resume=resume,
    )


def _federated(run: FedCoTTask, label: str, strategy: str, eps: float) -> dict[str, Any]:
    """One simulated FedCoT run; the clients write their per-row predictions and their own
    reports, which are read back here (simulation: the harness shares the clients' disk)."""
    start = time.perf_counter()
    spec = run.spec(label, strategy, eps)
    result = simulate_fedcot(spec)
    reports = []
    for k in range(spec.num_clients):
        rows = read_jsonl(Path(str(spec.predictions_dir)) / f"slm-client{k}.jsonl")
        run.board.add(label, "slm", rows, client=k, write=False)
        reports.append(read_report(Path(str(spec.reports_dir)) / f"client{k}.json"))
    return {
        "llm": None,
        "slm": run.board.mean_of_clients(label, "slm", spec.num_clients),
        "clients": [report.get("train", {}) for report in reports],
        "privacy": client_privacy(reports),
        "server": {"requests": list(result.requests), "acknowledged": list(result.acknowledged)},
        **communication(result.bytes_up, result.bytes_down),
        "seconds": time.perf_counter() - start,
    }


def client_privacy(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The clients' privacy reports in one: numbers averaged over clients, words (noise
    source, candidates, what is released in clear) as they are when all clients agree, else
    listed per client."""
    parts = [report.get("privacy", {}) for report in reports]
    numbers = [{k: float(v) for k, v in part.items() if _is_number(v)} for part in parts]
    words: dict[str, Any] = {}
    for key in dict.fromkeys(k for part in parts for k, v in part.items() if not _is_number(v)):
        values = [part.get(key) for part in parts]
        words[key] = values[0] if len(set(map(str, values))) == 1 else values
    return {**words, **mean_scores(numbers)}


def _is_number(value: Any) -> bool:
    """A report's number (strict JSON writes inf as "inf")."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int | float) or value in ("inf", "-inf")


# ---- what a run shows ---------------------------------------------------------------------


def privacy_table(results: dict[str, Any]) -> str:
    """One line per task and federated method: epsilon and the leakage audit, in %."""
    rows = [
        [task, name, *(_cell(column, outcome["privacy"].get(column)) for column in PRIVACY_COLUMNS)]
        for task, entry in results["tasks"].items()
        for name, outcome in entry["baselines"].items()
        if "privacy" in outcome
    ]
    headers = [
        "task",
        "method",
        "noise",
        "candidates",
        "prompt eps",
        "tok. recovered % (MAP)",
        "(MAP + prior)",
        "(prior only)",
        "gold leak %",
        "pattern unique %",
    ]
    return format_table(headers, rows)


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if not isinstance(value, int | float):  # a word, or per-client words
        return value if isinstance(value, str) else "/".join(map(str, value))
    if column == "prompt_eps_mean":
        return "inf" if math.isinf(value) else f"{value:.0f}"
    return f"{100 * value:.1f}"


def plot_fedcot(results: dict[str, Any], path: Path) -> Path:
    """Per task: SLM accuracy against eps for each strategy (the other methods as horizontal
    lines), and on a second axis the share of tokens an inverting attacker recovers (and,
    fainter, what the public prior alone recovers)."""
    return plot_tasks(results, path, _eps_panel, size=(7, 4.2))


def _eps_panel(ax: Any, task: str, baselines: dict[str, Any]) -> None:
    recovered = ax.twinx()
    for strategy, color in (("em", "tab:orange"), ("aem", "tab:green")):
        points = sorted(
            (_eps_of(name), outcome)
            for name, outcome in baselines.items()
            if name.startswith(f"fedcot-{strategy}@")
        )
        if not points:
            continue
        xs = list(range(len(points)))
        slm = [outcome["slm"] for _, outcome in points]
        errorbar(ax, xs, slm, color=color, label=f"FedCoT-{strategy.upper()} SLM")
        recovered.plot(
            xs,
            [100 * o["privacy"]["protected_recovered"] for _, o in points],
            "x:",
            color=color,
            label=f"{strategy.upper()} tokens recovered",
        )
        prior = [o["privacy"].get("prior_only_recovered") for _, o in points]
        if all(isinstance(v, int | float) for v in prior):  # what the public prior alone gets
            recovered.plot(
                xs,
                [100 * v for v in prior],
                "+:",
                color=color,
                alpha=0.5,
                label=f"{strategy.upper()} prior only",
            )
        ax.set_xticks(xs, ["inf" if math.isinf(e) else f"{e:g}" for e, _ in points])
    for name, style in (("zero_shot", ":"), ("standalone", "--"), ("cot_upper_bound", "-.")):
        outcome = baselines.get(name)
        if outcome is not None:
            for role, color in (("slm", "tab:gray"), ("llm", "tab:blue")):
                if outcome.get(role) is not None:
                    label = f"{name} {role.upper()}"
                    band(ax, outcome[role], color=color, linestyle=style, label=label)
    ax.set(title=task, xlabel="epsilon per token", ylabel="accuracy (%), ±1 s.e.")
    recovered.set_ylabel("tokens recovered by inversion (%)")
    recovered.set_ylim(0, 105)
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.12, 1.0))
    recovered.legend(fontsize="x-small", loc="lower left", bbox_to_anchor=(1.12, 0.0))


def _eps_of(name: str) -> float:
    return float(name.rsplit("@", 1)[1])
