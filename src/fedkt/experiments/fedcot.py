"""`fedkt run` for FedCoT: the spec's baselines on one split, side by side.

Per task the train rows are cut as for FedCoLLM (K + 1 equal random parts): the K client
parts are the private labelled questions, the last part is public text (the adaptive
mechanism's token importance only). Every method is scored on the same evaluation rows,
with FedCoT's predict prefix on multiple choice and explain-then-answer on generative
reasoning tasks (GSM8K: the model writes a rationale, its final number is graded;
`fedkt.data.cot.evaluation_example`):

- ``zero_shot``: the server LLM and the client SLM as loaded (on a generative task the LLM
  answers the request the non-private server answers, in its chat template where it has
  one: `fedkt.data.cot.llm_evaluation_example`);
- ``standalone``: each client fine-tunes the SLM on its labels only (no rationale);
- ``cot_upper_bound``: FedCoT with the raw questions sent (no privacy);
- ``fedcot``: FedCoT for every strategy x eps of [fedcot] (with ``measured_grids`` each
  strategy sweeps its own measured grid, `strategy_grid`); at eps = inf no mechanism
  perturbs, so that point runs once and serves every strategy (but "paraphrase", whose
  eps = inf is the greedy paraphrase, a run of its own).

The SLM score of a federated method is the mean over clients (each trains its own SLM). The
clients send the server nothing but their perturbed prompts; their privacy reports, counts
and scores are read back from their own report files (simulation: the harness shares the
clients' disk). Pattern uniqueness is measured against the task's whole train split (public).

Utility is shown where it moves: per point, how often the server's rationales (written for
the perturbed prompts) and the recovered ones reach the gold answer of the real question,
graded by each client with its own labels and pooled here ("utility"), beside the SLM.

Repeated runs compose: every point of a sweep perturbs the same private rows again, so in a
deployment each client pays the sum of the points' budgets (and a point that sends the text
in clear releases it). Each federated outcome carries the running total per client over the
points run so far ("composition"; the last one is the sweep's), and the terminal table says
it (`sweep_composition`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fedkt.algorithms.fedcot import COMPOSITION
from fedkt.config import FedCoTConfig, FedktConfig
from fedkt.data import Example
from fedkt.data.cot import (
    evaluation_example,
    label_names,
    llm_evaluation_example,
    predict_example,
)
from fedkt.evaluation import evaluate_rows, mean_stderr
from fedkt.experiments.harness import (
    Claim,
    ClientModelsTask,
    Scoreboard,
    TaskData,
    communication,
    run_methods,
    save_adapter,
    zero_shot_both,
)
from fedkt.experiments.summary import band, errorbar, mean_scores, percent, plot_tasks
from fedkt.federation.fedcot import FedCoTSpec, simulate_fedcot
from fedkt.federation.reports import read_report
from fedkt.jobs import load_for, task_examples
from fedkt.models import adapter_state, add_lora, load_adapter_state
from fedkt.privacy.retention import MEASURED_GRIDS
from fedkt.report import format_table, read_jsonl
from fedkt.training import derive_seed, train_answer_only

PRIVACY_COLUMNS = (
    "noise",
    "candidates",
    "prompt_eps_mean",
    "protected_recovered",
    "protected_recovered_prior",
    "prior_only_recovered",
    "gold_answer_leak_rate",
    "pattern_unique_rate",
)


CLAIMS_AGAINST = ("standalone", "zero_shot")
"""Every federated FedCoT point is tested against these methods' SLM, and the non-private
upper bound against each point (how much the privacy costs)."""


@dataclasses.dataclass(frozen=True)
class FedCoTTask(ClientModelsTask):
    """One task's rows and scoreboard; the evaluation rows carry FedCoT's test format
    (`fedkt.data.cot.evaluation_example`: the predict prefix, explain-then-answer on
    generative tasks; the clients put it on themselves; the harness scores the zero-shot and
    standalone models on the same rows)."""

    OWN_PREFIX = "fedcot-"
    reference: tuple[Example, ...] = ()
    """The task's whole train split (public): the pattern-uniqueness reference."""

    @classmethod
    def load(cls, config: FedktConfig, task: str, resume: bool = False) -> FedCoTTask:
        data = TaskData.load(config, task)
        scored = [evaluation_example(e) for e in data.evaluation]
        reference = tuple(task_examples(config, task, "train", 0))
        return cls(config, data, Scoreboard(config, task, scored), reference)

    def spec(self, label: str, strategy: str, eps: float) -> FedCoTSpec:
        config, task = self.config, self.data.task
        name = f"{task}-{strategy}{_store_suffix(config.fedcot, strategy)}-{eps:g}.jsonl"
        store = Path(config.output_dir) / "responses" / name
        return FedCoTSpec(
            **self.spec_fields(label, str(store)),
            decoder=config.fedcot.decoder,
            public_texts=tuple(e.question for e in self.data.public),
            settings=config.fedcot.settings(config.train, strategy, eps),
            reports_dir=str(self.method_dir(label) / "client-reports"),
            label_names=label_names([*self.data.evaluation, *self.data.public]),
            pattern_reference=self.reference,
            train_slm=config.fedcot.train_slm,
        )

    @property
    def generative(self) -> bool:
        """True for a generative reasoning task (GSM8K): scored explain-then-answer."""
        return bool(self.data.evaluation) and self.data.evaluation[0].is_generative


