"""`fedkt run` for FDKT: the [fdkt] section, the eps sweep, what a run writes and shows. The
federated runs are stubbed here; one real simulation is in tests/federation/test_fdkt_apps.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from fedkt.config import build_config, load_config
from fedkt.errors import ConfigError
from fedkt.experiments import fdkt as harness
from fedkt.experiments import plot_experiment
from fedkt.federation.fdkt import FDKTResult, FDKTSpec
from fedkt.report import write_json, write_jsonl

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_fdkt_section_parses_and_checks_its_values() -> None:
    config = build_config({"algorithm": "fdkt", "fdkt": {"eps": [1, math.inf], "n_prompts": 3}})
    assert config.algorithm == "fdkt" and config.fdkt.eps == (1.0, math.inf)
    settings = config.fdkt.settings(config.train, 1.0)
    assert (settings.eps, settings.delta, settings.n_prompts) == (1.0, 1e-5, 3)
    assert config.fdkt.settings(config.train, 1.0, use_llm=False).label == "dp_synthetic_only@1"
    for bad in ({"eps": [0.0]}, {"eps": [-1.0]}, {"delta": 1.0}, {"baselines": []},
                {"per_label": 0}, {"baselines": ["fdkt", "fdkt"]}):  # fmt: skip
        with pytest.raises(ConfigError):
            build_config({"fdkt": bad})


def test_the_shipped_config_loads() -> None:
    config = load_config(CONFIGS / "fdkt-ag-news.toml")
    assert config.algorithm == "fdkt" and config.data.tasks == ("ag_news",)
    assert math.isinf(config.fdkt.eps[-1])


def _config(tmp_path: Path, data_dir: Path, **fdkt: Any) -> Any:
    return build_config(
        {
            "output_dir": str(tmp_path),
            "algorithm": "fdkt",
            "data": {"dir": str(data_dir), "tasks": ["ag_news"], "split": "validation",
                     "limit": 4, "train_limit": 30},
            "federation": {"clients": 2},
            "fdkt": {"eps": [1.0, 8.0, math.inf], "delta": 1e-2,
                     "baselines": ["dp_synthetic_only", "fdkt"], **fdkt},
        }
    )  # fmt: skip


def _fake_run(spec: FDKTSpec) -> FDKTResult:
    """What a simulation leaves on the clients' disks: per-row predictions and reports."""
    eps = spec.settings.eps
    right = len(spec.eval_data) if math.isinf(eps) else min(len(spec.eval_data), int(eps) // 3)
    rows = [
        {"id": ex.id, "gold": ex.gold, "pred": 0, "correct": int(i < right), "correct_norm": 0}
        for i, ex in enumerate(spec.eval_data)
    ]
    for k in range(spec.num_clients):
        write_jsonl(Path(str(spec.predictions_dir)) / f"slm-client{k}.jsonl", rows)
        spent = math.inf if math.isinf(eps) else eps * 0.99
        report = {"synthesis": {"epsilon": spent, "private_rows": 8 + k}, "train": {"acc": 0.5}}
        write_json(Path(str(spec.reports_dir)) / f"client{k}.json", report)
    n = range(spec.num_clients)
    return FDKTResult(dict.fromkeys(n, 5), {"kept": 9}, {"kept": 3}, 3, dict.fromkeys(n, 3),
                      dict.fromkeys(n, 10), dict.fromkeys(n, 20), 1.0)  # fmt: skip


def test_the_sweep_runs_each_point_and_writes_privacy_table_and_plot(
    tmp_path: Path, shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, float]] = []

    def fake(spec: FDKTSpec) -> FDKTResult:
        calls.append((spec.settings.label, spec.settings.eps))
        return _fake_run(spec)

    monkeypatch.setattr(harness, "simulate_fdkt", fake)
    config = _config(tmp_path, shared_data_dir)
    results = harness.run_fdkt_experiment(config)
    assert calls == [("dp_synthetic_only@3", 3.0), ("fdkt@1", 1.0), ("fdkt@8", 8.0),
                     ("fdkt@inf", math.inf)]  # fmt: skip
    baselines = results["tasks"]["ag_news"]["baselines"]
    assert set(baselines) == {"dp_synthetic_only", "fdkt@1", "fdkt@8", "fdkt@inf"}
    assert baselines["fdkt@inf"]["slm"]["acc"] == 1.0
    privacy = baselines["fdkt@8"]["privacy"]
    assert privacy["epsilon_max"] == pytest.approx(7.92) and privacy["target_epsilon"] == 8.0
    assert privacy["mean_private_rows"] == 8.5
    assert (tmp_path / "ag_news" / "fdkt@8" / "server" / "augmented.jsonl").is_file()
    written = json.loads((tmp_path / "results.json").read_text())
    assert set(written["tasks"]["ag_news"]["baselines"]) == set(baselines)
    claims = {t["claim"] for t in results["tasks"]["ag_news"]["comparisons"]}
    assert "SLM fdkt@inf > dp_synthetic_only" in claims
    table = harness.privacy_table(results)
    assert "fdkt@8" in table and "7.92" in table and "inf" in table
    plot = plot_experiment(config, results, tmp_path / "results.png")
    assert plot.stat().st_size > 0


def test_claims_put_every_point_against_local_only() -> None:
    claims = harness.claims(["local_only", "fdkt@1", "fdkt@inf"])
    texts = {claim.text(0.01) for claim in claims}
    assert {"SLM fdkt@1 > local_only", "SLM fdkt@inf > local_only"} <= texts


def test_a_delta_above_one_over_n_is_refused_before_any_model(
    tmp_path: Path, shared_data_dir: Path
) -> None:
    config = _config(tmp_path, shared_data_dir, delta=0.2)  # 10-row clients: need < 0.1
    with pytest.raises(ConfigError, match="delta"):
        harness.FDKTTask.load(config, "ag_news")


def test_multiple_choice_tasks_are_refused(tmp_path: Path, shared_data_dir: Path) -> None:
    config = build_config(
        {
            "output_dir": str(tmp_path),
            "algorithm": "fdkt",
            "data": {"dir": str(shared_data_dir), "tasks": ["arc_easy"], "limit": 4,
                     "train_limit": 30},
            "federation": {"clients": 2},
            "fdkt": {"delta": 1e-2},
        }
    )  # fmt: skip
    with pytest.raises(ConfigError, match="classification tasks only"):
        harness.FDKTTask.load(config, "arc_easy")
