"""`fedkt run` for FDKT: the [fdkt] section, the eps sweep, what a run writes and shows. The
federated runs are stubbed here; one real simulation is in tests/federation/test_fdkt_apps.py."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedkt.config import build_config, load_config
from fedkt.data.augmentation import LabelledText
from fedkt.data.synthetic import McItem, format_item
from fedkt.errors import ConfigError
from fedkt.experiments import fdkt as harness
from fedkt.experiments import plot_experiment
from fedkt.federation.fdkt import FDKTResult, FDKTSpec
from fedkt.report import write_json, write_jsonl

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class FakeEmbedder:
    """Bag of word lengths: enough for the distance-to-closest-record audit's shapes."""

    def encode(self, texts: Any, **_: Any) -> np.ndarray:
        out = np.ones((len(texts), 8), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.split():
                out[i, len(word) % 8] += 1.0
        return out


def test_zero_shot_augmentation_trains_each_client_on_what_the_llm_wrote(
    tmp_path: Path, shared_data_dir: Path, tiny_pair: tuple[Path, Path]
) -> None:
    llm, slm = tiny_pair
    config = build_config(
        {
            "output_dir": str(tmp_path / "run"),
            "algorithm": "fdkt",
            "data": {"dir": str(shared_data_dir), "tasks": ["ag_news"], "split": "validation",
                     "limit": 4, "train_limit": 30},
            "federation": {"clients": 2, "llm": str(llm), "slm": str(slm)},
            "train": {"epochs": 1, "batch_size": 4, "max_length": 64},
            "fdkt": {"eps": [8.0], "delta": 1e-2, "baselines": ["zero_shot_augmentation"],
                     "n_prompts": 2, "augment_tokens": 8, "label_field": "Topic"},
        }
    )  # fmt: skip
    results = harness.run_fdkt_experiment(config)
    outcome = results["tasks"]["ag_news"]["baselines"]["zero_shot_augmentation"]
    assert outcome["slm"]["n"] == 4 and len(outcome["clients"]) == 2
    assert outcome["server"]["augmentation"]["responses"] == 2
    written = tmp_path / "run" / "ag_news" / "zero_shot_augmentation" / "server"
    assert (written / "augmented.jsonl").is_file()
    store = tmp_path / "run" / "responses" / "ag_news-zero_shot_augmentation.jsonl"
    assert len(store.read_text().splitlines()) == 2  # resumable: answers on disk


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
    audit = {"exposure": {"max_exposure": 1.5, "max_exposure_possible": 9.0},
             "in_sent": {"n_found": 0, "n_canaries": spec.canaries}}  # fmt: skip
    for k in range(spec.num_clients):
        write_jsonl(Path(str(spec.predictions_dir)) / f"slm-client{k}.jsonl", rows)
        spent = math.inf if math.isinf(eps) else eps * 0.99
        report = {"synthesis": {"epsilon": spent, "private_rows": 8 + k}, "train": {"acc": 0.5}}
        write_json(Path(str(spec.reports_dir)) / f"client{k}.json",
                   {**report, "audit": audit} if k == 0 and spec.canaries else report)  # fmt: skip
    n = range(spec.num_clients)
    sent = tuple(LabelledText("World", f"synthetic story {i} about the world") for i in range(6))
    return FDKTResult(dict.fromkeys(n, 5), {"kept": 9}, {"kept": 3}, 3, dict.fromkeys(n, 3),
                      dict.fromkeys(n, 10), dict.fromkeys(n, 20), 1.0,
                      received_samples=sent)  # fmt: skip


def test_the_sweep_runs_each_point_and_writes_privacy_table_and_plot(
    tmp_path: Path, shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, float]] = []

    def fake(spec: FDKTSpec) -> FDKTResult:
        calls.append((spec.settings.label, spec.settings.eps))
        return _fake_run(spec)

    monkeypatch.setattr(harness, "simulate_fdkt", fake)
    monkeypatch.setattr(harness, "load_embedder", lambda name: FakeEmbedder())
    config = _config(tmp_path, shared_data_dir, canaries=2)
    results = harness.run_fdkt_experiment(config)
    assert calls == [("dp_synthetic_only@3", 3.0), ("fdkt@1", 1.0), ("fdkt@8", 8.0),
                     ("fdkt@inf", math.inf)]  # fmt: skip
    baselines = results["tasks"]["ag_news"]["baselines"]
    assert set(baselines) == {"dp_synthetic_only", "fdkt@1", "fdkt@8", "fdkt@inf"}
    assert baselines["fdkt@inf"]["slm"]["acc"] == 1.0
    privacy = baselines["fdkt@8"]["privacy"]
    assert privacy["epsilon_max"] == pytest.approx(7.92) and privacy["target_epsilon"] == 8.0
    assert privacy["mean_private_rows"] == 8.5
    assert privacy["audit"]["canaries"]["in_sent"] == {"n_found": 0, "n_canaries": 2}
    dcr = privacy["audit"]["dcr"]
    assert dcr["n_synthetic"] == 6 and dcr["n_compared"] == 4  # 4 held-out rows bound it
    assert 0 <= dcr["closer_to_train"] <= 1 and 0 < dcr["p_value"] <= 1
    assert (tmp_path / "ag_news" / "fdkt@8" / "server" / "augmented.jsonl").is_file()
    written = json.loads((tmp_path / "results.json").read_text())
    assert set(written["tasks"]["ag_news"]["baselines"]) == set(baselines)
    claims = {t["claim"] for t in results["tasks"]["ag_news"]["comparisons"]}
    assert "SLM fdkt@inf > dp_synthetic_only" in claims
    table = harness.privacy_table(results)
    assert "fdkt@8" in table and "7.92" in table and "inf" in table
    assert "1.5 of 9.0 bits" in table and "0 of 2" in table
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


