"""Which DP-SGD setup fits FDKT's client generator: LoRA or full weights, opacus hooks or ghost.

The embedded 8-layer SmolLM2 student (healed if `fedkt make-student` cached it, else the plain
cut) is trained with `fedkt.training.train_generator_dp` on the first AG News train rows,
formatted ``"Topic: World | Text: ..."`` + EOS, at most `--max-length` tokens, expected Poisson
batch `--batch`, one epoch, eps 3, delta 1e-5, fp32 on CPU. Each setup runs in its own process
so its peak RSS (``ru_maxrss``) is its own; the table gives seconds per step, the projected
time of one epoch over 1000 rows at the same expected batch (125 steps), peak RSS and the loss.

Writes bench/results/dp_generator.json.

    .venv/bin/python bench/dp_generator.py            # ~5 min on 2 shared CPU cores
    .venv/bin/python bench/dp_generator.py --setups lora-hooks lora-ghost
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MODELS = ("smollm2-135m@layers=8,healed=true", "smollm2-135m@layers=8")
AG_NEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")
SETUPS = ("lora-hooks", "lora-ghost", "full-hooks", "full-ghost")
ROWS_PER_CLIENT = 1000  # what the projection assumes (the reference's 1000 rows per star)


def main() -> None:
    args = _args()
    if args.one:
        _run_one(args)
        return
    rows: dict[str, Any] = {}
    for setup in args.setups:
        began = time.perf_counter()
        out = subprocess.run(
            [sys.executable, __file__, "--one", setup, *_forward(args)],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
            rows[setup] = {"feasible": False, "error": " | ".join(tail)[-400:]}
        else:
            rows[setup] = {"feasible": True, **json.loads(out.stdout.strip().splitlines()[-1])}
        print(f"{setup}: {time.perf_counter() - began:.0f} s  {rows[setup]}", flush=True)
    from fedkt.report import format_table, write_json

    header = ["setup", "trainable", "s/step", f"1 epoch x {ROWS_PER_CLIENT} rows", "peak RSS"]
    table = [
        [
            name,
            f"{r['trainable_params'] / 1e6:.2f} M" if r["feasible"] else "-",
            f"{r['seconds_per_step']:.2f}" if r["feasible"] else "fails",
            f"{r['projected_epoch_minutes']:.1f} min" if r["feasible"] else "-",
            f"{r['peak_rss_gib']:.2f} GiB" if r["feasible"] else "-",
        ]
        for name, r in rows.items()
    ]
    print(format_table(header, table))
    write_json(
        RESULTS / "dp_generator.json",
        {
            "protocol": {
                "rows": args.rows,
                "max_length": args.max_length,
                "expected_batch": args.batch,
                "epochs": 1,
                "target": {"epsilon": 3.0, "delta": 1e-5},
                "lora": "r=8, alpha=16, dropout 0, all-linear (fedkt LoraSettings)",
                "dtype": "float32",
                "threads": args.threads,
                "projection": f"seconds_per_step * round({ROWS_PER_CLIENT} / expected_batch)",
                "budget": "2 CPU cores shared with other jobs: wall times are indicative",
                "standard_error": "not applicable: timings and memory of one run per setup, "
                "no accuracy; the loss columns are single runs",
            },
            "setups": rows,
        },
    )


def _run_one(args: argparse.Namespace) -> None:
    """Train one setup and print its row as one JSON line."""
    from fedkt.data import load_rows
    from fedkt.data.synthetic import format_sample, label_prefix
    from fedkt.errors import ModelError
    from fedkt.models import LoraSettings, add_lora, load_model_and_tokenizer
    from fedkt.training import DPSettings, train_generator_dp

    torch.set_num_threads(args.threads)
    for name in MODELS:
        try:
            model, tokenizer = load_model_and_tokenizer(name, dtype=torch.float32, device="cpu")
            break
        except ModelError:
            continue
    else:
        raise SystemExit(f"none of {MODELS} loads")
    lora, mode = args.one.split("-")
    if lora == "lora":
        torch.manual_seed(0)
        model = add_lora(model, LoraSettings(dropout=0.0))
    if (
        mode == "ghost"
        and model.get_input_embeddings().weight is model.get_output_embeddings().weight
    ):
        raise SystemExit("ghost clipping cannot train tied embeddings")
    data_dir = os.environ.get("FEDKT_DATA_DIR", str(REPO.parent / "shared" / "data"))
    rows = load_rows("ag_news", "train", data_dir)[: args.rows]
    texts = [
        format_sample(label_prefix(AG_NEWS_LABELS[r["label"]], "Topic"), r["text"]) for r in rows
    ]
    settings = DPSettings(
        target_epsilon=3.0,
        delta=1e-5,
        batch_size=args.batch,
        max_length=args.max_length,
        grad_sample_mode=mode,
    )
    loaded_rss = _rss_gib()
    report = train_generator_dp(
        model, tokenizer, texts, settings, generator=torch.Generator().manual_seed(0)
    )
    steps_per_epoch = round(ROWS_PER_CLIENT / args.batch)
    print(
        json.dumps(
            {
                "model": name,
                "trainable_params": report.trainable_params,
                "steps": report.steps,
                "batch_sizes": report.batch_sizes,
                "seconds": round(report.seconds, 1),
                "seconds_per_step": round(report.seconds_per_step, 2),
                "projected_epoch_minutes": round(report.seconds_per_step * steps_per_epoch / 60, 1),
                "loaded_rss_gib": round(loaded_rss, 2),
                "peak_rss_gib": round(_rss_gib(), 2),
                "noise_multiplier": round(report.noise_multiplier, 4),
                "epsilon": round(report.epsilon, 3),
                "first_last_loss": [round(report.losses[0], 3), round(report.losses[-1], 3)],
                "truncated_rows": report.truncated_rows,
            }
        )
    )


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _forward(args: argparse.Namespace) -> list[str]:
    return [
        f"--rows={args.rows}",
        f"--batch={args.batch}",
        f"--max-length={args.max_length}",
        f"--threads={args.threads}",
    ]


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", nargs="+", choices=SETUPS, default=list(SETUPS))
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", choices=SETUPS, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    main()
