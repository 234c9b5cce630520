"""`fedkt run` for FedCoT: the [fedcot] section, the eps sweep (inf run once for every
strategy), what a run writes and shows. The federated runs themselves are stubbed here; one
real simulation is in tests/federation/test_fedcot_apps.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from fedkt.config import build_config
from fedkt.errors import ConfigError
from fedkt.experiments import fedcot as harness
from fedkt.federation.fedcot import FedCoTSpec


def test_fedcot_section_parses_and_checks_its_values() -> None:
    config = build_config(
        {"algorithm": "fedcot", "fedcot": {"eps": [1, 3.0, math.inf], "strategies": ["aem"]}}
    )
    assert config.algorithm == "fedcot" and config.fedcot.eps == (1.0, 3.0, math.inf)
    settings = config.fedcot.settings(config.train, "aem", 3.0)
    assert (settings.strategy, settings.eps, settings.alpha) == ("aem", 3.0, 0.5)
    assert settings.rationale.max_new_tokens == config.fedcot.rationale_tokens
    for bad in ({"eps": [-1.0]}, {"strategies": []}, {"alpha": 2.0}, {"strategies": ["gauss"]}):
        with pytest.raises(ConfigError):
            build_config({"fedcot": bad})
    with pytest.raises(ConfigError, match="did you mean 'eps'"):
        build_config({"fedcot": {"epss": [1.0]}})


def _fake_outcome(spec: FedCoTSpec) -> dict[str, Any]:
    eps = spec.settings.eps
    recovered = 1.0 if math.isinf(eps) else min(1.0, eps / 20)
    return {
        "llm": None,
        "slm": {"acc": 0.25 + 0.01 * (0 if math.isinf(eps) else eps), "n": 4.0},
        "privacy": {
            "prompt_eps_mean": eps * 10,
            "protected_recovered": recovered,
            "all_recovered": recovered,
            "gold_answer_leak_rate": 0.0,
        },
        "seconds": 1.0,
    }


def test_the_sweep_runs_each_point_once_and_writes_table_and_plot(
    tmp_path: Path, shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, float]] = []

    def fake(spec: FedCoTSpec) -> dict[str, Any]:
        calls.append((spec.settings.strategy, spec.settings.eps))
        return _fake_outcome(spec)

    monkeypatch.setattr(harness, "_federated", fake)
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
    assert rows == {"clients": [3, 3], "public": 3, "eval": 4}
    table = harness.privacy_table(results)
    assert "fedcot-em@10" in table and "inf" in table and "50.0" in table
    plot = harness.plot_fedcot(results, tmp_path / "results.png")
    assert plot.stat().st_size > 0
