"""`fedkt run` for FDKT: the spec's baselines on one split, side by side.

Tasks: classification (AG News: labelled texts) and multiple choice (ARC-Easy/Challenge,
OpenBookQA, CommonsenseQA: whole items travel, see `fedkt.algorithms.fdkt`); the kind and a
multiple-choice task's number of choices are read off the evaluation rows. Generative tasks
(GSM8K) are refused, and so is ``fdkt.canaries > 0`` for a multiple-choice task, before any
model is loaded.

Per task the train rows are cut as for the other algorithms (K + 1 parts; ``iid`` or
``dirichlet`` re-split the clients' rows): the K client parts are the private labelled rows;
FDKT uses no public data (the last part is unused). Every method is scored on the same
evaluation rows, in the task's own format:

- ``zero_shot``: the server LLM and the client SLM as loaded;
- ``local_only``: each client fine-tunes the SLM on its private rows only;
- ``zero_shot_augmentation``: the server's LLM writes samples from the label names alone (the
  "public LLM data" approach the paper argues against; FDKT's prompt budget, no
  demonstrations); a multiple-choice task's items from the domain and the number of choices
  alone; each client trains on private + those;
- ``dp_synthetic_only``: FDKT without the LLM: the server curates the clients' DP synthetic
  samples and sends them back; each client trains on private + those (at
  ``fdkt.synthetic_only_eps``);
- ``fdkt``: FDKT at every eps of ``[fdkt] eps`` (inf: the generator trains without noise).

The SLM score of a federated method is the mean over clients (each trains its own SLM); the
server's samples (what it received and sent) go to ``<method>/server/*.jsonl``. Each
client's DP report (the eps its accountant spent) is read back from its own report file (a
simulation shares the clients' disk) into results.json under "privacy", with the leakage
audit: client 0's canaries (classification only) and the distance to closest record of what
the clients sent, against their private rows and the held-out evaluation rows, compared like
for like (texts with texts; a multiple-choice task's formatted items with the rows' items).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from fedkt.algorithms.fdkt import (
    PublicFormat,
    ServerAugmentation,
    sample_text,
    server_zero_shot_augment,
    server_zero_shot_augment_items,
    training_examples,
)
from fedkt.config import FedktConfig
from fedkt.data import Example
from fedkt.data.augmentation import Item
from fedkt.data.formats import ItemFormat, task_format
from fedkt.data.synthetic import format_item
from fedkt.errors import ConfigError, DataError
from fedkt.experiments.harness import (
    DP_HEADERS,
    Claim,
    ClientModelsTask,
    Scoreboard,
    TaskData,
    communication,
    dp_cells,
    dp_privacy,
    run_methods,
    save_adapter,
    zero_shot_both,
)
from fedkt.experiments.summary import band, errorbar, plot_tasks
from fedkt.federation.fdkt import FDKTSpec, simulate_fdkt
from fedkt.federation.reports import read_report
from fedkt.generation import ResponseStore, make_backend
from fedkt.jobs import load_for
from fedkt.models import adapter_state, add_lora, load_adapter_state
from fedkt.models.embeddings import embed, load_embedder
from fedkt.privacy.accounting import check_target
from fedkt.privacy.leakage import distance_to_closest_record
from fedkt.report import format_table, read_jsonl, write_jsonl
from fedkt.training import derive_seed, train_answer_only

CLAIMS_AGAINST = ("local_only", "zero_shot_augmentation", "dp_synthetic_only")
"""Every FDKT point is tested against these methods' SLM: local only (the paper's headline),
the LLM without demonstrations (do the DP samples matter?) and DP synthetic data without the
LLM (does the augmentation help?)."""


@dataclasses.dataclass(frozen=True)
class FDKTTask(ClientModelsTask, PublicFormat):
    """One task's rows and scoreboard (a classification or multiple-choice task)."""

    OWN_PREFIX = "fdkt@"

    @classmethod
    def load(cls, config: FedktConfig, task: str, resume: bool = False) -> FDKTTask:
        """The rows; refuses a generative task, canaries for a multiple-choice task and a
        delta >= 1/N for the smallest client before any model is loaded."""
        data = TaskData.load(config, task)
        if isinstance(task_format(data.evaluation), ItemFormat) and config.fdkt.canaries:
            raise ConfigError(
                f"fdkt.canaries = {config.fdkt.canaries}: the canary audit supports "
                f"classification tasks only (a canary is a labelled text); {task} is "
                "multiple choice: set fdkt.canaries = 0"
            )
        smallest = min(len(part) for part in data.clients)
        for eps in (*config.fdkt.eps, config.fdkt.synthetic_only_eps):
            check_target(eps, config.fdkt.delta, smallest)
        return cls(config, data, Scoreboard(config, task, data.evaluation))

    def spec(self, label: str, eps: float, use_llm: bool) -> FDKTSpec:
        config, task = self.config, self.data.task
        store = Path(config.output_dir) / "responses" / f"{task}-{label}.jsonl"
        return FDKTSpec(
            **self.spec_fields(label, str(store)),
            generator=config.fdkt.generator or config.federation.slm,
            settings=config.fdkt.settings(config.train, eps, use_llm),
            embedder=config.fdkt.embedder,
            reports_dir=str(self.method_dir(label) / "client-reports"),
            canaries=config.fdkt.canaries,
        )

    @property
    def public_rows(self) -> Sequence[Example]:
        return self.data.evaluation

    @property
    def private_texts(self) -> list[str]:
        """The clients' rows as the DCR audit compares them with what they sent."""
        return self._texts(row for part in self.data.clients for row in part)

    @property
    def holdout_texts(self) -> list[str]:
        """The held-out (evaluation) rows, alike."""
        return self._texts(self.data.evaluation)

    def _texts(self, rows: Iterable[Example]) -> list[str]:
        """Each row's raw text (classification), or its formatted item (multiple choice; a
        row `format_item` refuses, e.g. repeated choices, is left out)."""
        fmt = self.format
        if not isinstance(fmt, ItemFormat):
            return [row.question for row in rows if row.question]
        texts = []
        for row in rows:
            try:
                texts.append(format_item(fmt.item(row)))
            except DataError:
                continue
        return texts


