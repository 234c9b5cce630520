"""What every `fedkt run` shares, whatever the algorithm.

- the task's rows: a dev split carved first from the train rows (for tuning), then the
  clients' private parts and the server's public part, and the evaluation rows;
- a `Scoreboard`: every model of every method scored on the same evaluation rows, each row's
  prediction written under ``<output_dir>/predictions/<task>/<method>/``, every score with
  its row count and standard error, and paired tests between methods on those rows;
- the loop over tasks and methods that writes results.json after each method, so an
  interrupted run keeps what it finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import operator
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import numpy as np
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

import fedkt
from fedkt import console
from fedkt.config import FederationConfig, FedktConfig
from fedkt.data import Example, split_dev, split_dirichlet, split_fedcollm, split_iid
from fedkt.errors import ConfigError, DataError
from fedkt.evaluation import CausalLM, evaluate_rows, mean_stderr, paired_test
from fedkt.experiments.summary import mean_scores
from fedkt.jobs import load_for, placement, task_examples
from fedkt.models import scoring_copy
from fedkt.report import (
    format_table,
    read_json,
    read_jsonl,
    to_strict_json,
    write_json,
    write_jsonl,
)

_LOG = logging.getLogger(__name__)

Role = Literal["llm", "slm"]
Scores = dict[str, float]
Rows = list[dict[str, Any]]
Outcome = dict[str, Any]

DEV_SPLIT = "dev"
"""``data.split = "dev"`` scores on the dev rows carved from train (for tuning)."""

_METRIC_COLUMNS = {"acc": "correct", "acc_norm": "correct_norm", "exact_match": "correct"}
"""Each metric and the per-row column it is the mean of."""


# ---- the rows -----------------------------------------------------------------------------


def partition(
    examples: Sequence[Example], federation: FederationConfig
) -> tuple[list[list[Example]], list[Example]]:
    """(client parts, public part). The public part is always FedCoLLM's: one of K + 1 equal
    random parts; ``iid``/``dirichlet`` re-split the other K parts' rows among the clients
    (``dirichlet`` skews the gold answer, i.e. the label of a classification task)."""
    k, seed = federation.clients, federation.seed
    parts, public = split_fedcollm(examples, n_parts=k + 1, seed=seed)
    pool = [example for part in parts for example in part]
    splits: dict[str, Callable[[], list[list[Example]]]] = {
        "fedcollm": lambda: parts,
        "iid": lambda: split_iid(pool, k, seed),
        "dirichlet": lambda: split_dirichlet(
            pool, k, federation.alpha, operator.attrgetter("gold"), seed
        ),
    }
    return splits[federation.partition](), public


@dataclass(frozen=True)
class TaskData:
    """One task's rows: dev (tuning), the clients' parts, the public part, evaluation, and
    the split the evaluation rows come from (``data.split_for(task)``)."""

    task: str
    dev: list[Example]
    clients: list[list[Example]]
    public: list[Example]
    evaluation: list[Example]
    split: str

    @classmethod
    def load(cls, config: FedktConfig, task: str) -> TaskData:
        """Carve ``data.dev_rows`` dev rows from the whole train split (seeded), take the
        first ``data.train_limit`` of the rest and split them; evaluate on the task's split
        (``data.splits``, else ``data.split``; ``dev``: the dev rows), its first
        ``data.limit`` rows."""
        data = config.data
        train = task_examples(config, task, "train", 0)
        dev, rest = split_dev(train, data.dev_rows, data.dev_seed)
        clients, public = partition(rest[: data.train_limit or None], config.federation)
        split = data.split_for(task)
        if split == DEV_SPLIT:
            evaluation = dev[: data.limit or None]
        else:
            evaluation = evaluation_rows(config, task)
        return cls(task, dev, clients, public, evaluation, split)

    def row_counts(self) -> dict[str, Any]:
        return {
            "clients": [len(part) for part in self.clients],
            "public": len(self.public),
            "dev": len(self.dev),
            "eval": len(self.evaluation),
        }


def evaluation_rows(config: FedktConfig, task: str) -> list[Example]:
    """The first ``data.limit`` rows of ``task``'s evaluation split. A split chosen in
    ``data.splits`` that cannot be read (the task has no such split here) is a config error
    naming that key: the fix is in the config, not in the data."""
    split = config.data.split_for(task)
    try:
        return task_examples(config, task, split, config.data.limit)
    except DataError as err:
        if task not in config.data.splits:
            raise
        raise ConfigError(
            f"data.splits.{task} = {split!r}: task {task} cannot be evaluated on that split ({err})"
        ) from err


# ---- scores, predictions and paired tests -------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A comparison of two methods' ``role`` model on the same rows.

    ``non_inferior`` claims that ``a`` is at most the margin below ``b`` (e.g. "the LLM after
    FedCoLLM keeps centralized accuracy"); otherwise that ``a`` beats ``b``.
    """

    role: Role
    a: str
    b: str
    non_inferior: bool = False

    def text(self, margin: float) -> str:
        who = f"{self.role.upper()} {self.a}"
        if self.non_inferior:
            return f"{who} >= {self.b} - {100 * margin:g} pt"
        return f"{who} > {self.b}"


