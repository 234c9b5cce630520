"""What a run shows, for every algorithm: a task x method table of LLM and SLM scores with
their standard errors, a table of the paired tests between methods, and plot helpers that
draw every score with its one-standard-error bar or band."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedkt.report import format_table


def mean_scores(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean over clients, of the keys every client reported (clients are scored on
    the same rows, so "n" is shared)."""
    keys = set.intersection(*(set(row) for row in rows)) if rows else set()
    return {key: sum(row[key] for row in rows) / len(rows) for key in sorted(keys)}


def headline_metric(scores: dict[str, float]) -> str:
    """The metric a table reports: accuracy, or exact match for generative tasks."""
    return "acc" if "acc" in scores else "exact_match"


def headline(scores: dict[str, float]) -> float:
    return scores[headline_metric(scores)]


def stderr(scores: dict[str, float]) -> float:
    """The headline metric's standard error (0 where a score has none)."""
    return float(scores.get(f"{headline_metric(scores)}_stderr", 0.0))


def percent(scores: dict[str, float] | None) -> str:
    """'53.0 ± 5.0' (headline ± one standard error, in points), '-' for no model."""
    if scores is None:
        return "-"
    return f"{100 * headline(scores):.1f} ± {100 * stderr(scores):.1f}"


def percent_cell(scores: dict[str, float] | None, digits: int = 2) -> dict[str, float] | None:
    """A bench's table cell: the headline metric and its standard error in points, rounded to
    ``digits``, with the row count; None for no model."""
    if not scores:
        return None
    return {
        "acc": round(100 * headline(scores), digits),
        "stderr": round(100 * stderr(scores), digits),
        "n": scores["n"],
    }


def results_table(results: dict[str, Any]) -> str:
    """One line per task and method: LLM and SLM headline score ± s.e. in %, rows, time."""
    rows = [
        [
            task,
            name,
            percent(outcome.get("llm")),
            percent(outcome.get("slm")),
            entry["rows"]["eval"],
            f"{outcome['seconds']:.0f}",
        ]
        for task, entry in results["tasks"].items()
        for name, outcome in entry["baselines"].items()
    ]
    header = ["task", "method", "LLM % ± s.e.", "SLM % ± s.e.", "n", "seconds"]
    return format_table(header, rows)


def comparisons_table(results: dict[str, Any]) -> str:
    """One line per paired test: the claim, the difference with its 95% CI, p and verdict."""
    rows = [
        [
            task,
            test["claim"],
            f"{100 * test['diff']:+.1f}",
            f"[{100 * test['ci95'][0]:+.1f}, {100 * test['ci95'][1]:+.1f}]",
            f"{test['p_value']:.3g}",
            test["test"],
            "holds" if test["holds"] else "not shown",
        ]
        for task, entry in results["tasks"].items()
        for test in entry.get("comparisons", [])
    ]
    header = ["task", "claim (paired, same rows)", "diff pt", "95% CI", "p", "test", "verdict"]
    return format_table(header, rows)


def band(ax: Any, scores: dict[str, float], *, color: str, linestyle: Any, label: str) -> None:
    """A horizontal line at the score and a shaded band of ± one standard error."""
    value, error = 100 * headline(scores), 100 * stderr(scores)
    ax.axhline(value, color=color, linestyle=linestyle, linewidth=1, label=label)
    ax.axhspan(value - error, value + error, color=color, alpha=0.06, linewidth=0)


def errorbar(
    ax: Any, xs: Sequence[float], points: Sequence[dict[str, float]], *, color: str, label: str
) -> None:
    """Scores at ``xs`` joined by a line, each with a one-standard-error bar."""
    ys = [100 * headline(p) for p in points]
    errors = [100 * stderr(p) for p in points]
    ax.errorbar(xs, ys, yerr=errors, fmt="o-", color=color, capsize=3, label=label)


Panel = Callable[[Any, str, dict[str, Any]], None]
"""Draws one task's panel: ``panel(ax, task, baselines)``."""


def plot_tasks(
    results: dict[str, Any], path: Path, panel: Panel, size: tuple[float, float]
) -> Path:
    """One ``panel`` per task side by side (``size`` per panel), saved to ``path``."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    tasks = results["tasks"]
    figure = Figure(figsize=(size[0] * len(tasks), size[1]), layout="constrained")
    axes = figure.subplots(1, len(tasks), squeeze=False)[0]
    for ax, (task, entry) in zip(axes, tasks.items(), strict=True):
        panel(ax, task, entry["baselines"])
    figure.savefig(path, dpi=120)
    return path
