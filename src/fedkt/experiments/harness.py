"""One harness for FedCoLLM and its baselines: same data split, same models, same evaluation.

For each task in ``data.tasks`` the train rows are cut once into the clients' private parts
and the server's public part; every baseline in ``federation.baselines`` runs on that split
and is scored on the same evaluation rows, so their numbers compare directly.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from fedkt.config import FedktConfig
from fedkt.experiments.baselines import BASELINES
from fedkt.experiments.task import TaskRun
from fedkt.report import write_json


def run_experiment(config: FedktConfig) -> dict[str, Any]:
    """Every baseline of ``federation.baselines`` on every task; writes results.json.

    Returns ``{"tasks": {task: {"rows": ..., "baselines": {name: outcome}}}, ...}`` where each
    outcome holds "llm" and "slm" scores (None where the method has no such model), its wall
    time in "seconds", and what the method adds (see `fedkt.experiments.baselines`).
    With ``algorithm = "fedcot"`` FedCoT's baselines run instead (`fedkt.experiments.fedcot`).
    """
    if config.algorithm == "fedcot":
        from fedkt.experiments.fedcot import run_fedcot_experiment

        return run_fedcot_experiment(config)
    results: dict[str, Any] = {
        "job": "run",
        "config": dataclasses.asdict(config),
        "split": config.data.split,
        "tasks": {},
    }
    path = Path(config.output_dir) / "results.json"
    for task in config.data.tasks:
        run = TaskRun.load(config, task)
        entry: dict[str, Any] = {"rows": run.row_counts(), "baselines": {}}
        for name in config.federation.baselines:
            start = time.perf_counter()
            outcome = BASELINES[name](run)
            entry["baselines"][name] = {**outcome, "seconds": round(time.perf_counter() - start, 1)}
            results["tasks"][task] = entry
            write_json(path, results)  # after each method: an interrupted run keeps the rest
    return results
