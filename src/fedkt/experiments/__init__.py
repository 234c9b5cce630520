"""fedkt.experiments: `fedkt run`, each algorithm beside its baselines on one split.

`harness` holds what every algorithm shares (the rows with their dev split, the scoreboard of
per-row predictions, standard errors and paired tests, the loop writing results.json);
`fedcollm`, `fedcot` and `fdkt` hold each algorithm's methods and plot; `summary` the tables.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedkt.config import FedktConfig
from fedkt.experiments.harness import TaskData, partition
from fedkt.experiments.summary import comparisons_table, results_table


def run_experiment(config: FedktConfig, *, resume: bool = False) -> dict[str, Any]:
    """Every method of the config's algorithm on every task; writes results.json and each
    method's artefacts. ``resume`` continues a previous run of the same config."""
    if config.algorithm == "fedcot":
        from fedkt.experiments.fedcot import run_fedcot_experiment

        return run_fedcot_experiment(config, resume=resume)
    if config.algorithm == "fdkt":
        from fedkt.experiments.fdkt import run_fdkt_experiment

        return run_fdkt_experiment(config, resume=resume)
    from fedkt.experiments.fedcollm import run_fedcollm_experiment

    return run_fedcollm_experiment(config, resume=resume)


def plot_experiment(config: FedktConfig, results: dict[str, Any], path: Path) -> Path:
    """The algorithm's own plot of ``results``."""
    plot: Callable[[dict[str, Any], Path], Path]
    if config.algorithm == "fedcot":
        from fedkt.experiments.fedcot import plot_fedcot as plot
    elif config.algorithm == "fdkt":
        from fedkt.experiments.fdkt import plot_fdkt as plot
    else:
        from fedkt.experiments.fedcollm import plot_fedcollm as plot
    return plot(results, path)


__all__ = [
    "TaskData",
    "comparisons_table",
    "partition",
    "plot_experiment",
    "results_table",
    "run_experiment",
]
