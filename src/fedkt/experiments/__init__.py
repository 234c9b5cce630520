"""fedkt.experiments: `fedkt run`, FedCoLLM and its four baselines in one harness.

Zero-shot, standalone, FedAvg, centralized and FedCoLLM run on the same split of each task and
are scored on the same rows (`run_experiment`); `results_table` and `plot_results` show them.
"""

from fedkt.experiments.baselines import BASELINES
from fedkt.experiments.harness import run_experiment
from fedkt.experiments.summary import headline, plot_results, results_table
from fedkt.experiments.task import TaskRun, partition

__all__ = [
    "BASELINES",
    "TaskRun",
    "headline",
    "partition",
    "plot_results",
    "results_table",
    "run_experiment",
]
