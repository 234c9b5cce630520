"""`fedkt run` for FedCoT: the [fedcot] section, the eps sweep (inf run once for every
strategy), what a run writes and shows. The federated runs themselves are stubbed here; one
real simulation is in tests/federation/test_fedcot_apps.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedkt.config import build_config
from fedkt.errors import ConfigError
from fedkt.experiments import fedcot as harness
from fedkt.federation.fedcot import FedCoTResult, FedCoTSpec
from fedkt.report import write_json, write_jsonl


def test_fedcot_section_parses_and_checks_its_values() -> None:
    config = build_config(
        {"algorithm": "fedcot", "fedcot": {"eps": [1, 3.0, math.inf], "strategies": ["aem"]}}
    )
    assert config.algorithm == "fedcot" and config.fedcot.eps == (1.0, 3.0, math.inf)
    settings = config.fedcot.settings(config.train, "aem", 3.0)
    assert (settings.strategy, settings.eps, settings.alpha) == ("aem", 3.0, 0.5)
    assert settings.rationale.max_new_tokens == config.fedcot.rationale_tokens
    assert (settings.noise_seed, settings.candidates) == (None, "classes")  # secrets by default
    chosen = build_config({"fedcot": {"noise_seed": 4, "candidates": "vocabulary"}}).fedcot
    assert (chosen.noise_seed, chosen.settings(config.train).candidates) == (4, "vocabulary")
    bad_values: list[dict[str, object]] = [
        {"eps": [-1.0]},
        {"strategies": []},
        {"alpha": 2.0},
        {"strategies": ["gauss"]},
        {"candidates": "words"},
        {"noise_seed": 1.5},
    ]
    for bad in bad_values:
        with pytest.raises(ConfigError):
            build_config({"fedcot": bad})
    with pytest.raises(ConfigError, match="did you mean 'eps'"):
        build_config({"fedcot": {"epss": [1.0]}})


def _fake_run(spec: FedCoTSpec) -> FedCoTResult:
    """What a simulation leaves: each client's per-row predictions and its own report (privacy
    numbers, scores) on its disk; the server sees counts only. Better at higher eps, so the
    sweep has a shape."""
    eps = spec.settings.eps
    recovered = 1.0 if math.isinf(eps) else min(1.0, eps / 20)
    privacy = {
        "noise": "secrets",
        "candidates": spec.settings.candidates,
        "released_in_clear": "punctuation",
        "prompt_eps_mean": eps * 10,
        "protected_recovered": recovered,
        "prior_only_recovered": 0.125,
        "all_recovered": recovered,
        "gold_answer_leak_rate": 0.0,
        "pattern_unique_rate": 0.75,
    }
    right = len(spec.eval_data) if math.isinf(eps) else min(len(spec.eval_data), int(eps) // 3)
    rows = [
        {"id": ex.id, "gold": ex.gold, "pred": 0, "correct": int(i < right), "correct_norm": 0}
        for i, ex in enumerate(spec.eval_data)
    ]
    result = {"acc": right / len(rows), "n": float(len(rows))}
    for k in range(spec.num_clients):
        write_jsonl(Path(str(spec.predictions_dir)) / f"slm-client{k}.jsonl", rows)
        write_json(Path(str(spec.reports_dir)) / f"client{k}.json",
                   {"privacy": privacy, "train": result})  # fmt: skip
    n = spec.num_clients
    return FedCoTResult((3,) * n, (3,) * n, dict.fromkeys(range(n), 10),
                        dict.fromkeys(range(n), 20), 1.0)  # fmt: skip


def test_the_sweep_runs_each_point_once_and_writes_table_and_plot(
    tmp_path: Path, shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, float]] = []

    def fake(spec: FedCoTSpec) -> FedCoTResult:
        calls.append((spec.settings.strategy, spec.settings.eps))
        assert spec.label_names == () and spec.settings.noise_seed is None  # ARC: choices private
        assert len(spec.pattern_reference) == 2251  # ARC-Easy's whole train split (public)
        return _fake_run(spec)

    monkeypatch.setattr(harness, "simulate_fedcot", fake)
    config = build_config(
        {
            "output_dir": str(tmp_path),
            "algorithm": "fedcot",
            "data": {"dir": str(shared_data_dir), "tasks": ["arc_easy"], "limit": 4,
                     "train_limit": 9},
            "federation": {"clients": 2},
            "fedcot": {"eps": [1.0, 10.0, math.inf], "baselines": ["cot_upper_bound", "fedcot"]},
        }
    )  # fmt: skip
    results = harness.run_fedcot_experiment(config)
    assert calls == [("none", math.inf), ("em", 1.0), ("em", 10.0), ("em", math.inf),
                     ("aem", 1.0), ("aem", 10.0)]  # fmt: skip
    baselines = results["tasks"]["arc_easy"]["baselines"]
    assert baselines["fedcot-aem@inf"]["same_run_as"] == "fedcot-em@inf"
    written = json.loads((tmp_path / "results.json").read_text())
    assert set(written["tasks"]["arc_easy"]["baselines"]) == set(baselines)
    rows = results["tasks"]["arc_easy"]["rows"]
    assert rows == {"clients": [3, 3], "public": 3, "dev": 200, "eval": 4}
    inf_point = baselines["fedcot-em@inf"]["slm"]
    assert (inf_point["acc"], inf_point["acc_stderr"], inf_point["n"]) == (1.0, 0.0, 4)
    low = baselines["fedcot-em@1"]["slm"]
    assert low["acc"] == 0.0 and (tmp_path / "predictions/arc_easy/fedcot-em@1").is_dir()
    tests = {t["claim"]: t for t in results["tasks"]["arc_easy"]["comparisons"]}
    assert tests["SLM cot_upper_bound > fedcot-em@1"]["test"] == "mcnemar-exact"
    assert tests["SLM cot_upper_bound > fedcot-em@1"]["p_value"] == pytest.approx(2 / 2**4)
    privacy = baselines["fedcot-em@10"]["privacy"]  # read back from the clients' reports
    assert privacy["prompt_eps_mean"] == 100.0 and privacy["noise"] == "secrets"
    assert baselines["fedcot-em@inf"]["privacy"]["prompt_eps_mean"] == math.inf
    assert baselines["fedcot-em@10"]["clients"] == [{"acc": 0.75, "n": 4.0}] * 2
    table = harness.privacy_table(results)
    assert "fedcot-em@10" in table and "inf" in table and "50.0" in table
    assert "secrets" in table and "12.5" in table and "75.0" in table
    plot = harness.plot_fedcot(results, tmp_path / "results.png")
    assert plot.stat().st_size > 0
