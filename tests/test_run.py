"""`fedkt run`: the [fedcollm] and [federation] sections, the split, and one end-to-end run of
all five baselines and FedCoLLM without public data on tiny models (Flower simulations on
Ray)."""

from __future__ import annotations

import json
import os
import typing
from pathlib import Path
from typing import Literal

import pytest

from fedkt.cli import main
from fedkt.config import BASELINES, Baseline, FederationConfig, build_config
from fedkt.data import Example
from fedkt.errors import ConfigError
from fedkt.experiments import partition
from fedkt.experiments.fedcollm import METHODS as RUNNERS
from fedkt.experiments.fedcollm import FedCoLLMTask


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
    assert set(RUNNERS) == set(typing.get_args(Baseline))
    assert FederationConfig().baselines == BASELINES  # the paper's five (+ server CE) unless named
    assert "fedcollm_dp_aux" not in BASELINES and config.fedcollm.aux_source == "public"
    dp = build_config({"fedcollm": {"aux_source": "dp_synthetic", "eps": 8, "delta": 1e-3,
                                    "per_label": 3, "label_field": "Topic"}})  # fmt: skip
    aux = dp.fedcollm.settings(dp.train, dp.lora)
    assert aux.aux_source == "dp_synthetic" and aux.dp_aux.per_label == 3
    assert (aux.dp_aux.dp.target_epsilon, aux.dp_aux.dp.delta) == (8.0, 1e-3)
    assert aux.dp_aux.label_field == "Topic" and aux.dp_aux.seed == aux.seed


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
        ({"fedcollm": {"aux_source": "synthetic"}}, r"aux_source = 'synthetic' must be one of"),
        ({"fedcollm": {"aux_sorce": "public"}}, r"did you mean 'aux_source'"),
        ({"fedcollm": {"delta": 1.5}}, r"delta=1.5"),
        ({"fedcollm": {"eps": 0}}, r"target_epsilon=0"),
        ({"fedcollm": {"label_field": "A|B"}}, r"field='A\|B'"),
    ],
)
def test_sections_are_strict(raw: dict[str, dict[str, object]], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_config(raw)


@pytest.mark.parametrize(
    ("fedcollm", "tasks", "baselines", "match"),
    [
        ({"delta": 0.25}, ["ag_news"], ["fedcollm_dp_aux"], r"delta=0.25 must be in \(0, 1/N\)"),
        ({}, ["arc_easy"], ["fedcollm_dp_aux"], r"classification tasks only"),
        ({"aux_source": "dp_synthetic"}, ["arc_easy"], ["fedcollm"], r"classification tasks"),
        ({"aux_source": "dp_synthetic"}, ["ag_news"], ["fedcollm", "fedcollm_dp_aux"],
         r"makes fedcollm the same method"),
    ],
)  # fmt: skip
def test_fedcollm_without_public_data_is_refused_before_models_load(
    shared_data_dir: Path,
    fedcollm: dict[str, object],
    tasks: list[str],
    baselines: list[str],
    match: str,
) -> None:
    """5 private rows per client: delta must be below 1/5; the task must be classification."""
    config = build_config(
        {
            "data": {"dir": str(shared_data_dir), "tasks": tasks, "limit": 4, "train_limit": 15},
            "federation": {"llm": "no-such-model", "slm": "no-such-model", "clients": 2,
                           "baselines": baselines},
            "fedcollm": fedcollm,
        }
    )  # fmt: skip
    with pytest.raises(ConfigError, match=match):
        FedCoLLMTask.load(config, tasks[0])


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


def test_run_compares_all_five_baselines_and_no_public_fedcollm_end_to_end(
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
        "eps = 8.0\ndelta = 1e-2\ndp_batch_size = 2\ndp_max_length = 48\nper_label = 2\n"
        'synthesis_tokens = 12\nmin_words = 1\nlabel_field = "Topic"\n'
        f'[federation]\nllm = "{llm}"\nslm = "{slm}"\nclients = 2\n'
        f"baselines = {json.dumps([*BASELINES, 'fedcollm_min_ce', 'fedcollm_dp_aux'])}\n"
        f"client_cpus = {os.cpu_count() or 1}\n"  # one Ray actor: one torch import
    )
    assert main(["run", str(config)]) == 0

    entry = json.loads((out / "results.json").read_text())["tasks"]["ag_news"]
    assert entry["rows"] == {"clients": [5, 5], "public": 5, "dev": 200, "eval": 8}
    runs = entry["baselines"]
    assert list(runs) == [*BASELINES, "fedcollm_min_ce", "fedcollm_dp_aux"]
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
    assert "SLM fedcollm > fedavg_server_ce" in claims  # distillation, not D_a's labels
    for test in claims.values():
        assert test["n"] == 8 and 0.0 <= test["p_value"] <= 1.0 and isinstance(test["holds"], bool)
    for name in ("fedavg", "fedavg_server_ce"):
        assert runs[name]["llm"] == runs["zero_shot"]["llm"]  # its LLM is never trained
    (point,) = runs["fedcollm"]["curve"]  # one round, scored once
    assert point["round"] == 1 and point["slm"] == runs["fedcollm"]["slm"]
    for name in ("fedavg", "fedavg_server_ce", "fedcollm"):
        (record,) = runs[name]["rounds"]
        assert len(record["bytes_down"]) == len(record["bytes_up"]) == 2
        assert runs[name]["total_bytes"] == sum(record["bytes_down"].values()) + sum(
            record["bytes_up"].values()
        )
    assert "distil_loss" in runs["fedcollm"]["rounds"][0]["metrics"]
    assert "distil_loss" not in runs["fedavg"]["rounds"][0]["metrics"]
    server_ce = runs["fedavg_server_ce"]["rounds"][0]["metrics"]
    assert server_ce["server_ce_steps"] == 2 and "distil_loss" not in server_ce  # kd_steps

    selective = runs["fedcollm_min_ce"]["rounds"][0]["metrics"]  # each row, one direction
    assert 0.0 <= selective["distil_llm_kd_share"] <= 1.0
    assert runs["fedcollm"]["rounds"][0]["metrics"]["distil_llm_kd_share"] == 1.0
    for claim in ("SLM fedcollm_min_ce >= fedavg - 1 pt", "SLM fedcollm_min_ce > fedavg"):
        assert claims[claim]["n"] == 8

    no_public = runs["fedcollm_dp_aux"]  # D_a: the clients' DP synthetic samples
    privacy = no_public["privacy"]
    assert (privacy["target_epsilon"], privacy["delta"]) == (8.0, 1e-2)
    assert len(privacy["epsilon_per_client"]) == 2
    assert 0 < privacy["epsilon_max"] == max(privacy["epsilon_per_client"]) <= 8.0 * 1.01
    assert privacy["mean_private_rows"] == 5 and "privacy" not in runs["fedcollm"]
    aux_rows = (out / "ag_news" / "fedcollm_dp_aux" / "server" / "aux.jsonl").read_text()
    assert no_public["aux_rows"] == len(aux_rows.splitlines()) >= 1
    assert "distil_loss" in no_public["rounds"][0]["metrics"]
    query = no_public["aux_query"]
    assert query["bytes_up"] > 0 and no_public["total_bytes"] > sum(query.values())
    for claim in (
        "SLM fedcollm_dp_aux >= fedcollm - 1 pt",
        "SLM fedcollm_dp_aux > fedavg",
        "LLM fedcollm_dp_aux >= fedcollm - 1 pt",
        "LLM fedcollm_dp_aux > zero_shot",
    ):
        assert claim in claims  # fmt: skip

    assert (out / "results.png").read_bytes().startswith(b"\x89PNG")
    folder = out / "ag_news"
    for method, adapters in {
        "fedcollm": ("llm", "slm"),
        "fedcollm_min_ce": ("llm", "slm"),
        "fedcollm_dp_aux": ("llm", "slm"),
        "fedavg": ("slm",),
        "fedavg_server_ce": ("slm",),
        "centralized": ("llm", "slm"),
        "standalone": ("clients/0/slm", "clients/1/slm"),
        "zero_shot": (),
    }.items():
        run = json.loads((folder / method / "run.json").read_text())
        assert run["method"] == method and run["base_models"]["slm"] == str(tiny_pair[1])
        assert run["metrics"]["slm"] == runs[method]["slm"]
        assert run["privacy"] == runs[method].get("privacy")  # the clients' eps, or None
        for adapter in adapters:
            config = json.loads((folder / method / adapter / "adapter_config.json").read_text())
            assert config["peft_type"] == "LORA"
            assert (folder / method / adapter / "adapter_model.safetensors").is_file()
    for name in ("fedavg", "fedavg_server_ce"):
        assert not (folder / name / "llm").exists()  # FedAvg never trains the LLM
    table = capsys.readouterr().out
    assert all(name in table for name in BASELINES)
    assert "±" in table and "SLM fedcollm > fedavg" in table
    assert "spent eps (max)" in table  # the DP table lists only the method that spent eps
    assert [r for r in table.splitlines() if "8.00" in r and "fedcollm_dp_aux" in r]


def _stderr(out: Path, name: str, acc: float) -> float:
    """The standard error of the SLM's per-row correctness (row means over clients)."""
    folder = out / "predictions" / "ag_news" / name
    files = sorted(folder.glob("slm-client*.jsonl")) or [folder / "slm.jsonl"]
    per_file = [[json.loads(line)["correct"] for line in f.read_text().splitlines()] for f in files]
    rows = [sum(values) / len(values) for values in zip(*per_file, strict=True)]
    assert sum(rows) / len(rows) == pytest.approx(acc)
    mean = sum(rows) / len(rows)
    return (sum((r - mean) ** 2 for r in rows) / (len(rows) - 1) / len(rows)) ** 0.5