@dataclass
class Scoreboard:
    """Scores models on one task's evaluation rows and keeps every method's per-row results.

    A method's rows are kept by (label, role, client); client None is the method's own
    model, or the per-row mean over its clients (`mean_of_clients`). ``finished`` holds the
    outcome of every method done so far, by label (the harness keeps it; a method that runs
    several points skips those already there after ``--resume``).
    """

    config: FedktConfig
    task: str
    examples: Sequence[Example]
    rows: dict[tuple[str, str, int | None], Rows] = field(default_factory=dict)
    finished: dict[str, Outcome] = field(default_factory=dict)

    def score(
        self,
        model: CausalLM,
        tokenizer: PreTrainedTokenizerBase,
        label: str,
        role: Role,
        client: int | None = None,
    ) -> Scores:
        """Score ``model`` (a LoRA model exactly, through `scoring_copy`) and keep its rows."""
        start = time.perf_counter()
        scored = scoring_copy(model) if isinstance(model, PeftModel) else model
        result = evaluate_rows(
            scored,
            tokenizer,
            self.examples,
            batch_size=self.config.eval.batch_size,
            max_new_tokens=self.config.eval.max_new_tokens,
            progress=True,
        )
        self.add(label, role, result.rows, client)
        return {**result.scores, "seconds": round(time.perf_counter() - start, 2)}

    def add(
        self,
        label: str,
        role: Role,
        rows: Rows,
        client: int | None = None,
        *,
        write: bool = True,
    ) -> None:
        """Keep ``rows`` and write them to ``predictions/<task>/<label>/<role>[-client<k>]``
        (``write=False``: a client process wrote them there itself)."""
        ids = [example.id for example in self.examples]
        if [row["id"] for row in rows] != ids:
            raise ValueError(f"{label} {role}: rows do not follow the evaluation rows' order")
        self.rows[(label, role, client)] = rows
        if write:
            name = role if client is None else f"{role}-client{client}"
            write_jsonl(self.directory / label / f"{name}.jsonl", rows)

    def alias(self, label: str, role: Role, same_as: str) -> None:
        """``label``'s ``role`` model is ``same_as``'s (e.g. FedAvg's untouched LLM)."""
        self.add(label, role, self.rows[(same_as, role, None)])

    def restore(self, label: str) -> None:
        """Read back the rows ``label`` wrote (a method finished before ``--resume``)."""
        for path in sorted((self.directory / label).glob("*.jsonl")):
            role, _, client = path.stem.partition("-client")
            key = (label, role, int(client) if client else None)
            if key not in self.rows:
                self.rows[key] = read_jsonl(path)

    def mean_of_clients(self, label: str, role: Role, clients: int) -> Scores:
        """Per-row mean over the clients' models, and each metric's mean and standard error
        over those row means (every client scored the same rows)."""
        per_client = [self.rows[(label, role, k)] for k in range(clients)]
        rows = []
        for i, first in enumerate(per_client[0]):
            group = [client_rows[i] for client_rows in per_client]
            means = {c: float(np.mean([row[c] for row in group])) for c in _columns(first)}
            rows.append({"id": first["id"], **means})
        self.add(label, role, rows)
        return _metrics(rows)

    @property
    def directory(self) -> Path:
        return Path(self.config.output_dir) / "predictions" / self.task

    def compare(self, claims: Iterable[Claim]) -> list[dict[str, Any]]:
        """A paired test per claim whose two methods have been scored (others are skipped)."""
        margin = self.config.eval.margin
        out = []
        for claim in claims:
            a = self.rows.get((claim.a, claim.role, None))
            b = self.rows.get((claim.b, claim.role, None))
            if a is None or b is None:
                continue
            test = paired_test(_correct(a), _correct(b), margin=margin)
            superior = test["significant"] and test["diff"] > 0
            holds = test["non_inferior"] if claim.non_inferior else superior
            claim_fields = {"claim": claim.text(margin), **dataclasses.asdict(claim)}
            out.append({**claim_fields, **test, "holds": bool(holds)})
        return out


