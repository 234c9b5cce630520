"""Zero-shot and short standalone fine-tune of the embedded LLM and candidate students.

For every model and task: zero-shot accuracy on the validation split, then a short LoRA
fine-tune on the train split (a fresh copy of the model per task), then accuracy again, with wall
times and training tokens/s. Writes bench/results/zero_shot.json and zero_shot.png.

    .venv/bin/python bench/zero_shot.py                      # the default budget (~40 min, 2 CPUs)
    .venv/bin/python bench/zero_shot.py --eval-limit 100 --train-limit 128 --tasks ag_news
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fedkt.data import load_examples, resolve_data_dir
from fedkt.evaluation import evaluate
from fedkt.models import LoraSettings, add_lora, load_model_and_tokenizer
from fedkt.report import write_json
from fedkt.training import TrainSettings, train_answer_only

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
TASKS = ["arc_easy", "arc_challenge", "openbookqa", "commonsense_qa", "ag_news"]
MODELS = ["smollm2-135m", "smollm2-135m@layers=8", "smollm2-135m@layers=8,healed=true"]


def main() -> None:
    args = _args()
    data_dir = resolve_data_dir(args.data_dir) or REPO.parent / "shared" / "data"
    settings = TrainSettings(lr=args.lr, epochs=1, batch_size=8, max_length=256, seed=0)
    lora = LoraSettings()
    results: dict[str, Any] = {
        "protocol": {
            "eval_split": "validation",
            "eval_limit": args.eval_limit,
            "train_limit": args.train_limit,
            "train": vars(settings) | {"betas": list(settings.betas)},
            "lora": vars(lora),
            "dtype": "auto (bf16 on this CPU)",
        },
        "models": {},
    }
    for name in args.models:
        results["models"][name] = {
            task: _one(name, task, data_dir, args, settings, lora) for task in args.tasks
        }
        write_json(RESULTS / "zero_shot.json", results)  # keep what is done if a later run dies
    _plot(results, RESULTS / "zero_shot.png")
    _print(results)


def _one(
    name: str,
    task: str,
    data_dir: Path,
    args: argparse.Namespace,
    settings: TrainSettings,
    lora: LoraSettings,
) -> dict[str, Any]:
    """Zero-shot, LoRA fine-tune, evaluate again: one model on one task."""
    valid = load_examples(task, "validation", data_dir, limit=args.eval_limit or None)
    train = load_examples(task, "train", data_dir, limit=args.train_limit or None)
    model, tokenizer = load_model_and_tokenizer(name)
    start = time.perf_counter()
    before = evaluate(model, tokenizer, valid, batch_size=16)
    eval_seconds = time.perf_counter() - start
    peft_model = add_lora(model, lora)
    report = train_answer_only(peft_model, tokenizer, train, settings, progress=True)
    after = evaluate(peft_model, tokenizer, valid, batch_size=16)
    print(f"{name} {task}: {before} -> {after} ({report.seconds:.0f}s train)", flush=True)
    return {
        "zero_shot": before,
        "finetuned": after,
        "eval_seconds": round(eval_seconds, 1),
        "eval_examples_per_s": round(len(valid) / eval_seconds, 2),
        "train_seconds": round(report.seconds, 1),
        "train_tokens_per_s": round(report.tokens_per_s, 1),
        "train_rows": len(train),
        "train_first_loss": report.first_loss,
        "train_last_loss": report.last_loss,
    }


def _plot(results: dict[str, Any], path: Path) -> None:
    models = list(results["models"])
    tasks = list(next(iter(results["models"].values())))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.6), sharey=True)
    for ax, task in zip(axes if len(tasks) > 1 else [axes], tasks, strict=True):
        zero = [100 * results["models"][m][task]["zero_shot"]["acc"] for m in models]
        tuned = [100 * results["models"][m][task]["finetuned"]["acc"] for m in models]
        xs = range(len(models))
        ax.bar([x - 0.2 for x in xs], zero, width=0.4, label="zero-shot")
        ax.bar([x + 0.2 for x in xs], tuned, width=0.4, label="LoRA fine-tuned")
        ax.set_xticks(list(xs), [_short(m) for m in models], rotation=20)
        ax.set_title(task)
    axes_list = axes if len(tasks) > 1 else [axes]
    axes_list[0].set_ylabel("validation acc (%)")
    axes_list[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _short(name: str) -> str:
    """'smollm2-135m@layers=8,healed=true' -> '8L healed' (axis labels must fit)."""
    if "@" not in name:
        return "LLM"
    options = dict(kv.split("=") for kv in name.split("@", 1)[1].split(","))
    return f"{options['layers']}L " + ("healed" if options.get("healed") == "true" else "cut")


def _print(results: dict[str, Any]) -> None:
    for name, per_task in results["models"].items():
        for task, r in per_task.items():
            print(
                f"{name:40s} {task:15s} acc {100 * r['zero_shot']['acc']:5.1f} -> "
                f"{100 * r['finetuned']['acc']:5.1f}  train {r['train_seconds']:6.0f}s "
                f"{r['train_tokens_per_s']:6.0f} tok/s"
            )


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--eval-limit", type=int, default=200, help="validation rows (0 = all)")
    parser.add_argument("--train-limit", type=int, default=256, help="train rows (0 = all)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--data-dir", default=None)
    return parser.parse_args()


if __name__ == "__main__":
    main()
