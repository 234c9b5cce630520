"""FedCoLLM's Table 1 protocol on the embedded pair: five tasks, five baselines, LLM and SLM.

Runs `fedkt run`'s harness (`fedkt.experiments.run_experiment`) on configs/fedcollm-bench.toml
(a 2-CPU budget: 150 train rows and 100 validation rows per task, 2 rounds), then checks the
shape of the paper's claim on every task:

- client SLM: FedCoLLM > FedAvg > Standalone > Zero-shot;
- server LLM: FedCoLLM reaches >= 97 % of centralized fine-tuning.

Writes bench/results/fedcollm.json (the full run, the table, the checks, wall time) and
bench/results/fedcollm.png (per task: bars of every method for the LLM and the SLM).

    .venv/bin/python bench/fedcollm.py                       # ~30 min on 2 idle CPU cores
    .venv/bin/python bench/fedcollm.py --tasks ag_news --eval-limit 100
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path
from typing import Any

from fedkt.config import load_config, with_overrides
from fedkt.experiments import headline, results_table, run_experiment
from fedkt.report import write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SLM_ORDER = ("fedcollm", "fedavg", "standalone", "zero_shot")  # the paper's claimed ranking
LLM_SHARE_OF_CENTRALIZED = 0.97


def main() -> None:
    args = _args()
    config = load_config(args.config)
    data = config.data
    config = with_overrides(
        config,
        data=with_overrides(
            data,
            tasks=tuple(args.tasks or data.tasks),
            limit=data.limit if args.eval_limit is None else args.eval_limit,
        ),
    )
    start = time.perf_counter()
    run = run_experiment(config)
    seconds = time.perf_counter() - start
    table = _table(run)
    results = {
        "protocol": {
            "config": str(args.config),
            "split": data.split,
            "eval_limit": config.data.limit,
            "train_limit": data.train_limit,
            "rounds": config.fedcollm.rounds,
            "budget": "2 CPU cores, no GPU (the device tool was not lent to this task)",
        },
        "table": table,
        "claims": {task: _claims(roles) for task, roles in table.items()},
        "wall_seconds": round(seconds, 1),
        "run": run,
    }
    write_json(RESULTS / "fedcollm.json", results)
    _plot(table, RESULTS / "fedcollm.png")
    print(results_table(run))
    for task, claims in results["claims"].items():
        print(task, claims)
    print(f"wall time {seconds / 60:.1f} min")


def _table(run: dict[str, Any]) -> dict[str, dict[str, dict[str, float | None]]]:
    """{task: {role: {method: accuracy %}}}; None where a method has no such model."""
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    for task, entry in run["tasks"].items():
        table[task] = {
            role: {
                name: None if outcome[role] is None else round(100 * headline(outcome[role]), 1)
                for name, outcome in entry["baselines"].items()
            }
            for role in ("llm", "slm")
        }
    return table


def _claims(table: dict[str, dict[str, float | None]]) -> dict[str, Any]:
    """Which parts of the paper's claim hold on this task (strict inequalities)."""
    slm, llm = table["slm"], table["llm"]
    pairs = list(itertools.pairwise(SLM_ORDER))
    slm_holds = {f"{a} > {b}": _greater(slm.get(a), slm.get(b)) for a, b in pairs}
    fed, central = llm.get("fedcollm"), llm.get("centralized")
    share = None if fed is None or not central else round(fed / central, 3)
    return {
        "slm_ranking": slm_holds,
        "llm_fedcollm_over_centralized": share,
        "llm_reaches_97_percent": None if share is None else share >= LLM_SHARE_OF_CENTRALIZED,
    }


def _greater(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else a > b


def _plot(table: dict[str, dict[str, dict[str, float | None]]], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.2 * len(table), 4.2), layout="constrained")
    axes = figure.subplots(1, len(table), squeeze=False, sharey=True)[0]
    for ax, (task, roles) in zip(axes, table.items(), strict=True):
        bars = [
            (f"{role.upper()} {name}", value)
            for role, methods in roles.items()
            for name, value in methods.items()
            if value is not None
        ]
        colors = ["tab:blue" if label.startswith("LLM") else "tab:orange" for label, _ in bars]
        ax.bar(range(len(bars)), [v for _, v in bars], color=colors)
        ax.set_xticks(range(len(bars)), [label for label, _ in bars], rotation=70, fontsize=7)
        ax.set_title(task)
    axes[0].set_ylabel("validation accuracy (%)")
    figure.savefig(path, dpi=120)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "fedcollm-bench.toml")
    parser.add_argument("--tasks", nargs="+", help="subset of the config's tasks")
    parser.add_argument("--eval-limit", type=int, help="validation rows per task (0 = all)")
    return parser.parse_args()


if __name__ == "__main__":
    main()