def _store_suffix(config: FedCoTConfig, strategy: str) -> str:
    """The settings beside strategy and eps that change what a strategy sends, for the
    response store's file name (two settings never share a file)."""
    if strategy == "custext":
        return f"-K{config.cluster_size}-{config.custext_inner}"
    if strategy == "paraphrase":
        low, high = config.paraphrase_logit_min, config.paraphrase_logit_max
        return f"-n{config.paraphrase_tokens}-logits{low:g}_{high:g}"
    return ""


def strategy_grid(config: FedCoTConfig, strategy: str) -> tuple[float, ...]:
    """The eps a strategy sweeps: its entry in ``config.grids``, else ``config.eps``, or with
    ``measured_grids`` its own measured grid for ``config.candidates``
    (`fedkt.privacy.retention.MEASURED_GRIDS`; CusText's by its inner mechanism).
    "paraphrase" has no measured grid and keeps ``config.eps``."""
    if strategy in config.grids:
        return config.grids[strategy]
    if not config.measured_grids or strategy == "paraphrase":
        return config.eps
    key = f"custext({config.custext_inner})" if strategy == "custext" else strategy
    return MEASURED_GRIDS[config.candidates][key]


def zero_shot(run: FedCoTTask) -> Iterator[tuple[str, dict[str, Any]]]:
    """Both models as loaded. Multiple choice: both on the predict prefix. Generative: the
    SLM explain-then-answer, the LLM on the request the non-private server answers
    (instruction, worked example, the raw question), in its chat template where it has one
    and ``fedcot.chat_template`` asks for it, with ``eval.max_new_tokens`` to write in."""
    if not run.generative:
        yield from zero_shot_both(run)
        return
    federation = run.config.federation
    llm = _score_llm(run)
    yield "zero_shot", {"llm": llm, "slm": run.evaluate(federation.slm, "slm")}


def _score_llm(run: FedCoTTask) -> dict[str, float]:
    start = time.perf_counter()
    model, tokenizer = load_for(run.config, run.config.federation.llm)
    result = evaluate_rows(
        model,
        tokenizer,
        [llm_evaluation_example(e) for e in run.data.evaluation],
        batch_size=run.config.eval.batch_size,
        max_new_tokens=run.config.eval.max_new_tokens,
        progress=True,
        chat_template=run.config.fedcot.chat_template,
    )
    run.board.add("zero_shot", "llm", result.rows)
    return {**result.scores, "seconds": round(time.perf_counter() - start, 2)}


