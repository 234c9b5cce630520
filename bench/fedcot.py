"""FedCoT on AG News with the embedded models: utility against epsilon for every mechanism.

AG News is the decisive task on the embedded pair: the server LLM (SmolLM2-135M-Instruct) is
clearly above chance there (~48 % zero-shot in FedCoT's predict format against 25 %), so a
rationale's accuracy can move with eps; on ARC-Easy in FedCoT's format it sits at chance.
Config: configs/fedcot-ag-news.toml (2 clients x 50 private articles, 50 public, 800
validation rows for the SLMs, seeded noise so both phases see the same perturbed prompts).

1. ``sweep`` (`[fedcot] train_slm = false`: no SLM is trained): per mechanism its eps -> 0
   end and about three knee points, the eps where its retention r(eps) on public text
   crosses ~20, 50 and 80 % (`fedkt.privacy.retention.MEASURED_GRIDS`, bench/
   fedcot_retention.py), plus the unperturbed prompts once: at each point the server
   rationale's and the recovered rationale's answer accuracy over the clients' 100 prompts
   (graded by the clients with their own labels), the privacy report, the eps composition.
   Per mechanism the smallest eps reaching half of the non-private gain
   (`fedkt.experiments.fedcot.half_gain`; EM's eps = 0 point is also AEM's, k-RR's and
   metric DP's eps -> 0 end: all four draw uniformly from the same candidate set there).
2. ``train``: both models zero-shot, standalone (labels only), the non-private upper bound,
   and FedCoT trained at the half-gain knee of EM and of the best other mechanism (the one
   whose knee costs the smallest mean prompt eps), with paired tests against standalone and
   the upper bound. The server's answers are reused from the sweep (same seeded prompts).

Writes bench/results/fedcot.json (both phases, the half-gain table, budgets) and
bench/results/fedcot.png (server rationale accuracy against eps per mechanism with the
non-private line, the SLMs trained at the knees, the baselines as bands). Resumable: each
phase continues its results.json (`--resume` semantics), so it can run in chunks.

    .venv/bin/python bench/fedcot.py                  # both phases, ~90 min on 2 idle CPU cores
    .venv/bin/python bench/fedcot.py --phase sweep --strategies em krr   # a chunk
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from pathlib import Path
from typing import Any

from fedkt.config import FedktConfig, load_config, with_overrides
from fedkt.experiments import results_table, run_experiment
from fedkt.experiments.fedcot import half_gain, plot_fedcot, privacy_table
from fedkt.experiments.summary import comparisons_table
from fedkt.report import read_json, write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CONFIG = REPO / "configs" / "fedcot-ag-news.toml"
TASK = "ag_news"
INF = math.inf
SWEEP_GRIDS: dict[str, tuple[float, ...]] = {
    "em": (INF, 0.0, 36.0, 50.0, 73.0),
    "krr": (8.7, 10.0, 12.0),
    "custext": (0.0, 11.0, 21.0, 35.0),
    "metric": (13.0, 16.0, 19.0),
    "aem": (40.0, 54.0, 78.0),
    "paraphrase": (0.0, 24.0, 40.0, 60.0),
}
"""Per mechanism ("classes" candidates, CusText with EM inside, K = 20): eps -> 0 (EM's 0
serves AEM, k-RR and metric DP) and the measured knees at r ~ 20, 50, 80 % (CusText's r never
drops below 1/K = 5 %, so its knees are r ~ 20, 50, 80 %: 11, 21, 35). The paraphrase's eps
is per generated token with logits clipped to [-10, 10] (temperature 40 / eps: 24, 40, 60 are
temperatures 1.7, 1.0, 0.67, DP-Prompt's range); it has no retention curve."""


def main() -> None:
    args = _args()
    start = time.perf_counter()
    base = load_config(args.config)
    out = Path(args.output_dir)
    if args.phase in ("sweep", "all"):
        sweep = run_experiment(_sweep_config(base, out / "sweep", args.strategies), resume=True)
        print(privacy_table(sweep))
    if args.phase in ("train", "all"):
        sweep = read_json(out / "sweep" / "results.json")
        knees = _knees(sweep["tasks"][TASK]["baselines"], args.best)
        _reuse_answers(out / "sweep", out / "train")
        train = run_experiment(_train_config(base, out / "train", knees), resume=True)
        print(results_table(train))
        print(comparisons_table(train))
    merged = _write(out, time.perf_counter() - start)
    print(privacy_table(merged["sweep"]) if merged.get("sweep") else "")


def _sweep_config(base: FedktConfig, out: Path, strategies: list[str]) -> FedktConfig:
    grids = {s: SWEEP_GRIDS[s] for s in strategies}
    fedcot = with_overrides(
        base.fedcot,
        baselines=("fedcot",),
        strategies=tuple(strategies),
        grids=grids,
        train_slm=False,
    )
    return with_overrides(base, output_dir=str(out), fedcot=fedcot)


def _train_config(base: FedktConfig, out: Path, knees: dict[str, float]) -> FedktConfig:
    """The baselines, and FedCoT trained at each knee (none found: the baselines only)."""
    baselines = base.fedcot.baselines if knees else ("zero_shot", "standalone", "cot_upper_bound")
    fedcot = with_overrides(
        base.fedcot,
        baselines=baselines,
        strategies=tuple(knees) or base.fedcot.strategies,
        grids={strategy: (eps,) for strategy, eps in knees.items()},
    )
    return with_overrides(base, output_dir=str(out), fedcot=fedcot)


def _knees(baselines: dict[str, Any], best: str | None) -> dict[str, float]:
    """EM's half-gain eps and the best other mechanism's: ``best`` if given, else the one whose
    half-gain point costs the smallest mean prompt eps (the whole question's guarantee),
    among those whose neighbours are any two candidate tokens (CusText's guarantee covers
    only words of one cluster, so its eps is not comparable)."""
    found = {s: f for s, f in half_gain(baselines).items() if f["eps"] is not None}
    if best is None:
        others = [s for s in found if s not in ("em", "custext")]
        best = min(others, key=lambda s: _prompt_eps(baselines, s, found[s]["eps"]), default=None)
    knees = {s: found[s]["eps"] for s in ("em", best) if s in found}
    for strategy in {"em", best} - set(knees) - {None}:
        print(f"{strategy}: no point of the sweep reaches half the non-private gain; not trained")
    return knees


def _prompt_eps(baselines: dict[str, Any], strategy: str, eps: float) -> float:
    privacy = baselines[f"fedcot-{strategy}@{eps:g}"]["privacy"]
    value = privacy.get("prompt_eps_mean", INF)
    return INF if value in (None, "inf") else float(value)


def _reuse_answers(sweep: Path, train: Path) -> None:
    """Copy the sweep's server answers (one JSONL per point, keyed by the perturbed prompt,
    which the seeded noise makes the same) where the train phase's server looks first."""
    source, target = sweep / "responses", train / "responses"
    target.mkdir(parents=True, exist_ok=True)
    for path in source.glob("*.jsonl"):
        if not (target / path.name).exists():
            shutil.copyfile(path, target / path.name)


def _write(out: Path, seconds: float) -> dict[str, Any]:
    merged: dict[str, Any] = {
        "budget": (
            "2 CPU cores, no GPU (no device was lent to this task); measured: one sweep "
            "point (100 server rationales and 100 recoveries of <= 64 tokens) 124-577 s "
            "(median ~210 s, more when other jobs shared the cores), a trained point ~6 min, "
            "the 5-method train phase 23 min; AEM and the paraphrase were swept in a second "
            "chunk (--phase sweep --strategies aem paraphrase, ~30 min)"
        ),
        "config": str(CONFIG.relative_to(REPO)),
        "wall_seconds_this_call": round(seconds, 1),
        "standard_error": (
            "rationale accuracy: over the clients' 100 prompts pooled (s.e. ~5 points); SLM: "
            "800 validation rows, mean of the 2 clients' SLMs per row; paired tests McNemar"
        ),
    }
    for phase in ("sweep", "train"):
        path = out / phase / "results.json"
        if path.is_file():
            merged[phase] = read_json(path)
    if "sweep" in merged:
        sweep = merged["sweep"]["tasks"][TASK]["baselines"]
        merged["half_gain"] = half_gain(sweep)
        merged["points"] = {name: _point(outcome) for name, outcome in sweep.items()}
        plot_fedcot(_plotted(merged), RESULTS / "fedcot.png")
    write_json(RESULTS / "fedcot.json", merged)
    return merged


def _point(outcome: dict[str, Any]) -> dict[str, Any]:
    """One sweep point in brief: the rationales' accuracy (%), the privacy report's figures."""
    utility, privacy = outcome.get("utility", {}), outcome.get("privacy", {})
    return {
        **{k: utility.get(k) for k in POINT_UTILITY},
        **{k: privacy.get(k) for k in POINT_PRIVACY},
        "seconds": outcome.get("seconds"),
    }


POINT_UTILITY = (
    "server_rationale_acc",
    "server_rationale_acc_stderr",
    "recovered_rationale_acc",
    "recovered_rationale_acc_stderr",
    "prompts",
    "rationales_kept",
)
POINT_PRIVACY = (
    "prompt_eps_mean",
    "protected_recovered",
    "prior_only_recovered",
    "pattern_unique_rate",
    "released_in_clear",
    "noise",
)


def _plotted(merged: dict[str, Any]) -> dict[str, Any]:
    """The sweep's points with the SLMs trained at the knees and the train phase's baselines
    (the knees' prompts are the sweep's: same seeded noise), for one panel."""
    baselines = {name: dict(o) for name, o in merged["sweep"]["tasks"][TASK]["baselines"].items()}
    trained = merged.get("train", {}).get("tasks", {}).get(TASK, {}).get("baselines", {})
    for name, outcome in trained.items():
        if name in baselines:
            baselines[name]["slm"] = outcome.get("slm")
        elif not name.startswith("fedcot-"):
            baselines[name] = outcome
    return {"tasks": {TASK: {"baselines": baselines}}}


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=["sweep", "train", "all"], default="all")
    parser.add_argument("--strategies", nargs="+", choices=list(SWEEP_GRIDS),
                        default=list(SWEEP_GRIDS))  # fmt: skip
    parser.add_argument("--best", choices=list(SWEEP_GRIDS), help="train at this mechanism's knee")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--output-dir", default=str(REPO / "runs" / "bench-fedcot-ag-news"))
    return parser.parse_args()


if __name__ == "__main__":
    main()
