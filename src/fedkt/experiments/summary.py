"""What a run shows: a task x baseline table of LLM and SLM scores, and a plot of FedCoLLM's
rounds against the other methods as horizontal reference lines."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedkt.report import format_table

_COLORS = {"llm": "tab:blue", "slm": "tab:orange"}
_STYLES = {
    "zero_shot": ":",
    "standalone": (0, (3, 1, 1, 1, 1, 1)),
    "fedavg": "--",
    "centralized": "-.",
}


def mean_scores(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean over clients, of the keys every client reported (clients are scored on
    the same rows, so "n" is shared)."""
    keys = set.intersection(*(set(row) for row in rows)) if rows else set()
    return {key: sum(row[key] for row in rows) / len(rows) for key in sorted(keys)}


def headline(scores: dict[str, float]) -> float:
    """The score a table reports: accuracy, or exact match for generative tasks."""
    return scores["acc"] if "acc" in scores else scores["exact_match"]


def results_table(results: dict[str, Any]) -> str:
    """One line per task and baseline: LLM and SLM headline score in %, and wall time."""
    rows = [
        [
            task,
            name,
            _percent(outcome["llm"]),
            _percent(outcome["slm"]),
            f"{outcome['seconds']:.0f}",
        ]
        for task, entry in results["tasks"].items()
        for name, outcome in entry["baselines"].items()
    ]
    return format_table(["task", "baseline", "LLM acc", "SLM acc", "seconds"], rows)


def plot_results(results: dict[str, Any], path: Path) -> Path:
    """One panel per task: FedCoLLM's LLM and SLM score per round, the other baselines as
    horizontal lines in the same colour (blue LLM, orange SLM)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    tasks = results["tasks"]
    figure = Figure(figsize=(6.5 * len(tasks), 4), layout="constrained")
    axes = figure.subplots(1, len(tasks), squeeze=False)[0]
    for ax, (task, entry) in zip(axes, tasks.items(), strict=True):
        _panel(ax, task, entry["baselines"])
    figure.savefig(path, dpi=120)
    return path


def _panel(ax: Any, task: str, baselines: dict[str, Any]) -> None:
    curve = baselines.get("fedcollm", {}).get("curve", [])
    for role, color in _COLORS.items():
        for name, style in _STYLES.items():
            scores = baselines.get(name, {}).get(role)
            if scores is not None:
                value, label = 100 * headline(scores), f"{name} {role.upper()}"
                ax.axhline(value, color=color, linestyle=style, linewidth=1, label=label)
        if curve:
            rounds = [point["round"] for point in curve]
            values = [100 * headline(point[role]) for point in curve]
            ax.plot(rounds, values, "o-", color=color, label=f"fedcollm {role.upper()}")
            ax.set_xticks(rounds)
    ax.set(title=task, xlabel="FedCoLLM round", ylabel="accuracy (%)")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _percent(scores: dict[str, float] | None) -> str:
    return "-" if scores is None else f"{100 * headline(scores):.1f}"