def standalone(run: FedCoTTask) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each client fine-tunes a fresh SLM adapter on its own labels (predict task only); the
    SLM is loaded once and every client starts from the same fresh adapter."""
    model, tokenizer = load_for(run.config, run.config.federation.slm)
    torch.manual_seed(run.config.fedcot.seed)
    slm = add_lora(model, run.config.lora)
    fresh = adapter_state(slm)
    clients = []
    for k, part in enumerate(run.data.clients):
        load_adapter_state(slm, fresh)
        train = dataclasses.replace(run.config.train, seed=derive_seed(run.config.train.seed, k))
        train_answer_only(slm, tokenizer, [predict_example(e) for e in part], train)
        clients.append(run.board.score(slm, tokenizer, "standalone", "slm", client=k))
        if run.saves("standalone"):
            save_adapter(slm, run.method_dir("standalone") / "clients" / str(k) / "slm")
    slm_scores = run.board.mean_of_clients("standalone", "slm", len(clients))
    yield "standalone", {"llm": None, "slm": slm_scores, "clients": clients}


def cot_upper_bound(run: FedCoTTask) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "cot_upper_bound", _federated(run, "cot_upper_bound", "none", math.inf)


def fedcot(run: FedCoTTask) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every strategy x eps of its grid (`strategy_grid`), one at a time (each is written as
    soon as it is done); eps = inf runs once (nothing is perturbed) and serves every token
    strategy; "paraphrase" at inf (the greedy paraphrase) is a run of its own."""
    fedcot_config = run.config.fedcot
    unperturbed: tuple[str, dict[str, Any]] | None = None
    for strategy in fedcot_config.strategies:
        for eps in strategy_grid(fedcot_config, strategy):
            label = f"fedcot-{strategy}@{eps:g}"
            shares = math.isinf(eps) and strategy != "paraphrase"
            if label in run.board.finished:  # done before --resume
                if shares and unperturbed is None:
                    unperturbed = (label, run.board.finished[label])
                continue
            if shares and unperturbed is not None:
                if fedcot_config.train_slm:
                    run.board.alias(label, "slm", same_as=unperturbed[0])
                same = {**unperturbed[1], "same_run_as": unperturbed[0]}
                same["composition"] = sweep_composition({**run.board.finished, label: same})
                yield label, same
                continue
            outcome = _federated(run, label, strategy, eps)
            if shares:
                unperturbed = (label, outcome)
            yield label, outcome


BASELINES: dict[str, Callable[[FedCoTTask], Iterable[tuple[str, dict[str, Any]]]]] = {
    "zero_shot": zero_shot,
    "standalone": standalone,
    "cot_upper_bound": cot_upper_bound,
    "fedcot": fedcot,
}


def claims(labels: Sequence[str]) -> list[Claim]:
    """Each FedCoT point against the standalone and zero-shot SLM, and the non-private upper
    bound against each point."""
    points = [label for label in labels if label.startswith("fedcot-")]
    out = [Claim("slm", point, other) for point in points for other in CLAIMS_AGAINST]
    out += [Claim("slm", "cot_upper_bound", point) for point in points]
    return [*out, Claim("slm", "cot_upper_bound", "standalone")]


def run_fedcot_experiment(config: FedktConfig, *, resume: bool = False) -> dict[str, Any]:
    """Every FedCoT baseline on every task; writes results.json after each method, and each
    method's adapters (one per client) and run.json under ``<output_dir>/<task>/<method>/``."""
    return run_methods(
        config,
        "fedcot",
        FedCoTTask.load,
        BASELINES,
        config.fedcot.baselines,
        claims,
        resume=resume,
    )


def _federated(run: FedCoTTask, label: str, strategy: str, eps: float) -> dict[str, Any]:
    """One simulated FedCoT run; the clients write their per-row predictions (not in a
    utility sweep, ``train_slm`` false) and their own reports, which are read back here
    (simulation: the harness shares the clients' disk)."""
    start = time.perf_counter()
    spec = run.spec(label, strategy, eps)
    result = simulate_fedcot(spec)
    reports = []
    for k in range(spec.num_clients):
        if spec.train_slm:
            rows = read_jsonl(Path(str(spec.predictions_dir)) / f"slm-client{k}.jsonl")
            run.board.add(label, "slm", rows, client=k, write=False)
        reports.append(read_report(Path(str(spec.reports_dir)) / f"client{k}.json"))
    trained = spec.train_slm  # a utility sweep scores no SLM
    outcome = {
        "llm": None,
        "slm": run.board.mean_of_clients(label, "slm", spec.num_clients) if trained else None,
        "clients": [report.get("train", {}) for report in reports],
        "utility": client_utility(reports),
        "privacy": client_privacy(reports),
        "server": {"requests": list(result.requests), "acknowledged": list(result.acknowledged)},
        **communication(result.bytes_up, result.bytes_down),
        "seconds": time.perf_counter() - start,
    }
    outcome["composition"] = sweep_composition({**run.board.finished, label: outcome})
    return outcome


