"""FedCoLLM's Table 1 protocol on the embedded pair, sized so that its claims can be decided.

Runs `fedkt run`'s harness (`fedkt.experiments.run_experiment`) on configs/fedcollm-bench.toml
in chunks, each its own resumable run (``--resume`` continues a chunk where it stopped):

- ``ag_news@50`` and ``ag_news@250``: AG News (the task where the 8-layer student learns on a
  CPU budget) with ~50 and ~250 train rows per client (4 clients + an equal public part D_a),
  all 800 validation rows, the methods and ``fedcollm_min_ce`` (selective distillation): the
  regime where the 135M LLM is the stronger model, and the one where the clients' SLM
  outgrows it (`LARGE_CLIENTS`: its methods in order of priority);
- ``arc_easy@250``: the LLM side on ARC-Easy (all 570 validation rows; zero-shot, centralized
  and FedCoLLM). The 8-layer student sits at chance on every
  multiple-choice task (../shared/specs/embedded-pair.md), so the SLM claims of ARC-Easy,
  ARC-Challenge, OpenBookQA and CommonsenseQA cannot be decided on the embedded pair.

Every figure carries its row count and standard error, every claim a paired test on the same
rows (McNemar; non-inferiority with the 1-point margin of eval.margin). Writes
bench/results/fedcollm.json (one entry per chunk: the table, the claims, wall time, the run)
and bench/results/fedcollm.png (one panel per chunk).

    .venv/bin/python bench/fedcollm.py --chunk ag_news@50        # ~29 min on 2 idle CPU cores
    .venv/bin/python bench/fedcollm.py --chunk ag_news@250       # ~40 min
    .venv/bin/python bench/fedcollm.py --chunk arc_easy@250      # ~45 min
    .venv/bin/python bench/fedcollm.py --chunk ag_news@250 --resume
    .venv/bin/python bench/fedcollm.py --chunk ag_news@250 --collect  # a stopped run's methods
    .venv/bin/python bench/fedcollm.py --adapter-bytes           # seconds: no training

``--adapter-bytes`` only counts what one round sends with the config's SLM for each LoRA target
choice (all-linear, fedkt's default, against the paper's attention-only q/k/v/o, whose Table 2
sizes it matches): adapter parameters and the payload bytes of the broadcast and of a client's
reply through the federation's own codec, written to bench/results/fedcollm_adapter_bytes.json.
"""

from __future__ import annotations

import argparse
import json
import time
import typing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from flwr.app import MetricRecord, RecordDict

from fedkt.config import Baseline, FedktConfig, load_config, with_overrides
from fedkt.experiments import comparisons_table, results_table, run_experiment
from fedkt.experiments.summary import percent_cell
from fedkt.federation import keys
from fedkt.federation.codec import adapter_to_record, payload_bytes
from fedkt.federation.fedcollm import broadcast_content
from fedkt.jobs import placement
from fedkt.models import adapter_state, add_lora, load_model_and_tokenizer
from fedkt.report import write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
EVERY_METHOD: tuple[Baseline, ...] = tuple(
    name for name in typing.get_args(Baseline) if name != "fedcollm_dp_aux"
)
"""Every FedCoLLM method but the one without public data (bench/fdkt.py runs that)."""

LARGE_CLIENTS: tuple[Baseline, ...] = (
    "fedavg",
    "fedcollm_min_ce",
    "fedcollm",
    "standalone",
    "zero_shot",
)
"""The ~250-rows-per-client regime decides selective distillation's non-inferiority to FedAvg
and the SLM's ranking, in that order of priority (a chunk cut short by the session's budget
keeps the decisive methods; ``--resume`` adds the rest). Zero-shot scores the same models on
the same rows as in ``ag_news@50``; centralized and FedAvg + server CE (an LLM claim and an
ablation) are decided at ~50 rows per client."""


