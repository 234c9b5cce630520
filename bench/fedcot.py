"""FedCoT on the embedded models: accuracy against epsilon, with the leakage audit.

Runs `fedkt run`'s FedCoT harness (`fedkt.experiments.run_experiment`) on
configs/fedcot-arc-easy.toml and configs/fedcot-gsm8k.toml (2-CPU budgets: 2 clients x 16
questions, 100 / 30 evaluation rows, 64-token rationales) and gathers, per task and method,
the client SLM's accuracy (mean over clients), the LLM's zero-shot score, the epsilon
accounting and the inversion attacker's recovery rate. Every method of the spec runs: SLM and
LLM zero-shot, standalone (labels only), non-private CoT (upper bound), FedCoT-EM and -AEM at
each eps.

Writes bench/results/fedcot.json and bench/results/fedcot.png (per task: SLM accuracy against
eps for EM and AEM, the baselines as horizontal lines, tokens recovered on a second axis).

    .venv/bin/python bench/fedcot.py                           # ~40 min on 2 idle CPU cores
    .venv/bin/python bench/fedcot.py --eps 1 3 5 10 100 inf    # add a point past the spec's grid
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from fedkt.config import load_config, with_overrides
from fedkt.experiments import results_table, run_experiment
from fedkt.experiments.fedcot import plot_fedcot, privacy_table
from fedkt.experiments.summary import headline
from fedkt.report import write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CONFIGS = [REPO / "configs" / "fedcot-arc-easy.toml", REPO / "configs" / "fedcot-gsm8k.toml"]


def main() -> None:
    args = _args()
    merged: dict[str, Any] = {"algorithm": "fedcot", "tasks": {}, "configs": {}}
    start = time.perf_counter()
    for path in args.configs:
        config = load_config(path)
        if args.eps:
            config = with_overrides(config, fedcot=with_overrides(config.fedcot, eps=args.eps))
        run = run_experiment(config)
        merged["tasks"].update(run["tasks"])
        merged["configs"][str(path.relative_to(REPO))] = run["config"]
        _write(merged, time.perf_counter() - start)
    print(results_table(merged))
    print(privacy_table(merged))
    print(f"wall time {(time.perf_counter() - start) / 60:.1f} min")


def _write(merged: dict[str, Any], seconds: float) -> None:
    results = {
        "budget": "2 CPU cores, no GPU (the device tool was not lent to this task)",
        "wall_seconds": round(seconds, 1),
        "table": _table(merged),
        **merged,
    }
    write_json(RESULTS / "fedcot.json", results)  # after each task: a crash keeps the rest
    plot_fedcot(merged, RESULTS / "fedcot.png")


def _table(merged: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """{task: {method: {slm, llm (%), prompt_eps, protected_recovered, gold_leak (%)}}}."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for task, entry in merged["tasks"].items():
        table[task] = {}
        for name, outcome in entry["baselines"].items():
            privacy = outcome.get("privacy", {})
            table[task][name] = {
                "slm": _percent(outcome.get("slm")),
                "llm": _percent(outcome.get("llm")),
                "prompt_eps_mean": privacy.get("prompt_eps_mean"),
                "protected_recovered": _share(privacy.get("protected_recovered")),
                "gold_answer_leak_rate": _share(privacy.get("gold_answer_leak_rate")),
                "rationales_kept": outcome.get("slm", {}).get("rationales"),
            }
    return table


def _percent(scores: dict[str, float] | None) -> float | None:
    return None if not scores else round(100 * headline(scores), 1)


def _share(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 1)


def _eps(text: str) -> float:
    return math.inf if text == "inf" else float(text)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", type=Path, default=CONFIGS)
    parser.add_argument("--eps", nargs="+", type=_eps, help="override [fedcot] eps")
    args = parser.parse_args()
    args.configs = [p.resolve() for p in args.configs]
    if args.eps:
        args.eps = tuple(args.eps)
    return args


if __name__ == "__main__":
    main()