UTILITY_COUNTS = (
    "rationales_kept",
    "server_missing",
    "server_degenerate",
    "server_no_answer",
    "recovery_failed",
    "recovered_no_answer",
    "inconsistent_dropped",
)
"""The clients' rationale counts, summed over clients (`fedkt.algorithms.fedcot.Recovery`)."""


def client_utility(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The clients' rationale measurements in one: the server rationale's and the recovered
    rationale's answer accuracy over all the clients' prompts pooled (each with its standard
    error over those prompts), the drop counts summed, and each client's own part."""
    parts = [report.get("utility", {}) for report in reports]
    prompts = int(sum(part.get("prompts", 0) for part in parts))
    out: dict[str, Any] = {"prompts": prompts}
    for name in ("server_rationale", "recovered_rationale"):
        correct = int(sum(part.get(f"{name}_correct", 0) for part in parts))
        out[f"{name}_correct"] = correct
        if prompts:
            acc, stderr = mean_stderr([1.0] * correct + [0.0] * (prompts - correct))
            out |= {f"{name}_acc": acc, f"{name}_acc_stderr": stderr}
    for key in UTILITY_COUNTS:
        out[key] = int(sum(part.get(key, 0) for part in parts))
    return {**out, "per_client": parts}


def sweep_composition(outcomes: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """What the points in ``outcomes`` (label -> outcome, in run order) cost each client
    together: every point that sent prompts (an outcome with "privacy", run once: an alias
    of an earlier run is not counted twice) perturbed the same private rows again, so in a
    deployment the budgets add up (sequential composition).

    ``eps_total_per_client``: per client the sum over the points of its largest prompt eps
    (its worst row's; an upper bound on any row's total, reached when the same row is the
    largest at every point); inf as soon as one point sent the rows in clear, listed in
    ``in_clear_points``; ``eps_finite_per_client``: the sum over the other points.
    """
    points = [
        (label, outcome)
        for label, outcome in outcomes.items()
        if isinstance(outcome.get("privacy"), Mapping) and "same_run_as" not in outcome
    ]
    spent = [(label, _client_eps(outcome)) for label, outcome in points]
    clients = max((len(values) for _, values in spent), default=0)
    finite = [0.0] * clients
    in_clear: list[str] = []
    for label, values in spent:
        if any(math.isinf(v) for v in values):
            in_clear.append(label)
        for k, value in enumerate(values):
            if not math.isinf(value):
                finite[k] += value
    return {
        "note": COMPOSITION,
        "points": [label for label, _ in points],
        "eps_total_per_client": [math.inf if in_clear else total for total in finite],
        "eps_finite_per_client": finite,
        "in_clear_points": in_clear,
    }


def _client_eps(outcome: Mapping[str, Any]) -> list[float]:
    """Each client's largest prompt eps at one point (older results: the clients' mean of it
    for every client)."""
    privacy = outcome["privacy"]
    values = privacy.get("prompt_eps_max_per_client")
    if not isinstance(values, list):
        values = [privacy.get("prompt_eps_max", math.inf)] * max(1, len(outcome.get("clients", [])))
    return [_as_float(v) for v in values]


def _as_float(value: Any) -> float:
    """A report's number; strict JSON writes inf as "inf" (and nothing as None: inf, the
    cautious reading)."""
    return float(value) if _is_number(value) else math.inf


def client_privacy(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The clients' privacy reports in one: numbers averaged over clients, words (noise
    source, candidates, what is released in clear) as they are when all clients agree, else
    listed per client."""
    parts = [report.get("privacy", {}) for report in reports]
    numbers = [{k: float(v) for k, v in part.items() if _is_number(v)} for part in parts]
    words: dict[str, Any] = {}
    for key in dict.fromkeys(k for part in parts for k, v in part.items() if not _is_number(v)):
        values = [part.get(key) for part in parts]
        words[key] = values[0] if len(set(map(str, values))) == 1 else values
    per_client = [_as_float(part.get("prompt_eps_max")) for part in parts]
    return {**words, **mean_scores(numbers), "prompt_eps_max_per_client": per_client}


def _is_number(value: Any) -> bool:
    """A report's number (strict JSON writes inf as "inf")."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int | float) or value in ("inf", "-inf")


# ---- what a run shows ---------------------------------------------------------------------


def privacy_table(results: dict[str, Any]) -> str:
    """What a run shows of FedCoT beside the scores: one line per task and federated method
    with epsilon and the leakage audit (in %); then its utility where it moves (the server's
    and the recovered rationales' answer accuracy, the SLM, what was dropped,
    `utility_table`); then what the sweep cost each client in all (`composition_lines`)."""
    return "\n\n".join(
        part
        for part in (
            _audit_table(results),
            utility_table(results),
            half_gain_lines(results),
            composition_lines(results),
        )
        if part
    )


def _audit_table(results: dict[str, Any]) -> str:
    rows = [
        [task, name, *(_cell(column, outcome["privacy"].get(column)) for column in PRIVACY_COLUMNS)]
        for task, entry in results["tasks"].items()
        for name, outcome in entry["baselines"].items()
        if "privacy" in outcome
    ]
    headers = [
        "task",
        "method",
        "noise",
        "candidates",
        "prompt eps",
        "tok. recovered % (MAP)",
        "(MAP + prior)",
        "(prior only)",
        "gold leak %",
        "pattern unique %",
    ]
    return format_table(headers, rows)


def utility_table(results: dict[str, Any]) -> str:
    """One line per task and federated method: how often the server's rationales (for the
    perturbed prompts) and the recovered rationales reach the gold answer of the real
    question (clients' prompts pooled, ± s.e.), the SLM's score, and the rationales kept
    and dropped (summed over clients)."""
    rows = [
        [
            task,
            name,
            _share(outcome["utility"], "server_rationale_acc"),
            _share(outcome["utility"], "recovered_rationale_acc"),
            percent(outcome.get("slm")),
            *(str(outcome["utility"].get(key, "-")) for key in UTILITY_COUNTS),
        ]
        for task, entry in results["tasks"].items()
        for name, outcome in entry["baselines"].items()
        if isinstance(outcome.get("utility"), Mapping)
    ]
    headers = [
        "task",
        "method",
        "server rationale % ± s.e.",
        "recovered % ± s.e.",
        "SLM % ± s.e.",
        "kept",
        "server empty",
        "degenerate",
        "no answer",
        "recovery failed",
        "rec. no answer",
        "inconsistent",
    ]
    return format_table(headers, rows) if rows else ""


def _share(utility: Mapping[str, Any], key: str) -> str:
    value = utility.get(key)
    if not isinstance(value, int | float):
        return "-"
    return f"{100 * value:.1f} ± {100 * float(utility.get(f'{key}_stderr', 0.0)):.1f}"


def composition_lines(results: dict[str, Any]) -> str:
    """Per task, a line saying that the sweep's points add up, with each client's total."""
    lines = []
    for task, entry in results["tasks"].items():
        total = sweep_composition(entry["baselines"])
        if not total["points"]:
            continue
        per_client = ", ".join(
            f"client {k}: {_eps_total(t)}" for k, t in enumerate(total["eps_finite_per_client"])
        )
        clear = total["in_clear_points"]
        released = f"; in clear at {', '.join(clear)}: total inf" if clear else ""
        lines.append(
            f"{task}: repeated runs compose: the {len(total['points'])} runs of this sweep "
            "each sent the same private rows again (perturbed afresh, or in clear), so in a "
            "deployment each client pays the sum of their prompt eps (its largest row's): "
            f"{per_client} over the finite points{released}"
        )
    return "\n".join(lines)


def _eps_total(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.0f}"


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if not isinstance(value, int | float):  # a word, or per-client words
        return value if isinstance(value, str) else "/".join(map(str, value))
    if column == "prompt_eps_mean":
        return "inf" if math.isinf(value) else f"{value:.0f}"
    return f"{100 * value:.1f}"


def plot_fedcot(results: dict[str, Any], path: Path) -> Path:
    """Per task: SLM accuracy against eps (symmetric log axis, each strategy at its own
    grid; inf drawn past the largest finite eps) for every strategy run (the other methods as
    horizontal lines) with, dashed, how often the server's rationales reach the gold answer,
    and on a second axis the share of tokens an inverting attacker recovers (and, fainter,
    what the public prior alone recovers; neither for "paraphrase")."""
    return plot_tasks(results, path, _eps_panel, size=(7, 4.2))


STRATEGY_COLORS = {
    "em": "tab:orange",
    "aem": "tab:green",
    "krr": "tab:red",
    "custext": "tab:purple",
    "metric": "tab:brown",
    "paraphrase": "tab:cyan",
}


def _eps_panel(ax: Any, task: str, baselines: dict[str, Any]) -> None:
    recovered = ax.twinx()
    finite = [e for n in baselines if n.startswith("fedcot-") and math.isfinite(e := _eps_of(n))]
    at_inf = 2.0 * max(finite, default=1.0) or 1.0  # where eps = inf is drawn
    ticks: dict[float, str] = {}
    for strategy, color in STRATEGY_COLORS.items():
        points = sorted(
            (_eps_of(name), outcome)
            for name, outcome in baselines.items()
            if name.startswith(f"fedcot-{strategy}@")
        )
        if not points:
            continue
        xs = [at_inf if math.isinf(e) else e for e, _ in points]
        ticks |= {
            x: "inf" if math.isinf(e) else f"{e:g}" for x, (e, _) in zip(xs, points, strict=True)
        }
        trained = [(x, o["slm"]) for x, (_, o) in zip(xs, points, strict=True) if o.get("slm")]
        if trained:  # none in a utility sweep (train_slm = false)
            slm_xs, slm = zip(*trained, strict=True)
            errorbar(ax, slm_xs, slm, color=color, label=f"FedCoT-{strategy.upper()} SLM")
        graded = [outcome.get("utility", {}) for _, outcome in points]
        if all("server_rationale_acc" in u for u in graded):  # where utility moves first
            ax.errorbar(
                xs,
                [100 * u["server_rationale_acc"] for u in graded],
                yerr=[100 * u.get("server_rationale_acc_stderr", 0.0) for u in graded],
                fmt="s--",
                color=color,
                alpha=0.6,
                capsize=2,
                label=f"{strategy.upper()} server rationale acc",
            )
        inverted = [o["privacy"].get("protected_recovered") for _, o in points]
        if all(isinstance(v, int | float) for v in inverted):  # none for a paraphrase
            recovered.plot(
                xs,
                [100 * v for v in inverted],
                "x:",
                color=color,
                label=f"{strategy.upper()} tokens recovered",
            )
        prior = [o["privacy"].get("prior_only_recovered") for _, o in points]
        if all(isinstance(v, int | float) for v in prior):  # what the public prior alone gets
            recovered.plot(
                xs,
                [100 * v for v in prior],
                "+:",
                color=color,
                alpha=0.5,
                label=f"{strategy.upper()} prior only",
            )
    if ticks:  # eps on a symmetric log axis: each strategy at its own grid
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xticks(list(ticks), list(ticks.values()), rotation=90, fontsize="x-small")
    unperturbed = _non_private_utility(baselines)
    if unperturbed is not None:  # the rationales' accuracy without privacy: the ceiling
        acc, stderr = unperturbed
        ax.axhline(100 * acc, color="black", linestyle="-.", linewidth=1)
        ax.axhspan(100 * (acc - stderr), 100 * (acc + stderr), color="black", alpha=0.08)
        ax.plot([], [], "k-.", label="non-private server rationale acc")
    for name, style in (("zero_shot", ":"), ("standalone", "--"), ("cot_upper_bound", "-.")):
        outcome = baselines.get(name)
        if outcome is not None:
            for role, color in (("slm", "tab:gray"), ("llm", "tab:blue")):
                if outcome.get(role) is not None:
                    label = f"{name} {role.upper()}"
                    band(ax, outcome[role], color=color, linestyle=style, label=label)
    ax.set(title=task, xlabel="epsilon per token", ylabel="accuracy (%), ±1 s.e.")
    recovered.set_ylabel("tokens recovered by inversion (%)")
    recovered.set_ylim(0, 105)
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.12, 1.0))
    recovered.legend(fontsize="x-small", loc="lower left", bbox_to_anchor=(1.12, 0.0))