@dataclass(frozen=True)
class Chunk:
    """One resumable run of the bench: a task, the train rows per client, the methods."""

    task: str
    rows_per_client: int
    methods: tuple[Baseline, ...]
    eval_rows: int  # 0: every validation row
    lr: float  # the clients' (and standalone/centralized SLM's) LoRA rate, picked on dev

    def config(self, base: FedktConfig, name: str) -> FedktConfig:
        parts = base.federation.clients + 1  # the clients' parts and the public one, equal
        return with_overrides(
            base,
            output_dir=str(Path(base.output_dir) / name),
            data=with_overrides(
                base.data,
                tasks=(self.task,),
                limit=self.eval_rows,
                train_limit=parts * self.rows_per_client,
            ),
            federation=with_overrides(base.federation, baselines=self.methods),
            train=with_overrides(base.train, lr=self.lr),
        )


CHUNKS = {
    "ag_news@50": Chunk("ag_news", 50, EVERY_METHOD, 800, lr=3e-3),
    "ag_news@250": Chunk("ag_news", 250, LARGE_CLIENTS, 800, lr=3e-3),
    "arc_easy@250": Chunk("arc_easy", 250, ("zero_shot", "centralized", "fedcollm"), 0, lr=1e-3),
}
UNDECIDABLE = {
    task: "the 8-layer student sits at chance on multiple-choice tasks on a CPU budget "
    "(../shared/specs/embedded-pair.md): its SLM claims cannot be decided on the embedded pair"
    for task in ("arc_easy", "arc_challenge", "openbookqa", "commonsense_qa")
}


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
    chunk = CHUNKS[args.chunk]
    config = chunk.config(config, args.chunk)
    start = time.perf_counter()
    if args.collect:  # a chunk stopped by the session's budget: what its run has so far
        run = json.loads((Path(config.output_dir) / "results.json").read_text())
    else:
        run = run_experiment(config, resume=args.resume)
    seconds = time.perf_counter() - start
    path = RESULTS / "fedcollm.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results = results if "chunks" in results else {"chunks": {}}
    results["protocol"] = {
        "config": str(args.config.relative_to(REPO)),
        "split": config.data.split,
        "rounds": config.fedcollm.rounds,
        "margin_points": 100 * config.eval.margin,
        "budget": "2 CPU cores, no GPU (the device tool was not lent to this task)",
        "undecidable": UNDECIDABLE,
    }
    results["chunks"][args.chunk] = {
        "task": chunk.task,
        "rows_per_client": chunk.rows_per_client,
        "eval_rows": run["tasks"][chunk.task]["rows"]["eval"],
        "table": _table(run)[chunk.task],
        "claims": run["tasks"][chunk.task]["comparisons"],
        "wall_seconds_this_call": round(seconds, 1),
        "compute_seconds": round(
            sum(o["seconds"] for o in run["tasks"][chunk.task]["baselines"].values()), 1
        ),
        "run": run,
    }
    write_json(path, results)
    _plot(
        {name: entry["table"] for name, entry in results["chunks"].items()},
        RESULTS / "fedcollm.png",
    )
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
    targets: dict[str, dict[str, Any]] = {}
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
            role: {
                name: percent_cell(outcome[role]) for name, outcome in entry["baselines"].items()
            }
            for role in ("llm", "slm")
        }
        for task, entry in run["tasks"].items()
    }


def _plot(table: dict[str, dict[str, dict[str, Cell]]], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.2 * len(table), 4.2), layout="constrained")
    axes = figure.subplots(1, len(table), squeeze=False, sharey=True)[0]
    for ax, (name, roles) in zip(axes, table.items(), strict=True):
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
        ax.set_title(name)
    axes[0].set_ylabel("validation accuracy (%), ±1 s.e.")
    figure.savefig(path, dpi=120)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "fedcollm-bench.toml")
    parser.add_argument("--chunk", choices=sorted(CHUNKS), default="ag_news@50")
    parser.add_argument("--resume", action="store_true", help="continue the chunk's run")
    parser.add_argument(
        "--collect",
        action="store_true",
        help="only record the methods the chunk's run has finished (a run that was stopped)",
    )
    parser.add_argument(
        "--adapter-bytes",
        action="store_true",
        help="only count the bytes a round sends per LoRA target choice (no training)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    main()
