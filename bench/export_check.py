"""Exports of a real run load in transformers and lm-eval and reproduce the run's predictions.

Exports the quickstart's FedCoLLM SLM and LLM (`fedkt export`, fp32 merge), loads each folder
with ``AutoModelForCausalLM.from_pretrained``, scores the run's evaluation rows with fedkt and
compares every prediction with the run's own per-row predictions file; the run scored in bf16
through `scoring_copy`, so the fp32 export is also loaded in bf16 and scored the same way for
comparison. Finally lm-evaluation-harness's ``hf`` model loads each folder and scores one
request. Writes bench/results/export.json.

    .venv/bin/python bench/export_check.py            # after `make quickstart`; ~3 min
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedkt.config import load_config
from fedkt.evaluation import evaluate_rows, mean_stderr
from fedkt.experiments.harness import TaskData
from fedkt.export import export_model
from fedkt.report import read_jsonl, write_json

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    args = _args()
    config = load_config(args.config)
    task = config.data.tasks[0]
    examples = TaskData.load(config, task).evaluation
    run_dir = Path(config.output_dir) / task / args.method
    results: dict[str, Any] = {"run": str(run_dir), "rows": len(examples), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for which in ("slm", "llm"):
            out = Path(tmp) / which
            exported = export_model(run_dir, which, out)
            reported = read_jsonl(
                Path(config.output_dir) / "predictions" / task / args.method / f"{which}.jsonl"
            )
            entry: dict[str, Any] = {
                "export_seconds": round(exported.seconds, 1),
                "size_mb": round(exported.size_bytes / 2**20, 1),
            }
            for dtype in (torch.float32, torch.bfloat16):
                entry[str(dtype).removeprefix("torch.")] = _agreement(
                    out, dtype, examples, reported
                )
            entry["lm_eval_loglikelihood"] = _lm_eval(out)
            results["models"][which] = entry
            print(which, entry, flush=True)
            shutil.rmtree(out)
    write_json(REPO / "bench" / "results" / "export.json", results)


def _agreement(
    folder: Path, dtype: torch.dtype, examples: list[Any], reported: list[dict[str, Any]]
) -> dict[str, Any]:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    start = time.perf_counter()
    rows = evaluate_rows(model, tokenizer, examples, batch_size=16).rows
    same = sum(a["pred"] == b["pred"] for a, b in zip(rows, reported, strict=True))
    acc, stderr = mean_stderr([r["correct"] for r in rows])
    return {
        "acc": acc,
        "acc_stderr": stderr,
        "reported_acc": sum(r["correct"] for r in reported) / len(reported),
        "same_predictions": same,
        "rows": len(rows),
        "score_seconds": round(time.perf_counter() - start, 1),
    }


def _lm_eval(folder: Path) -> float:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(folder), device="cpu", batch_size=1)
    request = Instance("loglikelihood", {}, ("Title: Stocks rally\nTopic:", " Business"), 0)
    ((loglikelihood, _),) = lm.loglikelihood([request])
    return round(float(loglikelihood), 4)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "quickstart.toml")
    parser.add_argument("--method", default="fedcollm")
    return parser.parse_args()


if __name__ == "__main__":
    main()
