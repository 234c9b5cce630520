"""`fedkt run --resume`: a run interrupted after round 1 (an exception, then a real SIGKILL of
a `fedkt run` process) and resumed ends with the adapters, bit for bit, and the metrics of an
uninterrupted run; finished methods are skipped; a changed config is refused."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from fedkt.cli import main
from fedkt.federation import fedcollm as federation

ROUNDS = 3


@pytest.fixture
def flower_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"FLWR_HOME": str(tmp_path / "flwr"), "FLWR_TELEMETRY_ENABLED": "0",
                       "FLWR_DISABLE_UPDATE_CHECK": "1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)


def _config(
    tmp_path: Path, name: str, pair: tuple[Path, Path], data: Path, lr: str = "1e-2"
) -> Path:
    llm, slm = pair
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'output_dir = "{tmp_path / name}"\n'
        '[model]\ndtype = "float32"\ndevice = "cpu"\n'
        f'[data]\ndir = "{data}"\ntasks = ["ag_news"]\nlimit = 6\ntrain_limit = 12\n'
        f"[train]\nlr = {lr}\nbatch_size = 4\nmax_length = 64\n"
        "[lora]\nr = 4\nalpha = 8\ndropout = 0.1\n"  # dropout on: its RNG must replay too
        f"[fedcollm]\nrounds = {ROUNDS}\nkd_steps = 2\nkd_batch_size = 2\n"
        "llm_lr = 1e-2\nslm_lr = 1e-2\n"
        f'[federation]\nllm = "{llm}"\nslm = "{slm}"\nclients = 2\n'
        'baselines = ["zero_shot", "fedcollm"]\n'
        f"client_cpus = {os.cpu_count() or 1}\n"
    )
    return path


def _adapters(out: Path) -> dict[str, Any]:
    folder = out / "ag_news" / "fedcollm"
    return {role: load_file(folder / role / "adapter_model.safetensors") for role in ("llm", "slm")}


def _same_run(a: Path, b: Path) -> None:
    for role, tensors in _adapters(a).items():
        other = _adapters(b)[role]
        assert tensors.keys() == other.keys()
        assert all(tensors[k].equal(other[k]) for k in tensors), role  # bit-identical
    first, second = (json.loads((out / "results.json").read_text()) for out in (a, b))
    runs = [r["tasks"]["ag_news"]["baselines"]["fedcollm"] for r in (first, second)]
    assert [p["slm"]["acc"] for p in runs[0]["curve"]] == [
        p["slm"]["acc"] for p in runs[1]["curve"]
    ]
    assert [p["round"] for p in runs[1]["curve"]] == list(range(1, ROUNDS + 1))
    losses = [[r["metrics"]["distil_loss"] for r in run["rounds"]] for run in runs]
    assert losses[0] == losses[1]


@pytest.fixture
def uninterrupted(
    tmp_path: Path, tiny_pair: tuple[Path, Path], shared_data_dir: Path, flower_env: None
) -> Path:
    assert main(["run", str(_config(tmp_path, "whole", tiny_pair, shared_data_dir))]) == 0
    folder = tmp_path / "whole" / "ag_news" / "fedcollm"
    run = json.loads((folder / "run.json").read_text())
    assert run["algorithm"] == "fedcollm" and run["metrics"]["slm"]["n"] == 6
    assert (folder / "slm" / "adapter_config.json").is_file()
    return tmp_path / "whole"


def test_a_run_stopped_by_an_exception_resumes_to_the_same_adapters(
    tmp_path: Path,
    tiny_pair: tuple[Path, Path],
    shared_data_dir: Path,
    uninterrupted: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = _config(tmp_path, "cut", tiny_pair, shared_data_dir)
    real = federation._write_checkpoint

    def crash_after_round_one(path: Path, models: Any, records: list[Any], kept: list[Any]) -> None:
        real(path, models, records, kept)
        if len(records) == 1:
            raise RuntimeError("injected failure after round 1")

    monkeypatch.setattr(federation, "_write_checkpoint", crash_after_round_one)
    assert main(["run", str(config)]) == 1  # unexpected: one line, the traceback in the log
    assert "injected failure" in (tmp_path / "cut" / "fedkt.log").read_text()
    monkeypatch.setattr(federation, "_write_checkpoint", real)
    done = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert list(done["tasks"]["ag_news"]["baselines"]) == ["zero_shot"]  # fedcollm unfinished

    assert main(["run", str(config), "--resume"]) == 0
    _same_run(uninterrupted, tmp_path / "cut")


_HANG_AFTER_ROUND_ONE = """
import sys, time
from fedkt.federation import fedcollm
real = fedcollm._write_checkpoint
def hang(path, models, records, kept):
    real(path, models, records, kept)
    if len(records) == 1:
        print("checkpointed round 1", flush=True)
        time.sleep(600)