zero_shot = zero_shot_both


def local_only(run: FDKTTask) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each client fine-tunes a fresh SLM adapter on its private rows alone."""
    yield "local_only", _train_each_client(run, "local_only", ())


def zero_shot_augmentation(run: FDKTTask) -> Iterator[tuple[str, dict[str, Any]]]:
    """The "public LLM data" baseline: the server's LLM writes samples from the label names
    and domain alone (FDKT's prompt budget, no demonstrations, so no client data shapes them;
    a multiple-choice task: whole items from the domain and its public number of choices);
    each client trains on its private rows plus those. Nothing private is involved in making
    them, so this runs without a federation round trip."""
    label = "zero_shot_augmentation"
    eps = run.config.fdkt.eps[0]  # only the augmentation settings are used
    settings = run.config.fdkt.settings(run.config.train, eps)
    model, tokenizer = load_for(run.config, run.config.federation.llm)
    backend = make_backend(model, tokenizer, prefer_vllm=True, model_path=None)
    store_path = Path(run.config.output_dir) / "responses" / f"{run.data.task}-{label}.jsonl"
    store = ResponseStore(store_path)
    outcome: ServerAugmentation
    if isinstance(run.format, ItemFormat):
        outcome = server_zero_shot_augment_items(backend, settings, store, n_choices=run.n_choices)
    else:
        outcome = server_zero_shot_augment(backend, run.labels, settings, store)
    del backend, model
    write_jsonl(run.method_dir(label) / "server" / "augmented.jsonl",
                map(dataclasses.asdict, outcome.items))  # fmt: skip
    result = _train_each_client(run, label, outcome.items)
    yield label, {**result, "server": {"augmentation": outcome.report, "sent": len(outcome.items)}}


def _train_each_client(run: FDKTTask, label: str, received: Sequence[Item]) -> dict[str, Any]:
    """Each client fine-tunes a fresh SLM adapter on its private rows plus ``received``;
    every client starts from the same fresh adapter, with the seeds FDKT's clients use."""
    model, tokenizer = load_for(run.config, run.config.federation.slm)
    torch.manual_seed(run.config.fdkt.seed)
    slm = add_lora(model, run.config.lora)
    fresh = adapter_state(slm)
    fmt = run.format
    clients = []
    for k, part in enumerate(run.data.clients):
        load_adapter_state(slm, fresh)
        train = dataclasses.replace(run.config.train, seed=derive_seed(run.config.train.seed, k))
        train_answer_only(slm, tokenizer, training_examples(part, received, fmt), train)
        clients.append(run.board.score(slm, tokenizer, label, "slm", client=k))
        if run.saves(label):
            save_adapter(slm, run.method_dir(label) / "clients" / str(k) / "slm")
    slm_scores = run.board.mean_of_clients(label, "slm", len(clients))
    return {"llm": None, "slm": slm_scores, "clients": clients}