def _eps_of(name: str) -> float:
    return float(name.rsplit("@", 1)[1])


def _non_private_utility(
    baselines: Mapping[str, Any], key: str = "server_rationale_acc"
) -> tuple[float, float] | None:
    """``key`` (and its standard error) of rationales written for the unperturbed prompts: a
    token strategy's eps = inf point, else the non-private upper bound; None if neither ran."""
    names = [n for n in baselines if n.endswith("@inf") and not n.startswith("fedcot-paraphrase")]
    for name in [*names, "cot_upper_bound"]:
        utility = baselines.get(name, {}).get("utility", {})
        if isinstance(utility.get(key), int | float):
            return float(utility[key]), float(utility.get(f"{key}_stderr", 0.0))
    return None


def half_gain(
    baselines: Mapping[str, Any], key: str = "server_rationale_acc"
) -> dict[str, dict[str, Any]]:
    """Per strategy swept, the smallest eps at which ``key`` reaches half of the non-private
    gain: low + (non_private - low) / 2, where non_private is ``key`` for unperturbed prompts
    (`_non_private_utility`) and low is the strategy's eps -> 0 end: its eps = 0 point, or
    (`UNIFORM_AT_ZERO`) EM's, else its smallest eps ("low_from" says which). "eps" is None
    where no point of the sweep reaches it. Point estimates: each side carries the standard
    error of its prompts (see "stderr")."""
    top = _non_private_utility(baselines, key)
    out: dict[str, dict[str, Any]] = {}
    if top is None:
        return out
    for strategy in STRATEGY_COLORS:
        points = _graded_points(baselines, strategy, key)
        if not points:
            continue
        low_from = f"fedcot-{strategy}@{points[0][0]:g}"
        if points[0][0] > 0 and strategy in UNIFORM_AT_ZERO:
            shared = _graded_points(baselines, UNIFORM_AT_ZERO[strategy], key)
            if shared and shared[0][0] == 0:
                low_from, points = f"fedcot-{UNIFORM_AT_ZERO[strategy]}@0", [shared[0], *points]
        low_eps, low = points[0][0], float(points[0][1][key])
        threshold = low + (top[0] - low) / 2
        reached = next((e for e, u in points if float(u[key]) >= threshold), None)
        out[strategy] = {
            "low_eps": low_eps,
            "low_from": low_from,
            "low": low,
            "non_private": top[0],
            "threshold": threshold,
            "eps": reached,
            "stderr": {f"{e:g}": u.get(f"{key}_stderr") for e, u in points},
            "curve": {f"{e:g}": float(u[key]) for e, u in points},
        }
    return out