def _mc_config(tmp_path: Path, data_dir: Path, task: str = "arc_easy", **fdkt: Any) -> Any:
    return build_config(
        {
            "output_dir": str(tmp_path),
            "algorithm": "fdkt",
            "data": {"dir": str(data_dir), "tasks": [task], "limit": 4, "train_limit": 30},
            "federation": {"clients": 2},
            "fdkt": {"eps": [8.0], "delta": 1e-2, "baselines": ["dp_synthetic_only", "fdkt"],
                     **fdkt},
        }
    )  # fmt: skip


def test_multiple_choice_tasks_run_and_generative_ones_are_refused(
    tmp_path: Path, shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = tuple(
        McItem(f"Which synthetic question {i} about rocks is right?", ("a", "b", "c", "d"), i % 4)
        for i in range(5)
    )
    specs: list[FDKTSpec] = []

    def fake(spec: FDKTSpec) -> FDKTResult:
        specs.append(spec)
        result = _fake_run(spec)
        return dataclasses.replace(result, received_samples=items, sent_samples=items[:3])

    monkeypatch.setattr(harness, "simulate_fdkt", fake)
    monkeypatch.setattr(harness, "load_embedder", lambda name: FakeEmbedder())
    config = _mc_config(tmp_path, shared_data_dir)
    run = harness.FDKTTask.load(config, "arc_easy")
    assert run.n_choices == 4 and run.labels == ()
    assert run.holdout_texts[0] == format_item(run.format.item(run.data.evaluation[0]))  # type: ignore[union-attr]
    assert len(run.private_texts) == 20  # 2 clients x 10 rows (30 train rows in 3 parts)
    results = harness.run_fdkt_experiment(config)
    assert [s.settings.label for s in specs] == ["dp_synthetic_only@3", "fdkt@8"]
    assert all(s.n_choices == 4 and s.canaries == 0 for s in specs)
    baselines = results["tasks"]["arc_easy"]["baselines"]
    assert baselines["fdkt@8"]["slm"]["n"] == 4
    dcr = baselines["fdkt@8"]["privacy"]["audit"]["dcr"]
    assert dcr["n_synthetic"] == 5 and dcr["n_compared"] == 4  # formatted items, like for like
    assert baselines["fdkt@8"]["privacy"]["audit"]["canaries"] is None
    server = tmp_path / "arc_easy" / "fdkt@8" / "server"
    written = [json.loads(line) for line in (server / "synthetic.jsonl").read_text().splitlines()]
    assert written[0] == {"question": items[0].question, "choices": list("abcd"), "answer": 0}
    with pytest.raises(ConfigError, match="canary audit supports classification"):
        harness.FDKTTask.load(_mc_config(tmp_path, shared_data_dir, canaries=2), "arc_easy")
    gsm8k = _mc_config(tmp_path, shared_data_dir, "gsm8k")
    with pytest.raises(ConfigError, match="generative"):
        harness.FDKTTask.load(dataclasses.replace(gsm8k, data=dataclasses.replace(
            gsm8k.data, split="train[-4:]")), "gsm8k")  # fmt: skip


def test_local_only_and_zero_shot_augmentation_run_on_a_multiple_choice_task(
    tmp_path: Path,
    shared_data_dir: Path,
    tiny_pair: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    llm, slm = tiny_pair
    prompts: list[str] = []
    make_backend = harness.make_backend

    class Recording:  # the tiny LLM, with its prompts kept
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.backend = make_backend(*args, **kwargs)

        def generate(self, batch: list[str], settings: Any) -> list[str]:
            prompts.extend(batch)
            return self.backend.generate(batch, settings)

    monkeypatch.setattr(harness, "make_backend", Recording)
    config = build_config(
        {
            "output_dir": str(tmp_path / "run"),
            "algorithm": "fdkt",
            "data": {"dir": str(shared_data_dir), "tasks": ["arc_easy"], "limit": 4,
                     "train_limit": 12},
            "federation": {"clients": 2, "llm": str(llm), "slm": str(slm)},
            "train": {"epochs": 1, "batch_size": 4, "max_length": 64},
            "fdkt": {"eps": [8.0], "delta": 1e-2, "n_prompts": 2, "augment_tokens": 8,
                     "baselines": ["local_only", "zero_shot_augmentation"],
                     "domain": "of grade-school science"},
        }
    )  # fmt: skip
    results = harness.run_fdkt_experiment(config)
    baselines = results["tasks"]["arc_easy"]["baselines"]
    assert baselines["local_only"]["slm"]["n"] == 4
    outcome = baselines["zero_shot_augmentation"]
    assert outcome["slm"]["n"] == 4 and len(outcome["clients"]) == 2
    assert outcome["server"]["augmentation"]["responses"] == 2
    store = tmp_path / "run" / "responses" / "arc_easy-zero_shot_augmentation.jsonl"
    assert len(store.read_text().splitlines()) == 2
    assert len(prompts) == 2 and all("Examples:" not in p for p in prompts)
    assert all("exactly 4 choices" in p and "grade-school" in p for p in prompts)