def _columns(row: Mapping[str, Any]) -> list[str]:
    return [column for column in ("correct", "correct_norm") if column in row]


def _correct(rows: Rows) -> list[float]:
    return [float(row["correct"]) for row in rows]


def _metrics(rows: Rows) -> Scores:
    """Mean and standard error of each per-row column, named as the metric it is."""
    is_generative = "correct_norm" not in rows[0]
    names = ("exact_match",) if is_generative else ("acc", "acc_norm")
    scores: Scores = {}
    for name in names:
        mean, stderr = mean_stderr([float(row[_METRIC_COLUMNS[name]]) for row in rows])
        scores |= {name: mean, f"{name}_stderr": stderr}
    return {**scores, "n": len(rows)}


# ---- artefacts ----------------------------------------------------------------------------


def method_dir(config: FedktConfig, task: str, label: str) -> Path:
    """Where a method's trained models, checkpoint and run.json live."""
    return Path(config.output_dir) / task / label


def save_adapter(model: PeftModel, directory: Path) -> Path:
    """``model``'s adapter in peft's own format (adapter_config.json and
    adapter_model.safetensors: `PeftModel.from_pretrained` on the base model loads it), written
    to a temporary folder and moved into place, so no reader sees half an adapter."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        model.save_pretrained(str(tmp))
        _shareable(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _shareable(folder: Path) -> None:
    """Results are meant to be read by others: temporary folders and files start private."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def write_run_json(
    config: FedktConfig, algorithm: str, task: TaskData, label: str, outcome: Outcome
) -> Path:
    """run.json beside a method's artefacts: what they are, how they were made, what they
    scored (the base models are referenced by name, never copied)."""
    body = run_record(
        config, algorithm, label, task.task,
        data={"split": task.split, "rows": task.row_counts()},
        metrics={key: outcome.get(key) for key in ("llm", "slm", "clients")},
        privacy=outcome.get("privacy"),
    )  # fmt: skip
    return write_json(method_dir(config, task.task, label) / "run.json", body)