UNIFORM_AT_ZERO = {"aem": "em", "krr": "em", "metric": "em"}
"""At eps = 0 EM, AEM, k-RR and metric DP all draw uniformly from a token's candidate set (the
same set for all four), so EM's eps = 0 point is also their eps -> 0 end (a sweep need not run
it four times). CusText (uniform inside the cluster) and the paraphrase are not."""


def _graded_points(
    baselines: Mapping[str, Any], strategy: str, key: str
) -> list[tuple[float, dict[str, Any]]]:
    """(eps, utility) of ``strategy``'s finite points that were graded on ``key``, by eps."""
    return sorted(
        (
            (_eps_of(name), outcome["utility"])
            for name, outcome in baselines.items()
            if name.startswith(f"fedcot-{strategy}@")
            and isinstance(outcome.get("utility", {}).get(key), int | float)
            and math.isfinite(_eps_of(name))
        ),
        key=lambda point: point[0],
    )


def half_gain_lines(results: dict[str, Any]) -> str:
    """Per task and strategy, in words: the smallest eps at which the server's rationales
    reach half of the non-private gain over the strategy's eps -> 0 end (`half_gain`)."""
    lines = []
    for task, entry in results["tasks"].items():
        for strategy, found in half_gain(entry["baselines"]).items():
            where = f"eps {found['eps']:g}" if found["eps"] is not None else "no eps of the sweep"
            lines.append(
                f"{task} {strategy}: server rationale acc {100 * found['low']:.1f} % at eps "
                f"{found['low_eps']:g} ({found['low_from']}), "
                f"{100 * found['non_private']:.1f} % non-private; half "
                f"the gain ({100 * found['threshold']:.1f} %) first reached at {where}"
            )
    return "\n".join(lines)
