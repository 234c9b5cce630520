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

The SLM score of a federated method is the mean over clients (each trains its own SLM).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from fedkt.config import FedktConfig
from fedkt.data import Example
from fedkt.data.cot import predict_example
from fedkt.experiments.summary import headline, mean_scores
from fedkt.experiments.task import partition
from fedkt.federation.fedcot import FedCoTResult, FedCoTSpec, simulate_fedcot
from fedkt.jobs import load_for, placement, score, task_examples
from fedkt.models import adapter_state, add_lora, load_adapter_state, merged_copy
from fedkt.report import format_table, write_json
from fedkt.training import train_answer_only

PRIVACY_COLUMNS = (
    "prompt_eps_mean",
    "protected_recovered",
    "all_recovered",
    "gold_answer_leak_rate",
)


@dataclasses.dataclass(frozen=True)
class FedCoTTask:
    """One task's split: the clients' private parts, public text, evaluation rows."""

    config: FedktConfig
    task: str
    clients: list[list[Example]]
    public: list[Example]
    eval_examples: list[Example]  # as loaded; clients put the predict prefix on themselves
    scored: list[Example]  # the same rows with the predict prefix, for the harness's scoring

    @classmethod
    def load(cls, config: FedktConfig, task: str) -> FedCoTTask:
        train = task_examples(config, task, "train", config.data.train_limit)
        clients, public = partition(train, config.federation)
        evaluation = task_examples(config, task, config.data.split, config.data.limit)
        scored = [predict_example(e) for e in evaluation]
        return cls(config, task, clients, public, evaluation, scored)

    def evaluate(self, name: str) -> dict[str, float]:
        model, tokenizer = load_for(self.config, name)
        return score(self.config, model, tokenizer, self.scored)

    def spec(self, strategy: str, eps: float) -> FedCoTSpec:
        config, federation = self.config, self.config.federation
        dtype, device = placement(config)
        store = Path(config.output_dir) / "responses" / f"{self.task}-{strategy}-{eps:g}.jsonl"
        return FedCoTSpec(
            llm=federation.llm,
            slm=federation.slm,
            decoder=config.fedcot.decoder,
            client_data=tuple(tuple(part) for part in self.clients),
            eval_data=tuple(self.eval_examples),
            public_texts=tuple(e.question for e in self.public),
            settings=config.fedcot.settings(config.train, strategy, eps),
            lora=config.lora,
            dtype=dtype,
            device=device,
            client_cpus=federation.client_cpus,
            client_gpus=federation.client_gpus,
            eval_batch_size=config.eval.batch_size,
            eval_max_new_tokens=config.eval.max_new_tokens,
            response_store=str(store),
        )


def zero_shot(run: FedCoTTask) -> Iterator[tuple[str, dict[str, Any]]]:
    federation = run.config.federation
    yield "zero_shot", {"llm": run.evaluate(federation.llm), "slm": run.evaluate(federation.slm)}


def standalone(run: FedCoTTask) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each client fine-tunes a fresh SLM adapter on its own labels (predict task only); the
    SLM is loaded once and every client starts from the same fresh adapter."""
    model, tokenizer = load_for(run.config, run.config.federation.slm)
    torch.manual_seed(run.config.fedcot.seed)
    slm = add_lora(model, run.config.lora)
    fresh = adapter_state(slm)
    clients = []
    for k, part in enumerate(run.clients):
        load_adapter_state(slm, fresh)
        train = dataclasses.replace(run.config.train, seed=run.config.train.seed + k)
        train_answer_only(slm, tokenizer, [predict_example(e) for e in part], train)
        clients.append(score(run.config, merged_copy(slm), tokenizer, run.scored))
    yield "standalone", {"llm": None, "slm": mean_scores(clients), "clients": clients}


def cot_upper_bound(run: FedCoTTask) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "cot_upper_bound", _federated(run.spec("none", math.inf))


def fedcot(run: FedCoTTask) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every strategy x eps, one at a time (each is written as soon as it is done); eps = inf
    runs once (nothing is perturbed) and serves every strategy."""
    fedcot_config = run.config.fedcot
    unperturbed: tuple[str, dict[str, Any]] | None = None
    for strategy in fedcot_config.strategies:
        for eps in fedcot_config.eps:
            label = f"fedcot-{strategy}@{eps:g}"
            if math.isinf(eps) and unperturbed is not None:
                yield label, {**unperturbed[1], "same_run_as": unperturbed[0]}
                continue
            outcome = _federated(run.spec(strategy, eps))
            if math.isinf(eps):
                unperturbed = (label, outcome)
            yield label, outcome