fedcollm._write_checkpoint = hang
from fedkt.cli import main
sys.exit(main(["run", sys.argv[1]]))
"""


def test_a_killed_run_resumes_to_the_same_adapters(
    tmp_path: Path, tiny_pair: tuple[Path, Path], shared_data_dir: Path, uninterrupted: Path
) -> None:
    config = _config(tmp_path, "killed", tiny_pair, shared_data_dir)
    process = subprocess.Popen(
        [sys.executable, "-c", _HANG_AFTER_ROUND_ONE, str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill reaches Ray's processes too
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        assert process.stdout is not None
        while "checkpointed round 1" not in process.stdout.readline():
            assert time.monotonic() < deadline and process.poll() is None, "no checkpoint came"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL

    assert main(["run", str(config), "--resume"]) == 0
    _same_run(uninterrupted, tmp_path / "killed")


def test_resume_refuses_a_changed_config_and_skips_finished_methods(
    tmp_path: Path,
    tiny_pair: tuple[Path, Path],
    shared_data_dir: Path,
    uninterrupted: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    changed = _config(tmp_path, "whole", tiny_pair, shared_data_dir, lr="2e-2")
    capsys.readouterr()
    assert main(["run", str(changed), "--resume"]) == 2  # one error line, exit code 2
    assert "differs in train.lr" in capsys.readouterr().err
    before = (uninterrupted / "results.json").read_text()
    same = _config(tmp_path, "whole", tiny_pair, shared_data_dir)
    assert main(["run", str(same), "--resume"]) == 0  # everything finished: nothing reruns
    after = json.loads((uninterrupted / "results.json").read_text())
    assert after["tasks"] == json.loads(before)["tasks"]


def test_resume_takes_a_run_written_before_a_setting_existed_while_it_keeps_its_default(
    tmp_path: Path,
) -> None:
    from fedkt.config import FedktConfig
    from fedkt.errors import ConfigError
    from fedkt.experiments.harness import _previous
    from fedkt.report import to_strict_json, write_json

    config = FedktConfig(output_dir=str(tmp_path))
    old = to_strict_json(dataclasses.asdict(config))
    del old["fdkt"]["canaries"]  # as written by a fedkt without the leakage audit
    path = tmp_path / "results.json"
    write_json(path, {"algorithm": "fedcollm", "config": old, "tasks": {}})
    assert _previous(path, config, "fedcollm") is not None
    audited = dataclasses.replace(config, fdkt=dataclasses.replace(config.fdkt, canaries=2))
    with pytest.raises(ConfigError, match=r"differs in fdkt\.canaries"):
        _previous(path, audited, "fedcollm")


def test_resume_may_grow_a_sweep_but_not_change_how_a_point_runs(tmp_path: Path) -> None:
    """Which points run (baselines, strategies, eps grids) may change on --resume; how one
    runs (here, whether a FedCoT point trains its SLM) may not."""
    from fedkt.config import FedktConfig
    from fedkt.errors import ConfigError
    from fedkt.experiments.harness import _previous
    from fedkt.report import to_strict_json, write_json

    config = FedktConfig(output_dir=str(tmp_path))
    path = tmp_path / "results.json"
    write_json(path, {"algorithm": "fedcot", "config": to_strict_json(dataclasses.asdict(config))})
    grown = dataclasses.replace(
        config,
        fedcot=dataclasses.replace(
            config.fedcot, strategies=("em", "krr"), grids={"krr": (0.0, 10.0)}, eps=(1.0,)
        ),
    )
    previous = _previous(path, grown, "fedcot")
    assert previous is not None
    assert previous["config"]["fedcot"]["strategies"] == ("em", "krr")  # the latest selection
    untrained = dataclasses.replace(
        config, fedcot=dataclasses.replace(config.fedcot, train_slm=False)
    )
    with pytest.raises(ConfigError, match=r"differs in fedcot\.train_slm"):
        _previous(path, untrained, "fedcot")
