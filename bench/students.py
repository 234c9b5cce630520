"""Which client student to default to: a plain layer cut, the output-lens heal, lens + KD.

For each variant of the embedded model cut to K layers: preparation time, KL to the teacher on
held-out text (validation rows, never used for healing), zero-shot accuracy, and accuracy after a
short LoRA fine-tune on AG News (one client's budget). Writes bench/results/students.json.

    .venv/bin/python bench/students.py --layers 8 --kd-tokens 30000
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedkt.data import load_examples, resolve_data_dir
from fedkt.evaluation import evaluate_multiple_choice
from fedkt.models import LoraSettings, add_lora, keep_first_layers, load_model_and_tokenizer
from fedkt.report import write_json
from fedkt.students import HealSettings, distill, healing_texts, lens_student
from fedkt.training import TrainSettings, train_answer_only

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    args = _args()
    data_dir = resolve_data_dir(args.data_dir) or REPO.parent / "shared" / "data"
    teacher, tokenizer = load_model_and_tokenizer("smollm2-135m")
    texts = healing_texts(data_dir, seed=0)
    held_out = [
        "".join(e.training_pair())
        for task in ("arc_easy", "ag_news")
        for e in load_examples(task, "validation", data_dir, limit=32)
    ]
    evals = {
        task: load_examples(task, "validation", data_dir, limit=args.eval_limit)
        for task in ("ag_news", "arc_easy")
    }
    train = load_examples("ag_news", "train", data_dir, limit=args.train_limit)
    settings = HealSettings(
        layers=args.layers, lens_tokens=args.lens_tokens, kd_tokens=args.kd_tokens
    )
    results: dict[str, Any] = {"settings": vars(settings), "variants": {}}
    results["variants"]["teacher"] = {"kl_to_teacher": 0.0} | _accuracies(teacher, tokenizer, evals)
    for variant in ("plain", "lens", "lens+kd"):
        start = time.perf_counter()
        if variant == "plain":
            student = keep_first_layers(copy.deepcopy(teacher), args.layers)
        else:
            student = lens_student(teacher, tokenizer, texts, settings)
        if variant == "lens+kd":
            distill(teacher, student, tokenizer, texts[::-1], settings)
        entry: dict[str, Any] = {"prepare_seconds": round(time.perf_counter() - start, 1)}
        entry["kl_to_teacher"] = _kl(student, teacher, tokenizer, held_out)
        entry |= _accuracies(student, tokenizer, evals)
        tuned = add_lora(student, LoraSettings())
        report = train_answer_only(
            tuned, tokenizer, train, TrainSettings(lr=1e-3, batch_size=16, max_length=256)
        )
        entry["ag_news_after_lora"] = evaluate_multiple_choice(tuned, tokenizer, evals["ag_news"])
        entry["lora"] = {
            "rows": len(train),
            "seconds": round(report.seconds, 1),
            "first_loss": report.first_loss,
            "last_loss": report.last_loss,
        }
        results["variants"][variant] = entry
        print(variant, entry, flush=True)
        write_json(REPO / "bench" / "results" / "students.json", results)


def _accuracies(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, evals: dict[str, Any]
) -> dict[str, Any]:
    return {
        f"{task}_zero_shot": evaluate_multiple_choice(model, tokenizer, examples)
        for task, examples in evals.items()
    }


@torch.inference_mode()
def _kl(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
) -> float:
    """Mean per-token KL(teacher || student) in nats over `texts`."""
    total, count = 0.0, 0
    for first in range(0, len(texts), 16):
        batch = tokenizer(texts[first : first + 16], return_tensors="pt", padding=True)
        target = F.log_softmax(teacher(**batch).logits.float(), -1)
        guess = F.log_softmax(student(**batch).logits.float(), -1)
        kl = F.kl_div(guess, target, log_target=True, reduction="none").sum(-1)
        mask = batch["attention_mask"].bool()
        total += float(kl[mask].sum())
        count += int(mask.sum())
    return round(total / count, 3)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--lens-tokens", type=int, default=40_000)
    parser.add_argument("--kd-tokens", type=int, default=30_000)
    parser.add_argument("--eval-limit", type=int, default=200)
    parser.add_argument("--train-limit", type=int, default=400)
    parser.add_argument("--data-dir", default=None)
    return parser.parse_args()


if __name__ == "__main__":
    main()