BASELINES: dict[str, Callable[[FedCoTTask], Iterable[tuple[str, dict[str, Any]]]]] = {
    "zero_shot": zero_shot,
    "standalone": standalone,
    "cot_upper_bound": cot_upper_bound,
    "fedcot": fedcot,
}


def run_fedcot_experiment(config: FedktConfig) -> dict[str, Any]:
    """Every FedCoT baseline on every task; writes results.json after each method."""
    results: dict[str, Any] = {
        "job": "run",
        "algorithm": "fedcot",
        "config": dataclasses.asdict(config),
        "split": config.data.split,
        "tasks": {},
    }
    path = Path(config.output_dir) / "results.json"
    for task in config.data.tasks:
        run = FedCoTTask.load(config, task)
        rows = {"clients": [len(p) for p in run.clients], "public": len(run.public)}
        entry: dict[str, Any] = {"rows": {**rows, "eval": len(run.eval_examples)}, "baselines": {}}
        results["tasks"][task] = entry
        for name in config.fedcot.baselines:
            start = time.perf_counter()
            for label, outcome in BASELINES[name](run):
                seconds = outcome.get("seconds", time.perf_counter() - start)
                entry["baselines"][label] = {**outcome, "seconds": round(seconds, 1)}
                write_json(path, results)  # an interrupted run keeps what is done
                start = time.perf_counter()
    return results


def _federated(spec: FedCoTSpec) -> dict[str, Any]:
    start = time.perf_counter()
    result = simulate_fedcot(spec)
    return {
        "llm": None,
        "slm": mean_scores(list(result.results)),
        "clients": list(result.results),
        "privacy": mean_scores(list(result.privacy)),
        **_communication(result),
        "seconds": time.perf_counter() - start,
    }


def _communication(result: FedCoTResult) -> dict[str, Any]:
    return {
        "bytes_up": result.bytes_up,
        "bytes_down": result.bytes_down,
        "total_bytes": sum(result.bytes_up.values()) + sum(result.bytes_down.values()),
    }


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
        "prompt eps",
        "protected tok. recovered %",
        "all tok. %",
        "gold leak %",
    ]
    return format_table(headers, rows)


def _cell(column: str, value: float | None) -> str:
    if value is None:
        return "-"
    if column == "prompt_eps_mean":
        return "inf" if math.isinf(value) else f"{value:.0f}"
    return f"{100 * value:.1f}"


def plot_fedcot(results: dict[str, Any], path: Path) -> Path:
    """Per task: SLM accuracy against eps for each strategy (the other methods as horizontal
    lines), and on a second axis the share of tokens an inverting attacker recovers."""
    from matplotlib.figure import Figure

    tasks = results["tasks"]
    figure = Figure(figsize=(7 * len(tasks), 4.2), layout="constrained")
    axes = figure.subplots(1, len(tasks), squeeze=False)[0]
    for ax, (task, entry) in zip(axes, tasks.items(), strict=True):
        _eps_panel(ax, task, entry["baselines"])
    figure.savefig(path, dpi=120)
    return path


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
        ax.plot(
            xs,
            [100 * headline(o["slm"]) for _, o in points],
            "o-",
            color=color,
            label=f"FedCoT-{strategy.upper()} SLM",
        )
        recovered.plot(
            xs,
            [100 * o["privacy"]["protected_recovered"] for _, o in points],
            "x:",
            color=color,
            label=f"{strategy.upper()} tokens recovered",
        )
        ax.set_xticks(xs, ["inf" if math.isinf(e) else f"{e:g}" for e, _ in points])
    for name, style in (("zero_shot", ":"), ("standalone", "--"), ("cot_upper_bound", "-.")):
        outcome = baselines.get(name)
        if outcome is not None:
            for role, color in (("slm", "tab:gray"), ("llm", "tab:blue")):
                if outcome.get(role) is not None:
                    ax.axhline(
                        100 * headline(outcome[role]),
                        color=color,
                        linestyle=style,
                        linewidth=1,
                        label=f"{name} {role.upper()}",
                    )
    ax.set(title=task, xlabel="epsilon per token", ylabel="accuracy (%)")
    recovered.set_ylabel("tokens recovered by inversion (%)")
    recovered.set_ylim(0, 105)
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.12, 1.0))
    recovered.legend(fontsize="x-small", loc="lower left", bbox_to_anchor=(1.12, 0.0))


def _eps_of(name: str) -> float:
    return float(name.rsplit("@", 1)[1])
