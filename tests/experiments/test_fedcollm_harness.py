"""FedCoLLM's harness on tiny models, in process: one theta_0 for every method, clients seeded
as in the federation, FedAvg without the LLM, and FedAvg with server-side CE on D_a."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

import fedkt.experiments.fedcollm as experiment
import fedkt.federation.fedcollm as federation
from fedkt.algorithms.fedcollm import LocalClient, client_training, local_exchange, server_round
from fedkt.config import BASELINES, build_config
from fedkt.data import Example
from fedkt.experiments.fedcollm import CLAIMS, FedCoLLMTask, server_ce_training
from fedkt.experiments.harness import Claim, Scoreboard, TaskData
from fedkt.federation.fedcollm import FederationResult, RoundRecord
from fedkt.models import adapter_state
from fedkt.training import TrainReport, train_answer_only


def _rows(prefix: str, n: int) -> list[Example]:
    return [
        Example(
            id=f"{prefix}{i}",
            context=f"Question: Which gas do plants absorb {i}?\nAnswer:",
            choices=("carbon dioxide", "oxygen"),
            gold=i % 2,
        )
        for i in range(n)
    ]


@pytest.fixture
def run(tiny_pair: tuple[Path, Path], tmp_path: Path) -> FedCoLLMTask:
    """Two clients of 3 rows, 4 public rows, 2 rounds; scored on 2 rows."""
    llm, slm = tiny_pair
    config = build_config(
        {
            "output_dir": str(tmp_path / "out"),
            "model": {"dtype": "float32", "device": "cpu"},
            "train": {"lr": 1e-2, "batch_size": 2, "max_length": 48},
            "lora": {"r": 2, "alpha": 4, "dropout": 0.0},
            "fedcollm": {"rounds": 2, "kd_steps": 2, "kd_batch_size": 2, "seed": 7},
            "federation": {"llm": str(llm), "slm": str(slm), "clients": 2,
                           "baseline_adapters": False},
        }
    )  # fmt: skip
    evaluation = _rows("eval", 2)
    data = TaskData("toy", [], [_rows("a", 3), _rows("b", 3)], _rows("pub", 4), evaluation, "test")
    return FedCoLLMTask(config, data, Scoreboard(config, "toy", evaluation))


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_every_method_starts_from_one_theta0(run: FedCoLLMTask) -> None:
    """theta_0 is drawn from its own seed: FedCoLLM's server (LLM's adapter drawn too), FedAvg's
    (no LLM at all) and the standalone/centralized models start from the same adapter."""
    fedcollm = run.federation_spec().load_server_models()
    fedavg_settings = dataclasses.replace(run.settings, distil=False)
    fedavg = run.federation_spec(fedavg_settings, "fedavg").load_server_models()
    standalone, _ = run.load_lora("slm")
    theta0 = adapter_state(fedcollm.slm)
    assert any(tensor.abs().sum() > 0 for tensor in theta0.values())  # A is random
    assert _equal(adapter_state(fedavg.slm), theta0)
    assert _equal(adapter_state(standalone), theta0)
    omega0 = adapter_state(run.load_lora("llm")[0])
    assert _equal(adapter_state(fedcollm.llm), omega0)  # centralized's LLM starts at omega_0
    assert fedavg.llm is None  # FedAvg's server never loads the LLM


def test_standalone_clients_train_as_in_the_federation(
    run: FedCoLLMTask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Client k trains each round t with the federated client's own seed (k, t), not one seed
    for all clients nor one long run."""
    seeds: list[int] = []

    def recording(*args: Any, **kwargs: Any) -> TrainReport:
        seeds.append(args[3].seed)
        return train_answer_only(*args, **kwargs)

    monkeypatch.setattr(experiment, "train_answer_only", recording)
    outcome = experiment.standalone(run)
    train = run.settings.client
    expected = [client_training(train, k, t).seed for k in range(2) for t in range(2)]
    assert seeds == expected and len(set(seeds)) == 4
    assert [report["steps"] for report in outcome["train"]] == [4, 4]  # 2 rounds x 2 batches


def _in_process(
    spec: federation.FederationSpec,
    *,
    after_round: federation.AfterRound | None = None,
    server_update: federation.ServerUpdate | None = None,
) -> FederationResult:
    """`simulate_fedcollm` without Flower: the spec's server models, clients in process."""
    models = spec.load_server_models()
    clients = [LocalClient(models.slm, part) for part in spec.client_data]
    exchange = local_exchange(clients, models.tokenizer, spec.settings)
    records, kept = [], []
    for t in range(spec.settings.rounds):
        result = server_round(models, spec.public_data, spec.settings, t, exchange)
        extra = {} if server_update is None else server_update(t, models)
        records.append(RoundRecord(t, {0: 1}, {0: 1}, {**result.metrics, **extra}))
        kept.append(None if after_round is None else after_round(t, models))
    return FederationResult(adapter_state(models.slm), {}, tuple(records), tuple(kept))


def test_fedavg_variants_never_load_the_llm(
    run: FedCoLLMTask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FedAvg and FedAvg + server CE load only the SLM (the loader refuses the LLM); the
    server's CE step trains theta on D_a each round, seeded per round."""
    llm = run.config.federation.llm
    real_loader = federation.load_model_and_tokenizer
    real_load_for = experiment.load_for

    def loader(name: str, **kwargs: Any) -> Any:
        assert name != llm, "FedAvg loaded the LLM"
        return real_loader(name, **kwargs)

    def load_for(config: Any, name: str) -> Any:
        assert name != llm, "FedAvg loaded the LLM"
        return real_load_for(config, name)

    monkeypatch.setattr(federation, "load_model_and_tokenizer", loader)
    monkeypatch.setattr(experiment, "load_for", load_for)
    monkeypatch.setattr(experiment, "simulate_fedcollm", _in_process)
    plain = experiment.fedavg(run)
    with_ce = experiment.fedavg_server_ce(run)
    assert plain["llm"] is None and with_ce["llm"] is None  # zero-shot has not run
    assert "server_ce_steps" not in plain["rounds"][0]["metrics"]
    for record in with_ce["rounds"]:
        assert record["metrics"]["server_ce_steps"] == 2  # kd_steps, as FedCoLLM's SLM side
    assert {"fedavg", "fedavg_server_ce"} <= {label for label, _, _ in run.board.rows}


def test_server_ce_mirrors_the_slm_side_of_distillation(run: FedCoLLMTask) -> None:
    settings = run.settings
    training = server_ce_training(settings, 1)
    assert (training.lr, training.batch_size, training.max_steps) == (
        settings.slm_lr,
        settings.kd_batch_size,
        settings.kd_steps,
    )
    assert training.seed != server_ce_training(settings, 0).seed
    assert training.max_length == settings.client.max_length


def test_fedcollm_is_compared_with_fedavg_plus_server_ce() -> None:
    assert "fedavg_server_ce" in BASELINES
    assert Claim("slm", "fedcollm", "fedavg_server_ce") in CLAIMS
    assert set(experiment.METHODS) >= set(BASELINES)
