"""How much of a trained LoRA adapter's effect survives scoring in bf16, and at what speed.

SmolLM2-135M (embedded, bf16 on this CPU) gets a LoRA adapter (default LoraSettings, seeded),
trained with `train_answer_only` for a few dozen steps at FedCoLLM's LLM lr (3e-5) on AG News
train rows. The first AG News validation rows are then scored (summed choice log-likelihoods,
`fedkt.evaluation.score_choices`) by:

- ``base``: the model without the adapter (bf16); ``base_fp32`` is its fp32 twin;
- ``merged_bf16``: `fedkt.models.merged_copy` (``W + BA`` rounded to bf16);
- ``peft_fp32``: the PeftModel as trained (adapter fp32, peft's default);
- ``peft_bf16``: a copy of it with the adapter cast to bf16;
- ``scoring_copy``: `fedkt.models.scoring_copy` (one fused matmul per layer);
- ``reference_fp32``: an fp32 copy of the whole model, merged in fp32 (exact).

Per method: accuracy (with its standard error), predictions that differ from the reference,
|log-likelihood| differences to the reference, the share of the adapter's effect retained
(least-squares slope of the method's log-likelihood change vs ``base`` on the reference's
change vs ``base_fp32``), the median of the same share per adapted layer output on real
activations (no bf16 noise downstream: it isolates what each method drops), and the scoring
wall time.

Writes bench/results/lora_scoring.json and bench/results/lora_scoring.png.

    .venv/bin/python bench/lora_scoring.py                      # ~6 min on 2 idle CPU cores
    .venv/bin/python bench/lora_scoring.py --rows 48 --steps 12   # ~1.5 min
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from peft import PeftModel
from peft.tuners.lora import Linear as LoraLinear
from torch import nn

from fedkt.data import load_examples
from fedkt.evaluation import CausalLM, score_choices
from fedkt.models import LoraSettings, add_lora, load_model_and_tokenizer, merged_copy, scoring_copy
from fedkt.report import write_json
from fedkt.training import TrainSettings, train_answer_only

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MODEL = "smollm2-135m"
LR = 3e-5  # FedCoLLM's LLM learning rate
PEFT_PREFIX = "base_model.model."


def main() -> None:
    args = _args()
    torch.set_num_threads(args.threads)
    data_dir = os.environ.get("FEDKT_DATA_DIR", str(REPO.parent / "shared" / "data"))
    start = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(MODEL)
    train = load_examples("ag_news", "train", data_dir, limit=args.steps * args.batch_size)
    val = load_examples("ag_news", "validation", data_dir, limit=args.rows)

    scores: dict[str, list[list[float]]] = {}
    seconds: dict[str, float] = {}

    def run(name: str, scored: CausalLM) -> None:
        began = time.perf_counter()
        scores[name] = score_choices(scored, tokenizer, val, batch_size=args.eval_batch)
        seconds[name] = time.perf_counter() - began
        print(f"{name}: {seconds[name]:.1f} s", flush=True)

    run("base", model)
    run("base_fp32", copy.deepcopy(model).float())

    torch.manual_seed(args.seed)
    peft = add_lora(model, LoraSettings())
    settings = TrainSettings(
        lr=LR, max_steps=args.steps, batch_size=args.batch_size, seed=args.seed
    )
    report = train_answer_only(peft, tokenizer, train, settings, progress=False)
    print(f"trained {report.steps} steps in {report.seconds:.0f} s", flush=True)
    b_entries = torch.cat(
        [p.detach().float().flatten() for n, p in peft.named_parameters() if "lora_B" in n]
    )

    inputs = _layer_inputs(peft, tokenizer, [example.context for example in val[:8]])
    makers: dict[str, Callable[[PeftModel], CausalLM]] = {
        "merged_bf16": merged_copy,
        "peft_fp32": lambda m: m,
        "peft_bf16": _adapter_cast_copy,
        "scoring_copy": scoring_copy,
        "reference_fp32": lambda m: copy.deepcopy(m).float().merge_and_unload(),
    }
    layer_retained: dict[str, float] = {}
    copy_seconds: dict[str, float] = {}
    for name, make in makers.items():
        began = time.perf_counter()
        scored = make(peft)
        copy_seconds[name] = time.perf_counter() - began
        if name != "reference_fp32":
            layer_retained[name] = _layer_retained(peft, scored, inputs)
        run(name, scored)
        del scored

    methods = ["base", *makers]
    table = {name: _row(name, scores, seconds, val) for name in methods}
    for name in makers:
        table[name]["copy_seconds"] = round(copy_seconds[name], 2)
        table[name]["layer_effect_retained"] = (
            1.0 if name == "reference_fp32" else round(layer_retained[name], 4)
        )
    table["base"]["layer_effect_retained"] = 0.0
    bf16_noise = np.abs(_flat(scores["base"]) - _flat(scores["base_fp32"]))
    results = {
        "protocol": {
            "model": f"{MODEL} (bf16, CPU)",
            "lora": "default LoraSettings (r=8, alpha=16, dropout 0.05, all-linear)",
            "train": {
                "task": "ag_news train",
                "rows": len(train),
                "steps": report.steps,
                "lr": LR,
                "batch_size": args.batch_size,
                "seed": args.seed,
                "seconds": round(report.seconds, 1),
                "first_last_loss": [report.losses[0], report.losses[-1]],
            },
            "eval": {"task": "ag_news validation", "rows": len(val), "batch_size": args.eval_batch},
            "threads": args.threads,
            "effect_retained": "least-squares slope of (method - base) on (reference_fp32 - "
            "base_fp32) over all (example, choice) log-likelihoods; 1 = the whole effect",
            "layer_effect_retained": "median over the 210 adapted layers of the same slope for "
            "the layer's output change on the bf16 inputs of 8 validation contexts, against "
            "fp32 x @ (s B A)^T",
            "budget": "2 CPU cores shared with other jobs: wall times are indicative",
        },
        "lora_b_std": float(b_entries.std()),
        "lora_b_abs_max": float(b_entries.abs().max()),
        "adapter_effect_rms_reference": _rms(
            _flat(scores["reference_fp32"]) - _flat(scores["base_fp32"])
        ),
        "bf16_vs_fp32_base_loglik_abs_diff": {
            "mean": float(bf16_noise.mean()),
            "max": float(bf16_noise.max()),
        },
        "table": table,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    write_json(RESULTS / "lora_scoring.json", results)
    _plot(table, RESULTS / "lora_scoring.png")
    for name, row in table.items():
        print(name, row)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200, help="AG News validation rows scored")
    parser.add_argument("--steps", type=int, default=36, help="optimizer steps of training")
    parser.add_argument("--batch-size", type=int, default=4, help="training batch size")
    parser.add_argument("--eval-batch", type=int, default=16, help="scoring batch (choices)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def _adapter_cast_copy(model: PeftModel) -> PeftModel:
    """A copy with the adapter in the base dtype: peft then runs the LoRA branch in bf16."""
    out = copy.deepcopy(model)
    dtype = next(out.get_base_model().parameters()).dtype
    for name, param in out.named_parameters():
        if "lora_" in name:
            param.data = param.data.to(dtype)
    return out


def _layer_inputs(model: PeftModel, tokenizer: Any, texts: list[str]) -> dict[str, torch.Tensor]:
    """The (bf16) input of every LoRA layer, keyed by its name without the peft prefix."""
    inputs: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            key = name.removeprefix(PEFT_PREFIX)

            def keep(_: nn.Module, args: tuple[torch.Tensor, ...], key: str = key) -> None:
                inputs[key] = args[0].detach().clone()

            hooks.append(module.register_forward_pre_hook(keep))
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        model.eval()(**batch)
    for hook in hooks:
        hook.remove()
    return inputs


@torch.no_grad()
def _layer_retained(peft: PeftModel, scored: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """Median over adapted layers of the slope of the layer's output change (vs its bf16 base
    layer) on the fp32 exact change (median: a few layers' changes sit on a handful of
    massive activations and give noisy slopes)."""
    inner = scored.get_base_model() if isinstance(scored, PeftModel) else scored
    slopes = []
    for key, x in inputs.items():
        lora = peft.get_base_model().get_submodule(key)
        assert isinstance(lora, LoraLinear)
        base = lora.get_base_layer()
        delta = lora.get_delta_weight("default").float()  # s B A
        exact = torch.nn.functional.linear(x.float(), delta)
        change = inner.get_submodule(key)(x).float() - base(x).float()
        slopes.append(float((change * exact).sum() / (exact * exact).sum()))
    return float(np.median(slopes))


def _flat(scores: list[list[float]]) -> np.ndarray:
    return np.asarray([s for row in scores for s in row], dtype=np.float64)


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(values * values)))


def _row(
    name: str, scores: dict[str, list[list[float]]], seconds: dict[str, float], val: list[Any]
) -> dict[str, Any]:
    preds = [int(np.argmax(s)) for s in scores[name]]
    ref_preds = [int(np.argmax(s)) for s in scores["reference_fp32"]]
    n = len(preds)
    acc = sum(p == e.gold for p, e in zip(preds, val, strict=True)) / n
    diff = np.abs(_flat(scores[name]) - _flat(scores["reference_fp32"]))
    effect = _flat(scores["reference_fp32"]) - _flat(scores["base_fp32"])
    change = _flat(scores[name]) - _flat(scores["base"])
    if name == "reference_fp32":
        change = effect
    return {
        "accuracy": round(acc, 4),
        "accuracy_stderr": round(math.sqrt(acc * (1 - acc) / (n - 1)), 4),
        "n": n,
        "predictions_differing_from_reference": sum(
            p != r for p, r in zip(preds, ref_preds, strict=True)
        ),
        "loglik_abs_diff_vs_reference_mean": float(diff.mean()),
        "loglik_abs_diff_vs_reference_max": float(diff.max()),
        "effect_retained": round(float(change @ effect / (effect @ effect)), 4),
        "score_seconds": round(seconds[name], 1),
    }


def _plot(table: dict[str, dict[str, Any]], path: Path) -> None:
    names = list(table)
    fig = Figure(figsize=(10, 4), constrained_layout=True)
    ax_effect, ax_time = fig.subplots(1, 2)
    x = np.arange(len(names))
    ax_effect.bar(x - 0.2, [table[n]["effect_retained"] for n in names], 0.4, label="model")
    ax_effect.bar(
        x + 0.2, [table[n]["layer_effect_retained"] for n in names], 0.4, label="per layer"
    )
    ax_effect.axhline(1.0, color="black", linewidth=0.8)
    ax_effect.set_title("share of the adapter's effect kept (1 = fp32 reference)")
    ax_time.bar(x, [table[n]["score_seconds"] for n in names], color="tab:gray")
    ax_time.set_title(f"scoring wall time, {table['base']['n']} AG News rows (s)")
    for ax in (ax_effect, ax_time):
        ax.set_xticks(x, names, rotation=30, ha="right")
    ax_effect.legend()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
