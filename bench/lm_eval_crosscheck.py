"""Cross-check fedkt.evaluation against lm-evaluation-harness: same rows, same model object.

fedkt scores the validation split with `fedkt.evaluation`; lm-eval scores the same local JSONL
rows with its own ``HFLM`` wrapped around the very same model, using the task's own YAML from
the installed lm-eval (prompt, choices, target) with only the dataset source swapped for the
local file. The two must agree within 0.5 accuracy points; the script also reports the largest
per-choice log-likelihood difference and how many predictions differ.

    .venv/bin/python bench/lm_eval_crosscheck.py [--tasks arc_easy,openbookqa] [--limit N]

Results are merged into bench/results/lm_eval_crosscheck.json (one entry per task).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import lm_eval
import torch
import yaml
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedkt.data import Example, get_task, load_examples, resolve_data_dir
from fedkt.data.sources import local_path
from fedkt.evaluation import multiple_choice_metrics, predict_choices, score_choices
from fedkt.models import EMBEDDED, load_model_and_tokenizer

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "lm_eval_crosscheck.json"
TOLERANCE = 0.005  # 0.5 accuracy points
LM_EVAL_YAML = {  # fedkt task -> lm-eval's own task file (same prompt format as fedkt's)
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
}


def lm_eval_task_config(task: str, data_file: Path) -> dict[str, Any]:
    """lm-eval's task YAML for `task`, reading its validation rows from `data_file`."""
    path = Path(lm_eval.__file__).parent / "tasks" / LM_EVAL_YAML[task]
    config = yaml.safe_load(path.read_text())
    if "include" in config:  # arc_challenge.yaml is arc_easy.yaml with another dataset_name
        config = yaml.safe_load((path.parent / config.pop("include")).read_text()) | config
    config.pop("tag", None)
    return config | {
        "task": f"fedkt_check_{task}",
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"validation": str(data_file)}},
        "training_split": None,
        "validation_split": "validation",
        "test_split": None,
    }


def run_fedkt(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    batch_size: int,
) -> dict[str, Any]:
    """acc, acc_norm, seconds and per-choice scores from fedkt.evaluation."""
    start = time.perf_counter()
    scores = score_choices(model, tokenizer, examples, batch_size=batch_size, progress=True)
    metrics = multiple_choice_metrics(predict_choices(examples, scores))
    return metrics | {"seconds": time.perf_counter() - start, "scores": scores}


def run_lm_eval(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The same from lm-eval's own evaluator on the same model object."""
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size)
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=[config],
        task_manager=TaskManager(include_defaults=False),
        num_fewshot=0,
        limit=args.limit,
        bootstrap_iters=0,
        log_samples=True,
    )
    seconds = time.perf_counter() - start
    if out is None:  # simple_evaluate returns None only on non-zero ranks of a distributed run
        raise RuntimeError("lm_eval.simple_evaluate returned no results")
    name = config["task"]
    samples = sorted(out["samples"][name], key=lambda sample: sample["doc_id"])
    scores = [[float(ll) for ll, _ in sample["filtered_resps"]] for sample in samples]
    metrics = out["results"][name]
    return {
        "acc": metrics["acc,none"],
        "acc_norm": metrics["acc_norm,none"],
        "seconds": seconds,
        "scores": scores,
    }


def compare(
    task: str,
    examples: list[Example],
    fedkt: dict[str, Any],
    ref: dict[str, Any],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """The JSON entry for one task: both results, their differences, and the run's setting."""
    pairs = [
        (a, b)
        for fa, fb in zip(fedkt["scores"], ref["scores"], strict=True)
        for a, b in zip(fa, fb, strict=True)
    ]
    ours = predict_choices(examples, fedkt["scores"])
    theirs = predict_choices(examples, ref["scores"])
    diff = {key: abs(fedkt[key] - ref[key]) for key in ("acc", "acc_norm")}
    return {
        "n": len(examples),
        "fedkt": {key: fedkt[key] for key in ("acc", "acc_norm", "seconds")},
        "lm_eval": {key: ref[key] for key in ("acc", "acc_norm", "seconds")},
        "abs_diff": diff,
        "agree_within_0.5_points": all(value <= TOLERANCE for value in diff.values()),
        "max_abs_loglikelihood_diff": max(abs(a - b) for a, b in pairs),
        "predictions_differing": {
            "acc": sum(o.pred != t.pred for o, t in zip(ours, theirs, strict=True)),
            "acc_norm": sum(o.pred_norm != t.pred_norm for o, t in zip(ours, theirs, strict=True)),
        },
        "task": task,
        **meta,
    }


def machine() -> str:
    """CPU model name (Linux) and the torch thread count: enough to put the seconds in context."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if line.startswith("model name")
    ]
    cpu = names[0] if names else platform.processor() or platform.machine()
    return f"{cpu} ({len(names) or '?'} cores); torch threads {torch.get_num_threads()}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tasks", default="arc_easy,openbookqa", help="comma-separated: " + ", ".join(LM_EVAL_YAML)
    )
    parser.add_argument("--limit", type=int, default=None, help="first N validation rows (all)")
    parser.add_argument("--model", default=EMBEDDED)
    parser.add_argument("--dtype", default="float32", help="same on both sides; fp32 is exact")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--data-dir", default=None, help="$FEDKT_DATA_DIR, else ../shared/data")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = resolve_data_dir(args.data_dir) or REPO.parent / "shared" / "data"
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype, device="cpu")
    meta = {
        "model": args.model,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "machine": machine(),
        "versions": {pkg: version(pkg) for pkg in ("lm_eval", "torch", "transformers")},
    }
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for task in args.tasks.split(","):
        examples = load_examples(task, "validation", data_dir, limit=args.limit)
        config = lm_eval_task_config(task, local_path(get_task(task), "validation", data_dir))
        fedkt = run_fedkt(model, tokenizer, examples, args.batch_size)
        ref = run_lm_eval(model, tokenizer, config, args)
        results[task] = compare(task, examples, fedkt, ref, meta)
        print(json.dumps(results[task], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(entry["agree_within_0.5_points"] for entry in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
