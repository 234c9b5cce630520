"""The standalone jobs behind the CLI: zero-shot evaluation and a local fine-tune.

Both are the non-federated reference points every algorithm is compared with (zero-shot,
standalone, centralized), so they take the same `FedktConfig` and write the same
``results.json`` shape as the federated runs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedkt.config import FedktConfig
from fedkt.data import Example, load_examples, resolve_data_dir
from fedkt.evaluation import CausalLM, evaluate
from fedkt.models import add_lora, load_model_and_tokenizer, scoring_copy
from fedkt.report import write_json
from fedkt.training import train_answer_only


def placement(config: FedktConfig) -> tuple[str | None, str | None]:
    """(dtype, device) for fedkt.models: the config's "auto" becomes None ("let it pick")."""
    model = config.model
    return (
        None if model.dtype == "auto" else model.dtype,
        None if model.device == "auto" else model.device,
    )


def load_for(config: FedktConfig, name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model `name` with the config's dtype, device and cache settings."""
    return load_model_and_tokenizer(
        name,
        dtype=placement(config)[0],
        device=placement(config)[1],
        cache_dir=config.cache_dir or None,
    )


def task_examples(config: FedktConfig, task: str, split: str, limit: int) -> list[Example]:
    """Rows of one task split as examples: a custom task of the config's [tasks] from its own
    files, else a built-in one honouring the data directory setting."""
    data_dir = resolve_data_dir(config.data.dir or None)
    return load_examples(config.task_spec(task), split, data_dir, limit=limit or None)


def eval_sets(config: FedktConfig, tasks: Sequence[str]) -> dict[str, list[Example]]:
    """The evaluation rows of each task (its own split: ``data.splits``, else ``data.split``),
    read once and reused for every model and checkpoint."""
    data = config.data
    return {task: task_examples(config, task, data.split_for(task), data.limit) for task in tasks}


def score(
    config: FedktConfig,
    model: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
) -> dict[str, float]:
    """The task's metrics (each with its standard error) for one loaded model, plus the wall
    time they took; a LoRA model is scored exactly through `scoring_copy`."""
    start = time.perf_counter()
    scores = evaluate(
        scoring_copy(model) if isinstance(model, PeftModel) else model,
        tokenizer,
        examples,
        batch_size=config.eval.batch_size,
        max_new_tokens=config.eval.max_new_tokens,
        progress=True,
    )
    return {**scores, "seconds": round(time.perf_counter() - start, 2)}


def run_eval(config: FedktConfig) -> dict[str, Any]:
    """Zero-shot evaluation of each model in ``eval.models`` on each task in ``data.tasks``."""
    sets = eval_sets(config, config.data.tasks)
    results: dict[str, Any] = {
        "job": "eval",
        "split": config.data.split,
        "splits": config.data.evaluation_splits,
        "models": {},
    }
    for name in config.eval.models or (config.model.name,):
        model, tokenizer = load_for(config, name)
        results["models"][name] = {
            task: score(config, model, tokenizer, examples) for task, examples in sets.items()
        }
        del model
    write_json(Path(config.output_dir) / "results.json", results)
    return results


def run_finetune(config: FedktConfig) -> dict[str, Any]:
    """Fine-tune ``model.name`` on the train split of each task, evaluating before and after.

    Each task gets a fresh copy of the model, so tasks do not leak into each other; with
    ``finetune.method = "lora"`` only the adapter is trained and saved.
    """
    results: dict[str, Any] = {
        "job": "finetune",
        "model": config.model.name,
        "method": config.finetune.method,
        "split": config.data.split,
        "splits": config.data.evaluation_splits,
        "tasks": {},
    }
    for task, examples in eval_sets(config, config.data.tasks).items():
        model, tokenizer = load_for(config, config.model.name)
        before = score(config, model, tokenizer, examples)
        trained = add_lora(model, config.lora) if config.finetune.method == "lora" else model
        train = task_examples(config, task, "train", config.data.train_limit)
        report = train_answer_only(trained, tokenizer, train, config.train, progress=True)
        after = score(config, trained, tokenizer, examples)
        out_dir = Path(config.output_dir) / task
        trained.save_pretrained(str(out_dir / "model"))
        results["tasks"][task] = {
            "before": before,
            "after": after,
            "train": dataclasses.asdict(report),
            "train_rows": len(train),
            "saved": str(out_dir / "model"),
        }
        del model, trained
    write_json(Path(config.output_dir) / "results.json", results)
    return results
