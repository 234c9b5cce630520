"""The clients' LoRA learning rate for bench/fedcollm.py's AG News chunks and the quickstart,
picked on the dev split (200 rows carved from train, never a client's or the public part).

For each (rows per client, lr) point: the standalone clients of configs/quickstart.toml's
setting (4 clients, 2 rounds of 1 epoch, the healed 8-layer student) trained on that many rows
each and scored on the dev rows (per-row mean over the clients), beside the zero-shot models.
Standalone is the cheapest method whose training is exactly the clients' (FedAvg and FedCoLLM
run the same local step). Writes bench/results/fedcollm_dev_lr.json (merged across calls).

    .venv/bin/python bench/fedcollm_dev_lr.py 50:3e-4 50:1e-3 50:3e-3   # ~6 min on 2 idle cores
    .venv/bin/python bench/fedcollm_dev_lr.py 250:1e-3 250:3e-3         # ~10 min

Run one at a time: two torch processes on two cores slow each other down ~10x.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from fedkt.config import load_config, with_overrides
from fedkt.experiments import run_experiment
from fedkt.experiments.summary import percent_cell
from fedkt.report import write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "fedcollm_dev_lr.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("points", nargs="+", help="ROWS_PER_CLIENT:LR, e.g. 50:1e-3")
    parser.add_argument("--output-dir", default="runs/fedcollm-dev-lr")
    args = parser.parse_args()
    points, output = [_point(text) for text in args.points], args.output_dir
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"points": {}}
    results["protocol"] = {
        "config": "configs/quickstart.toml",
        "split": "dev (200 rows carved from train, seed data.dev_seed)",
        "method": "standalone: the mean client SLM after the federation's local schedule",
        "budget": "2 CPU cores, no GPU",
    }
    results["zero_shot"] = _score("zero_shot", 50, 1e-3, output)
    for rows, lr in points:
        results["points"][f"{rows}:{lr:g}"] = _score("standalone", rows, lr, output)
        write_json(RESULTS, results)
    for name, point in sorted(results["points"].items()):
        slm = point["slm"]
        print(f"{name:>10}: standalone SLM {slm['acc']:.1f} ± {slm['stderr']:.1f} (n={slm['n']})")


def _point(text: str) -> tuple[int, float]:
    rows, lr = text.split(":")
    return int(rows), float(lr)


def _score(method: str, rows: int, lr: float, output: str) -> dict[str, Any]:
    base = load_config(REPO / "configs" / "quickstart.toml")
    config = with_overrides(
        base,
        output_dir=f"{output}/{method}-{rows}-{lr:g}",
        data=with_overrides(base.data, split="dev", limit=0, train_limit=5 * rows),
        train=with_overrides(base.train, lr=lr),
        federation=with_overrides(base.federation, baselines=(method,), eval_every_round=False),
    )
    start = time.perf_counter()
    entry = run_experiment(config)["tasks"]["ag_news"]["baselines"][method]
    scores = {role: percent_cell(entry[role]) for role in ("llm", "slm") if entry.get(role)}
    return scores | {"rows_per_client": rows, "lr": lr, "seconds": time.perf_counter() - start}


if __name__ == "__main__":
    main()
