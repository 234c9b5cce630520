"""FedCoLLM's Table 1 protocol on the embedded pair: five tasks, five baselines, LLM and SLM.

Runs `fedkt run`'s harness (`fedkt.experiments.run_experiment`) on configs/fedcollm-bench.toml
(a 2-CPU budget: 150 train rows and 100 validation rows per task, 2 rounds), then checks the
shape of the paper's claim on every task, each as a paired test on the same rows:

- client SLM: FedCoLLM > FedAvg > Standalone > Zero-shot;
- server LLM: FedCoLLM not below centralized by more than the margin (eval.margin, 1 point).

Writes bench/results/fedcollm.json (the full run, the table, the checks, wall time) and
bench/results/fedcollm.png (per task: bars of every method for the LLM and the SLM).

    .venv/bin/python bench/fedcollm.py                       # ~30 min on 2 idle CPU cores
    .venv/bin/python bench/fedcollm.py --tasks ag_news --eval-limit 100
    .venv/bin/python bench/fedcollm.py --adapter-bytes       # seconds: no training

``--adapter-bytes`` only counts what one round sends with the config's SLM for each LoRA target
choice (all-linear, fedkt's default, against the paper's attention-only q/k/v/o, whose Table 2
sizes it matches): adapter parameters and the payload bytes of the broadcast and of a client's
reply through the federation's own codec, written to bench/results/fedcollm_adapter_bytes.json.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from flwr.app import MetricRecord, RecordDict

from fedkt.config import FedktConfig, load_config, with_overrides
from fedkt.experiments import comparisons_table, results_table, run_experiment
from fedkt.experiments.summary import headline, stderr
from fedkt.federation import keys
from fedkt.federation.codec import adapter_to_record, payload_bytes
from fedkt.federation.fedcollm import broadcast_content
from fedkt.jobs import placement
from fedkt.models import adapter_state, add_lora, load_model_and_tokenizer
from fedkt.report import write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def main() -> None:
    args = _args()
    config = load_config(args.config)
    if args.adapter_bytes:
        report = adapter_bytes(config)
        write_json(RESULTS / "fedcollm_adapter_bytes.json", report)
        for name, row in report["targets"].items():
            print(
                f"{name:>10}: {row['params']:,} adapter params, {row['bytes_per_round']:,} bytes "
                f"per round ({report['clients']} clients, both ways)"
            )
        print(f"all-linear / attention: {report['all_linear_over_attention']:.2f}x the bytes")
        return
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
        "claims": {task: entry["comparisons"] for task, entry in run["tasks"].items()},
        "wall_seconds": round(seconds, 1),
        "run": run,
    }
    write_json(RESULTS / "fedcollm.json", results)
    _plot(table, RESULTS / "fedcollm.png")
    print(results_table(run))
    print(comparisons_table(run))
    print(f"wall time {seconds / 60:.1f} min")


TARGETS: dict[str, str | tuple[str, ...]] = {
    "all-linear": "all-linear",
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
}
"""fedkt's default LoRA targets and the paper's (attention only, configs/fedcollm-paper.toml)."""


def adapter_bytes(config: FedktConfig) -> dict[str, Any]:
    """What one FedCoLLM round sends per LoRA target choice, on the config's SLM: only theta
    travels, down to and up from every client, so a round is K x (broadcast + reply)."""
    slm, clients = config.federation.slm, config.federation.clients
    dtype, device = placement(config)
    targets = {}
    for name, modules in TARGETS.items():
        model, _ = load_model_and_tokenizer(slm, dtype=dtype, device=device)
        theta = adapter_state(add_lora(model, replace(config.lora, target_modules=modules)))
        down = payload_bytes(broadcast_content(theta, 0))
        reply = RecordDict(
            {
                keys.ADAPTER: adapter_to_record(theta),
                keys.COUNTS: MetricRecord({keys.N_EXAMPLES: 1, keys.PARTITION: 0}),
            }
        )
        up = payload_bytes(reply)
        targets[name] = {
            "target_modules": modules,
            "params": sum(tensor.numel() for tensor in theta.values()),
            "dtype": str(next(iter(theta.values())).dtype),
            "bytes_down": down,
            "bytes_up": up,
            "bytes_per_round": clients * (down + up),
        }
    ratio = targets["all-linear"]["bytes_per_round"] / targets["attention"]["bytes_per_round"]
    return {"slm": slm, "clients": clients, "targets": targets, "all_linear_over_attention": ratio}


Cell = dict[str, float] | None
"""Accuracy in %, its standard error in points and the row count; None: no such model."""


def _table(run: dict[str, Any]) -> dict[str, dict[str, dict[str, Cell]]]:
    """{task: {role: {method: cell}}}."""
    return {
        task: {
            role: {name: _cell(outcome[role]) for name, outcome in entry["baselines"].items()}
            for role in ("llm", "slm")
        }
        for task, entry in run["tasks"].items()
    }


def _cell(scores: dict[str, float] | None) -> Cell:
    if scores is None:
        return None
    return {
        "acc": round(100 * headline(scores), 2),
        "stderr": round(100 * stderr(scores), 2),
        "n": scores["n"],
    }


def _plot(table: dict[str, dict[str, dict[str, Cell]]], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.2 * len(table), 4.2), layout="constrained")
    axes = figure.subplots(1, len(table), squeeze=False, sharey=True)[0]
    for ax, (task, roles) in zip(axes, table.items(), strict=True):
        bars = [
            (f"{role.upper()} {name}", cell)
            for role, methods in roles.items()
            for name, cell in methods.items()
            if cell is not None
        ]
        colors = ["tab:blue" if label.startswith("LLM") else "tab:orange" for label, _ in bars]
        values = [cell["acc"] for _, cell in bars]
        errors = [cell["stderr"] for _, cell in bars]
        ax.bar(range(len(bars)), values, yerr=errors, capsize=2, color=colors)
        ax.set_xticks(range(len(bars)), [label for label, _ in bars], rotation=70, fontsize=7)
        ax.set_title(task)
    axes[0].set_ylabel("validation accuracy (%), ±1 s.e.")
    figure.savefig(path, dpi=120)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "fedcollm-bench.toml")
    parser.add_argument("--tasks", nargs="+", help="subset of the config's tasks")
    parser.add_argument("--eval-limit", type=int, help="validation rows per task (0 = all)")
    parser.add_argument(
        "--adapter-bytes",
        action="store_true",
        help="only count the bytes a round sends per LoRA target choice (no training)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    main()
