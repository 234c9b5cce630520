"""`fedkt run`: the [fedcollm] and [federation] sections, the split, and one end-to-end run of
all five baselines on tiny models (two Flower simulations on Ray)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import pytest

from fedkt.cli import main
from fedkt.config import BASELINES, FederationConfig, build_config
from fedkt.data import Example
from fedkt.errors import ConfigError
from fedkt.experiments import partition
from fedkt.experiments.fedcollm import METHODS as RUNNERS


def test_sections_parse_into_typed_settings() -> None:
    config = build_config(
        {
            "fedcollm": {"rounds": 2, "kd_steps": 3, "kd_top_k": 16, "aggregation": "weighted"},
            "federation": {"clients": 2, "partition": "dirichlet", "alpha": 0.5,
                           "baselines": ["fedavg", "fedcollm"]},
            "train": {"lr": 1e-3, "epochs": 2},
            "lora": {"r": 4},
        }
    )  # fmt: skip
    assert config.federation.baselines == ("fedavg", "fedcollm")
    settings = config.fedcollm.settings(config.train, config.lora)
    assert (settings.rounds, settings.kd_steps, settings.kd_top_k) == (2, 3, 16)
    assert settings.client == config.train and settings.lora == config.lora
    assert build_config({}).fedcollm.kd_top_k is None  # left out: full-vocabulary KD
    assert set(RUNNERS) == set(BASELINES) == set(FederationConfig().baselines)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"federation": {"client": 2}}, r"'federation.client'; did you mean 'clients'"),
        ({"fedcollm": {"kd_step": 2}}, r"'fedcollm.kd_step'; did you mean 'kd_steps'"),
        ({"fedcollm": {"client": {"lr": 1.0}}}, r"unknown setting 'fedcollm.client'"),
        ({"federation": {"baselines": ["fedprox"]}}, r"baselines = 'fedprox' must be one of"),
        ({"federation": {"baselines": ["fedavg", "fedavg"]}}, r"at most once"),
        ({"federation": {"partition": "shards"}}, r"partition = 'shards' must be one of"),
        ({"federation": {"clients": 0}}, r"clients=0"),
        ({"fedcollm": {"kd_steps": 0}}, r"kd_steps=0"),
    ],
)
def test_sections_are_strict(raw: dict[str, dict[str, object]], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_config(raw)


def _rows(n: int) -> list[Example]:
    return [Example(id=str(i), context=f"q{i}", choices=("a", "b"), gold=i % 2) for i in range(n)]


@pytest.mark.parametrize("how", ["fedcollm", "iid", "dirichlet"])
def test_partition_keeps_fedcollms_public_part_and_every_row(
    how: Literal["fedcollm", "iid", "dirichlet"],
) -> None:
    rows = _rows(50)
    clients, public = partition(rows, FederationConfig(clients=4, partition=how, alpha=0.3))
    _, fedcollm_public = partition(rows, FederationConfig(clients=4))
    assert public == fedcollm_public and len(public) == 10
    assert len(clients) == 4 and all(clients)
    assert sorted(ex.id for part in [*clients, public] for ex in part) == sorted(r.id for r in rows)
    if how == "fedcollm":
        assert [len(part) for part in clients] == [10, 10, 10, 10]


def test_run_compares_all_five_baselines_end_to_end(
    tiny_pair: tuple[Path, Path],
    shared_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in {"FLWR_HOME": str(tmp_path / "flwr"), "FLWR_TELEMETRY_ENABLED": "0",
                       "FLWR_DISABLE_UPDATE_CHECK": "1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)  # also undoes what `fedkt run` sets
    llm, slm = tiny_pair
    out = tmp_path / "out"
    config = tmp_path / "run.toml"
    config.write_text(
        f'output_dir = "{out}"\n'
        '[model]\ndtype = "float32"\ndevice = "cpu"\n'
        f'[data]\ndir = "{shared_data_dir}"\ntasks = ["ag_news"]\nlimit = 8\ntrain_limit = 15\n'
        "[train]\nlr = 1e-2\nbatch_size = 4\nmax_length = 64\n"
        "[lora]\nr = 4\nalpha = 8\ndropout = 0.0\n"
        "[fedcollm]\nrounds = 1\nkd_steps = 2\nkd_batch_size = 2\nllm_lr = 1e-2\nslm_lr = 1e-2\n"
        f'[federation]\nllm = "{llm}"\nslm = "{slm}"\nclients = 2\n'
        f"client_cpus = {os.cpu_count() or 1}\n"  # one Ray actor: one torch import
    )
    assert main(["run", str(config)]) == 0

    entry = json.loads((out / "results.json").read_text())["tasks"]["ag_news"]
    assert entry["rows"] == {"clients": [5, 5], "public": 5, "dev": 200, "eval": 8}
    runs = entry["baselines"]
    assert list(runs) == list(BASELINES)
    assert runs["standalone"]["llm"] is None and len(runs["standalone"]["clients"]) == 2
    for name in BASELINES:
        slm = runs[name]["slm"]
        assert slm["n"] == 8 and runs[name]["seconds"] > 0
        assert slm["acc_stderr"] == pytest.approx(_stderr(out, name, slm["acc"]), abs=1e-9)
        predictions = out / "predictions" / "ag_news" / name
        slm_file = "slm-client0.jsonl" if name == "standalone" else "slm.jsonl"
        assert (predictions / slm_file).is_file()
        if name != "standalone":
            assert 0.0 <= runs[name]["llm"]["acc"] <= 1.0
            assert (predictions / "llm.jsonl").is_file() or name == "fedavg"  # its LLM: zero-shot
    claims = {test["claim"]: test for test in entry["comparisons"]}
    assert "SLM fedcollm > fedavg" in claims and "LLM fedcollm >= centralized - 1 pt" in claims
    for test in claims.values():
        assert test["n"] == 8 and 0.0 <= test["p_value"] <= 1.0 and isinstance(test["holds"], bool)
    assert runs["fedavg"]["llm"] == runs["zero_shot"]["llm"]  # its LLM is never trained
    (point,) = runs["fedcollm"]["curve"]  # one round, scored once
    assert point["round"] == 1 and point["slm"] == runs["fedcollm"]["slm"]
    for name in ("fedavg", "fedcollm"):
        (record,) = runs[name]["rounds"]
        assert len(record["bytes_down"]) == len(record["bytes_up"]) == 2
        assert runs[name]["total_bytes"] == sum(record["bytes_down"].values()) + sum(
            record["bytes_up"].values()
        )
    assert "distil_loss" in runs["fedcollm"]["rounds"][0]["metrics"]
    assert "distil_loss" not in runs["fedavg"]["rounds"][0]["metrics"]

    assert (out / "results.png").read_bytes().startswith(b"\x89PNG")
    folder = out / "ag_news"
    for method, adapters in {
        "fedcollm": ("llm", "slm"),
        "fedavg": ("slm",),
        "centralized": ("llm", "slm"),
        "standalone": ("clients/0/slm", "clients/1/slm"),
        "zero_shot": (),
    }.items():
        run = json.loads((folder / method / "run.json").read_text())
        assert run["method"] == method and run["base_models"]["slm"] == str(tiny_pair[1])
        assert run["metrics"]["slm"] == runs[method]["slm"]
        for adapter in adapters:
            config = json.loads((folder / method / adapter / "adapter_config.json").read_text())
            assert config["peft_type"] == "LORA"
            assert (folder / method / adapter / "adapter_model.safetensors").is_file()
    assert not (folder / "fedavg" / "llm").exists()  # FedAvg never trains the LLM
    table = capsys.readouterr().out
    assert all(name in table for name in BASELINES)
    assert "±" in table and "SLM fedcollm > fedavg" in table


def _stderr(out: Path, name: str, acc: float) -> float:
    """The standard error of the SLM's per-row correctness (row means over clients)."""
    folder = out / "predictions" / "ag_news" / name
    files = sorted(folder.glob("slm-client*.jsonl")) or [folder / "slm.jsonl"]
    per_file = [[json.loads(line)["correct"] for line in f.read_text().splitlines()] for f in files]
    rows = [sum(values) / len(values) for values in zip(*per_file, strict=True)]
    assert sum(rows) / len(rows) == pytest.approx(acc)
    mean = sum(rows) / len(rows)
    return (sum((r - mean) ** 2 for r in rows) / (len(rows) - 1) / len(rows)) ** 0.5