def dp_synthetic_only(run: FDKTTask) -> Iterator[tuple[str, dict[str, Any]]]:
    eps = run.config.fdkt.synthetic_only_eps
    yield "dp_synthetic_only", _federated(run, "dp_synthetic_only", eps, use_llm=False)


def fdkt(run: FDKTTask) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every eps, one at a time (each is written as soon as it is done)."""
    for eps in run.config.fdkt.eps:
        label = f"fdkt@{eps:g}"
        if label in run.board.finished:  # done before --resume
            continue
        yield label, _federated(run, label, eps, use_llm=True)


BASELINES: dict[str, Callable[[FDKTTask], Iterable[tuple[str, dict[str, Any]]]]] = {
    "zero_shot": zero_shot,
    "local_only": local_only,
    "zero_shot_augmentation": zero_shot_augmentation,
    "dp_synthetic_only": dp_synthetic_only,
    "fdkt": fdkt,
}


def claims(labels: Sequence[str]) -> list[Claim]:
    """Each FDKT point's SLM against each of `CLAIMS_AGAINST` that ran (paired, same rows),
    and DP synthetic data alone against local only (do the DP samples help by themselves?)."""
    points = [label for label in labels if label.startswith("fdkt@")]
    out = [Claim("slm", point, other) for point in points for other in CLAIMS_AGAINST]
    return [*out, Claim("slm", "dp_synthetic_only", "local_only")]


def run_fdkt_experiment(config: FedktConfig, *, resume: bool = False) -> dict[str, Any]:
    """Every FDKT baseline on every task; writes results.json after each method, and each
    method's adapters (one per client), client reports and run.json under
    ``<output_dir>/<task>/<method>/``."""
    return run_methods(
        config, "fdkt", FDKTTask.load, BASELINES, config.fdkt.baselines, claims, resume=resume
    )


def _federated(run: FDKTTask, label: str, eps: float, *, use_llm: bool) -> dict[str, Any]:
    """One simulated FDKT run; the clients write their per-row predictions and reports, which
    are read back here (simulation: the harness shares the clients' disk)."""
    start = time.perf_counter()
    spec = run.spec(label, eps, use_llm)
    result = simulate_fdkt(spec)
    server = run.method_dir(label) / "server"  # DP synthetic and augmented: not private
    write_jsonl(server / "synthetic.jsonl", map(dataclasses.asdict, result.received_samples))
    write_jsonl(server / "augmented.jsonl", map(dataclasses.asdict, result.sent_samples))
    reports = []
    for k in range(spec.num_clients):
        rows = read_jsonl(Path(str(spec.predictions_dir)) / f"slm-client{k}.jsonl")
        run.board.add(label, "slm", rows, client=k, write=False)
        reports.append(read_report(Path(str(spec.reports_dir)) / f"client{k}.json"))
    sent = [sample_text(item) for item in result.received_samples]
    return {
        "llm": None,
        "slm": run.board.mean_of_clients(label, "slm", spec.num_clients),
        "clients": [report.get("train", {}) for report in reports],
        "privacy": {
            **dp_privacy(reports, eps, spec.settings.delta),
            "audit": _audit(run, reports, sent),
        },
        "server": {
            "synthetic": result.synthetic,
            "curation": result.curation,
            "augmentation": result.augmentation,
            "sent": result.sent,
        },
        **communication(result.bytes_up, result.bytes_down),
        "seconds": time.perf_counter() - start,
    }


def _audit(run: FDKTTask, reports: list[dict[str, Any]], sent: list[str]) -> dict[str, Any]:
    """The spec's leakage audit: client 0's canary report (its own file) and the distance to
    closest record of everything the clients sent, against their private rows and against
    as many held-out rows (the evaluation rows, never trained on). The DCR is the
    experimenter's view: a simulation holds every party's rows; no party computes it."""
    canaries = reports[0].get("audit") if reports else None
    if not sent:
        return {"canaries": canaries, "dcr": None}
    vectors = embed(load_embedder(run.config.fdkt.embedder),
                    [*sent, *run.private_texts, *run.holdout_texts])  # fmt: skip
    n, m = len(sent), len(run.private_texts)
    dcr = distance_to_closest_record(
        vectors[:n], vectors[n : n + m], vectors[n + m :], seed=run.config.fdkt.seed
    )
    return {"canaries": canaries, "dcr": dcr.as_dict()}


# ---- what a run shows ---------------------------------------------------------------------


def privacy_table(results: dict[str, Any]) -> str:
    """One line per task and federated method: the target eps, the largest eps a client's
    accountant spent, the mean private rows, synthetic samples sent and augmented received,
    and the leakage audit: the canaries' largest exposure (bits, of the test's maximum), how
    many canaries appear in what was sent, and the share of sent samples closer to a private
    row than to a held-out one (0.5: no sign of copying) with its sign-test p."""
    rows = [
        [
            *dp_cells(task, name, outcome["privacy"]),
            sum(outcome["server"]["synthetic"].values()),
            outcome["server"]["sent"],
            *_audit_cells(outcome["privacy"].get("audit") or {}),
        ]
        for task, entry in results["tasks"].items()
        for name, outcome in entry["baselines"].items()
        if "privacy" in outcome
    ]
    headers = [*DP_HEADERS, "synthetic", "augmented", "canary exposure", "canaries sent",
               "DCR to train (p)"]  # fmt: skip
    return format_table(headers, rows)


def _audit_cells(audit: dict[str, Any]) -> list[str]:
    canaries, dcr = audit.get("canaries") or {}, audit.get("dcr")
    exposure, sent = canaries.get("exposure"), canaries.get("in_sent")
    return [
        "-" if not exposure else
        f"{exposure['max_exposure']:.1f} of {exposure['max_exposure_possible']:.1f} bits",
        "-" if not sent else f"{sent['n_found']} of {sent['n_canaries']}",
        "-" if not dcr else f"{dcr['closer_to_train']:.2f} (p={dcr['p_value']:.2g})",
    ]  # fmt: skip


def plot_fdkt(results: dict[str, Any], path: Path) -> Path:
    """Per task: the clients' mean SLM accuracy against the generator's eps, with the
    local-only, DP-synthetic-only and zero-shot scores as horizontal bands."""
    return plot_tasks(results, path, _eps_panel, size=(6.5, 4.2))


def _eps_panel(ax: Any, task: str, baselines: dict[str, Any]) -> None:
    points = sorted(
        (float(name.split("@", 1)[1]), outcome)
        for name, outcome in baselines.items()
        if name.startswith("fdkt@")
    )
    if points:
        xs = list(range(len(points)))
        errorbar(ax, xs, [o["slm"] for _, o in points], color="tab:orange", label="FDKT SLM")
        ax.set_xticks(xs, ["inf" if math.isinf(e) else f"{e:g}" for e, _ in points])
    lines = (
        ("local_only", "slm", "tab:gray", "--"),
        ("zero_shot_augmentation", "slm", "tab:purple", "--"),
        ("dp_synthetic_only", "slm", "tab:green", "-."),
        ("zero_shot", "slm", "tab:gray", ":"),
        ("zero_shot", "llm", "tab:blue", ":"),
    )
    for name, role, color, style in lines:
        scores = baselines.get(name, {}).get(role)
        if scores is not None:
            band(ax, scores, color=color, linestyle=style, label=f"{name} {role.upper()}")
    ax.set(title=task, xlabel="generator epsilon (DP-SGD)", ylabel="accuracy (%), ±1 s.e.")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