def run_record(
    config: FedktConfig, algorithm: str, label: str, task: str, *,
    data: Mapping[str, Any], metrics: Mapping[str, Any], privacy: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """The body of a run.json, which `fedkt export` reads (base models, how they were
    trained) to merge and describe the saved adapters."""
    federation = config.federation
    return {
        "schema": 1,
        "fedkt_version": fedkt.__version__,
        "algorithm": algorithm,
        "method": label,
        "task": task,
        "base_models": {"llm": federation.llm, "slm": federation.slm},
        "dtype": config.model.dtype,
        "rounds": config.fedcollm.rounds if algorithm == "fedcollm" else 1,
        "data": dict(data),
        "metrics": dict(metrics),
        "privacy": privacy,
        "config_hash": config_hash(config),
        "config": dataclasses.asdict(config),
    }


def config_hash(config: FedktConfig) -> str:
    """sha256 of the config's strict JSON: two runs with one hash ran the same settings."""
    text = json.dumps(to_strict_json(dataclasses.asdict(config)), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---- the loop over tasks and methods ------------------------------------------------------


@dataclass(frozen=True)
class ClientModelsTask:
    """Per-task state of an algorithm whose clients end with their own models (FedCoT, FDKT):
    the rows, the scoreboard, and where each method's artefacts go."""

    config: FedktConfig
    data: TaskData
    board: Scoreboard

    OWN_PREFIX: ClassVar[str] = ""
    """Labels of the algorithm's own methods start with this; their adapters are always
    saved, the baselines' when ``federation.baseline_adapters``."""

    def evaluate(self, name: str, role: Role) -> Scores:
        """Zero-shot score of model ``name`` as ``role``."""
        return self.board.score(*load_for(self.config, name), "zero_shot", role)

    def method_dir(self, label: str) -> Path:
        return method_dir(self.config, self.data.task, label)

    def saves(self, label: str) -> bool:
        return label.startswith(self.OWN_PREFIX) or self.config.federation.baseline_adapters

    def spec_fields(self, label: str, store: str) -> dict[str, Any]:
        """What every client-models spec (FedCoT's, FDKT's) takes from the config and the rows
        for the run ``label``: models, data, placement, scoring, and where files go."""
        config, federation = self.config, self.config.federation
        dtype, device = placement(config)
        return {
            "llm": federation.llm,
            "slm": federation.slm,
            "client_data": tuple(tuple(part) for part in self.data.clients),
            "eval_data": tuple(self.data.evaluation),
            "lora": config.lora,
            "dtype": dtype,
            "device": device,
            "client_cpus": federation.client_cpus,
            "client_gpus": federation.client_gpus,
            "eval_batch_size": config.eval.batch_size,
            "eval_max_new_tokens": config.eval.max_new_tokens,
            "response_store": store,
            "predictions_dir": str(self.board.directory / label),
            "artefacts_dir": str(self.method_dir(label)) if self.saves(label) else None,
        }


def communication(bytes_up: Mapping[int, int], bytes_down: Mapping[int, int]) -> Outcome:
    """Payload bytes per client (node or partition id) each way, and their total."""
    total = sum(bytes_up.values()) + sum(bytes_down.values())
    return {"bytes_up": dict(bytes_up), "bytes_down": dict(bytes_down), "total_bytes": total}


def zero_shot_both(run: ClientModelsTask) -> Iterator[tuple[str, Outcome]]:
    """The zero-shot method: the server LLM and the client SLM as loaded."""
    federation = run.config.federation
    llm = run.evaluate(federation.llm, "llm")
    yield "zero_shot", {"llm": llm, "slm": run.evaluate(federation.slm, "slm")}


class TaskRun(Protocol):
    """What the loop needs of an algorithm's per-task state."""

    @property
    def data(self) -> TaskData: ...

    @property
    def board(self) -> Scoreboard: ...


RunT = TypeVar("RunT", bound=TaskRun)
Method = Callable[[RunT], Iterable[tuple[str, Outcome]]]


def run_methods(
    config: FedktConfig,
    algorithm: str,
    load: Callable[[FedktConfig, str, bool], RunT],
    methods: Mapping[str, Method[RunT]],
    names: Sequence[str],
    claims: Callable[[Sequence[str]], Sequence[Claim]],
    *,
    resume: bool = False,
) -> dict[str, Any]:
    """Run ``methods[name]`` for each name on each task; after each outcome, redo the paired
    tests of ``claims(labels so far)``, write the method's run.json and rewrite results.json.

    With ``resume`` a previous results.json of the same config is continued: its finished
    methods are skipped (their per-row predictions are read back for the paired tests) and
    the unfinished one continues from its checkpoint where it has one.
    """
    path = Path(config.output_dir) / "results.json"
    results = _previous(path, config, algorithm) if resume else None
    if results is None:
        results = {
            "job": "run",
            "algorithm": algorithm,
            "config": dataclasses.asdict(config),
            "split": config.data.split,  # the default; each task's entry has its own
            "splits": config.data.evaluation_splits,
            "tasks": {},
        }
    for task in config.data.tasks:
        run = load(config, task, resume)
        empty = {
            "split": run.data.split,
            "rows": run.data.row_counts(),
            "baselines": {},
            "comparisons": [],
        }
        entry: dict[str, Any] = results["tasks"].setdefault(task, empty)
        run.board.finished = entry["baselines"]
        for label in entry["baselines"]:
            run.board.restore(label)
        for name in names:
            if name in entry["baselines"]:
                continue  # finished before --resume
            start = time.perf_counter()
            _LOG.info("[%s] %s: starting (%s)", task, name, _rows_text(run.data))
            with console.scoped(f"[{task}] {name}"):  # round lines from the federation
                for label, outcome in methods[name](run):
                    seconds = outcome.pop("seconds", time.perf_counter() - start)
                    entry["baselines"][label] = {**outcome, "seconds": round(seconds, 1)}
                    entry["comparisons"] = run.board.compare(claims(list(entry["baselines"])))
                    write_run_json(config, algorithm, run.data, label, outcome)
                    write_json(path, results)  # an interrupted run keeps what is done
                    _LOG.info("[%s] %s: %s, %.0f s", task, label, _headline(outcome), seconds)
                    start = time.perf_counter()
        # a resumed run's claims are this fedkt's, also when every method had finished
        entry["comparisons"] = run.board.compare(claims(list(entry["baselines"])))
        write_json(path, results)
    return results


def _rows_text(data: TaskData) -> str:
    """The rows a task's methods work on, in words (for the progress lines)."""
    counts = data.row_counts()
    clients = counts["clients"]
    sizes = f"{min(clients)}" if min(clients) == max(clients) else f"{min(clients)}-{max(clients)}"
    return (
        f"train rows: {len(clients)} clients x {sizes}, public {counts['public']}; "
        f"scored on {counts['eval']} {data.split} rows"
    )


def _headline(outcome: Outcome) -> str:
    """Each model's headline score and its standard error, in percent."""
    parts = []
    for role in ("llm", "slm"):
        scores = outcome.get(role)
        if not isinstance(scores, Mapping):
            continue
        metric = next((m for m in ("acc", "exact_match") if m in scores), None)
        if metric is not None:
            stderr = scores.get(f"{metric}_stderr", float("nan"))
            parts.append(
                f"{role.upper()} {metric} {100 * scores[metric]:.1f} ± {100 * stderr:.1f} %"
            )
    return ", ".join(parts) or "done"


RESUMABLE_CHANGES = (
    "deployment",
    "fedcollm.baselines",
    "fedcot.baselines",
    "fedcot.strategies",
    "fedcot.eps",
    "fedcot.grids",
    "fedcot.measured_grids",
    "fdkt.baselines",
    "fdkt.eps",
)
"""Settings --resume may change: where the run's processes live ([deployment]), and which
methods and eps points run, never how one runs (to extend or narrow a sweep). Every finished
outcome keeps its own label (method, strategy and eps), so no result is mislabelled;
results.json records the latest selection."""


def _previous(path: Path, config: FedktConfig, algorithm: str) -> dict[str, Any] | None:
    """The results.json to continue, or None (nothing to resume); refuses another config
    (beyond `RESUMABLE_CHANGES`, which may grow a sweep)."""
    if not path.is_file():
        _LOG.info("--resume: no %s yet, starting from the beginning", path)
        return None
    previous = read_json(path)
    now = to_strict_json(dataclasses.asdict(config))
    defaults = to_strict_json(dataclasses.asdict(type(config)()))
    changed = sorted(
        key
        for key in _differences(previous.get("config", {}), now, defaults)
        if not any(key == s or key.startswith(f"{s}.") for s in RESUMABLE_CHANGES)
    )
    if changed or previous.get("algorithm") != algorithm:
        raise ConfigError(
            f"--resume: {path} was written with another config (differs in "
            f"{', '.join(changed) or 'algorithm'}); restore those settings, or use another "
            "output_dir for the new config."
        )
    previous["config"] = dataclasses.asdict(config)  # the selection this run continues with
    return previous


_ABSENT = object()


def _differences(old: Any, new: Any, default: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON trees. A setting the old run did not
    have yet (written by an earlier fedkt) is no difference while it keeps its default."""
    if isinstance(old, dict) and isinstance(new, dict):
        defaults = default if isinstance(default, dict) else {}
        return [
            key
            for name in old.keys() | new.keys()
            for key in _differences(
                old.get(name, _ABSENT),
                new.get(name, _ABSENT),
                defaults.get(name, _ABSENT),
                f"{prefix}{name}.",
            )
        ]
    if old is _ABSENT and new == default:
        return []
    return [] if old == new else [prefix.rstrip(".")]


# ---- the clients' DP reports (FDKT, FedCoLLM with a DP synthetic aux set) -------------------


def dp_privacy(
    reports: Sequence[Mapping[str, Any]], target_epsilon: float, delta: float
) -> dict[str, Any]:
    """The clients' DP numbers, read from the "synthesis" part of their own reports: the eps
    each accountant spent (the max is the run's guarantee: every client's rows are
    (eps_k, delta)-DP in what it sent) and the mean of the other numbers."""
    synthesis = [report.get("synthesis", {}) for report in reports]
    spent = [spent_epsilon(s.get("epsilon")) for s in synthesis]
    numbers = [{k: v for k, v in s.items() if isinstance(v, int | float)} for s in synthesis]
    stated_once = ("epsilon", "target_epsilon", "delta")
    return {
        "target_epsilon": target_epsilon,
        "delta": delta,
        "epsilon_max": max(spent) if spent else math.nan,
        "epsilon_per_client": spent,
        **{f"mean_{k}": v for k, v in mean_scores(numbers).items() if k not in stated_once},
    }


def spent_epsilon(value: Any) -> float:
    """A report's eps: strict JSON writes inf (no noise) as a string or null."""
    return float(value) if isinstance(value, int | float) else math.inf


def eps_text(value: Any) -> str:
    """An eps for a table: "inf" for no noise, else two decimals."""
    eps = spent_epsilon(value)
    return "inf" if math.isinf(eps) else f"{eps:.2f}"


DP_HEADERS = ["task", "method", "target eps", "spent eps (max)", "rows/client"]


def dp_table(results: dict[str, Any]) -> str:
    """One line per task and method that spent a DP budget: the target eps, the largest eps a
    client's accountant spent (the run's guarantee) and the mean private rows per client."""
    rows = [
        dp_cells(task, name, outcome["privacy"])
        for task, entry in results["tasks"].items()
        for name, outcome in entry["baselines"].items()
        if "epsilon_max" in outcome.get("privacy", {})
    ]
    return format_table(DP_HEADERS, rows) if rows else ""


def dp_cells(task: str, method: str, privacy: dict[str, Any]) -> list[str]:
    """`DP_HEADERS`' cells of one method's privacy entry (`dp_privacy`)."""
    return [
        task,
        method,
        eps_text(privacy["target_epsilon"]),
        eps_text(privacy["epsilon_max"]),
        f"{privacy.get('mean_private_rows', math.nan):.0f}",
    ]
