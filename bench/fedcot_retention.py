"""FedCoT's mechanisms before any LLM: retention r(eps) on public questions, and their knees.

For each task (ARC-Easy, AG News: the first 200 questions of the public train split, their
private fields as a client perturbs them), each candidate partition ("classes",
"vocabulary") of the SmolLM2-135M kit (min_letters = 1, FedCoT's default) and each mechanism
(EM, AEM with IDF over the whole public train split, k-RR, CusText with EM and with k-RR
inside clusters of 20, metric DP), `fedkt.privacy.retention` measures the exact expected share
of perturbed tokens kept unchanged, r(eps), and finds by bisection on log eps the eps where it
reaches 1, 5, 20, 50, 80 and 95 %. The default grid of a mechanism is its knees (the geometric
mean over the two tasks, 2 significant figures) and inf.

Writes bench/results/fedcot_retention.json and fedcot_retention.png (r(eps) per mechanism, one
panel per task and partition).

    nice -n 19 .venv/bin/python bench/fedcot_retention.py     # ~11 min on 2 shared CPU cores
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from fedkt.config import build_config
from fedkt.data.cot import label_names, private_fields
from fedkt.jobs import task_examples
from fedkt.models import load_model_and_tokenizer
from fedkt.privacy import build_kit, public_importance
from fedkt.privacy.retention import (
    KNEE_TARGETS,
    Retention,
    grid_from_knees,
    measure_knees,
    public_tokens,
)
from fedkt.report import format_table, write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MECHANISMS: list[tuple[str, dict[str, Any]]] = [
    ("em", {}),
    ("aem", {}),
    ("krr", {}),
    ("custext", {"inner": "em"}),
    ("custext", {"inner": "krr"}),
    ("metric", {}),
]
CLUSTER_SIZE = 20


def main() -> None:
    args = _args()
    start = time.perf_counter()
    config = build_config({"data": {"dir": args.data_dir}})
    model, tokenizer = load_model_and_tokenizer(args.model, dtype="float32", device="cpu")
    embeddings = model.get_input_embeddings().weight.detach().float().cpu()
    del model
    results: dict[str, Any] = {
        "protocol": {
            "model": args.model,
            "questions": args.questions,
            "min_letters": 1,
            "cluster_size": CLUSTER_SIZE,
            "targets": list(KNEE_TARGETS),
            "budget": "2 shared CPU cores, no GPU, no LLM",
        },
        "runs": {},
    }
    for partition in args.partitions:
        kit = build_kit(tokenizer, embeddings, min_letters=1, partition=partition)
        for task in args.tasks:
            public = task_examples(config, task, "train", 0)
            labels = label_names(public)
            fields = [f for e in public[: args.questions] for f in private_fields(e, labels)]
            tokens = public_tokens(tokenizer, kit, fields)
            importance = public_importance(tokenizer, [e.question for e in public])
            run: dict[str, Any] = {
                "task": task,
                "partition": partition,
                "candidate_sets": kit.describe(),
                "tokens_perturbed": tokens.count,
                "tokens_passed_through": tokens.passed_through,
                "mechanisms": {},
            }
            for strategy, options in MECHANISMS:
                clock = time.perf_counter()
                curve = Retention(
                    tokens, strategy, importance=importance, cluster_size=CLUSTER_SIZE, **options
                )
                summary = measure_knees(curve)
                summary["seconds"] = round(time.perf_counter() - clock, 1)
                run["mechanisms"][curve.name] = summary
                print(
                    f"{task} {partition} {curve.name}: {summary['knees']} ({summary['seconds']} s)"
                )
            results["runs"][f"{task}/{partition}"] = run
            results["grids"] = _grids(results["runs"])
            results["wall_seconds"] = round(time.perf_counter() - start, 1)
            write_json(RESULTS / "fedcot_retention.json", results)  # keep what is done
    _plot(results, RESULTS / "fedcot_retention.png")
    print(_table(results))
    print(f"wall time {(time.perf_counter() - start) / 60:.1f} min")


def _grids(runs: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """{partition: {mechanism: eps grid}}: per target the geometric mean of the tasks' knees
    (a target any task misses is left out), rounded, then inf."""
    grids: dict[str, dict[str, list[float]]] = {}
    for run in runs.values():
        for name in run["mechanisms"]:
            grids.setdefault(run["partition"], {}).setdefault(name, [])
    for partition, per_mechanism in grids.items():
        for name in per_mechanism:
            knees: dict[float, float | None] = {}
            for target in KNEE_TARGETS:
                found = [
                    run["mechanisms"][name]["knees"][f"{target:g}"]
                    for run in runs.values()
                    if run["partition"] == partition
                ]
                ok = [e for e in found if e is not None]
                knees[target] = (
                    math.exp(sum(map(math.log, ok)) / len(ok))
                    if ok and len(ok) == len(found)
                    else None
                )
            per_mechanism[name] = list(grid_from_knees(knees))
    return grids


def _table(results: dict[str, Any]) -> str:
    headers = ["task", "partition", "mechanism", "r(0) %", *(f"{100 * t:g}%" for t in KNEE_TARGETS)]
    rows = []
    for run in results["runs"].values():
        for name, summary in run["mechanisms"].items():
            knees = [summary["knees"][f"{t:g}"] for t in KNEE_TARGETS]
            rows.append(
                [
                    run["task"],
                    run["partition"],
                    name,
                    f"{100 * summary['r0']:.2g}",
                    *("-" if e is None else f"{e:.3g}" for e in knees),
                ]
            )
    return format_table(headers, rows)


def _plot(results: dict[str, Any], path: Path) -> None:
    runs = list(results["runs"].values())
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    partitions = list(dict.fromkeys(r["partition"] for r in runs))
    fig, axes = plt.subplots(
        len(partitions), len(tasks), figsize=(6 * len(tasks), 4.2 * len(partitions)), squeeze=False
    )
    for run in runs:
        ax = axes[partitions.index(run["partition"])][tasks.index(run["task"])]
        for name, summary in run["mechanisms"].items():
            xs, ys = zip(*summary["curve"], strict=True)
            ax.plot(xs, [100 * y for y in ys], marker=".", label=name)
        for target in KNEE_TARGETS:
            ax.axhline(100 * target, color="grey", linewidth=0.5, linestyle=":")
        ax.set_xscale("log")
        ax.set_xlabel("eps per token (metric: eps_d)")
        ax.set_ylabel("perturbed tokens kept, r(eps) %")
        sets = ", ".join(f"{k} {v}" for k, v in run["candidate_sets"].items())
        ax.set_title(f"{run['task']}, {run['partition']} ({sets})", fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("FedCoT mechanisms: retention on 200 public questions (SmolLM2-135M kit)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["arc_easy", "ag_news"])
    parser.add_argument("--partitions", nargs="+", default=["classes", "vocabulary"])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("FEDKT_DATA_DIR") or str(REPO.parent / "shared" / "data"),
    )
    return parser.parse_args()


if __name__ == "__main__":
    torch.set_num_threads(min(2, torch.get_num_threads()))
    main()
