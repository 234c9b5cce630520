"""`fedkt run` as a real process on tiny models: Ctrl-C inside the Flower simulation stops it
within seconds with exit code 130, keeps the finished methods' results and leaves no Ray
process behind; a second run on the same output directory is refused at once, naming the
first; a killed run's lock blocks nothing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fedkt import console

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and flock")


def _config(tmp_path: Path, pair: tuple[Path, Path], data: Path, rounds: int) -> Path:
    llm, slm = pair
    path = tmp_path / "run.toml"
    path.write_text(
        f'output_dir = "{tmp_path / "out"}"\n'
        '[model]\ndtype = "float32"\ndevice = "cpu"\n'
        f'[data]\ndir = "{data}"\ntasks = ["ag_news"]\nlimit = 6\ntrain_limit = 12\n'
        "[train]\nlr = 1e-2\nbatch_size = 4\nmax_length = 64\n"
        "[lora]\nr = 4\nalpha = 8\n"
        f"[fedcollm]\nrounds = {rounds}\nkd_steps = 2\nkd_batch_size = 2\n"
        f'[federation]\nllm = "{llm}"\nslm = "{slm}"\nclients = 2\n'
        'baselines = ["zero_shot", "fedcollm"]\n'
        f"client_cpus = {os.cpu_count() or 1}\n"
    )
    return path


def _start(config: Path, tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, "-m", "fedkt.cli", "run", str(config)],
        stdout=(tmp_path / f"{name}.out").open("wb"),
        stderr=(tmp_path / f"{name}.err").open("wb"),
        env=env,
        start_new_session=True,  # its own process group, as a terminal's job would be
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )


def _ctrl_c_as_in_a_terminal() -> None:
    """A terminal's job starts with SIGINT at its default and unblocked; a child inherits
    an ignored or blocked SIGINT from its parent, and in the whole suite the pytest process
    has one by the time these tests run (Python then installs no KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _wait_for(path: Path, text: str, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not (path.is_file() and text in path.read_text(errors="replace")):
        assert process.poll() is None, f"the run ended ({process.returncode}) before {text!r}"
        assert time.monotonic() < deadline, f"no {text!r} in {path} within {seconds} s"
        time.sleep(0.2)


def _of_this_run(log: Path) -> list[psutil.Process]:
    """Processes that inherited this run's log file setting: Ray's raylet, GCS and workers,
    wherever they were reparented to."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(console.LOG_FILE_ENV) == str(log):
                found.append(process)
    return found


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
    return alive


@contextlib.contextmanager
def _cleaned_up(process: subprocess.Popen[bytes], log: Path) -> Iterator[list[psutil.Process]]:
    """Yields a list to put the run's processes in; kills whatever is left of them after."""
    known: list[psutil.Process] = []
    try:
        yield known
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        for leftover in _alive(known + _of_this_run(log)):
            with contextlib.suppress(psutil.Error):
                leftover.kill()


def test_ctrl_c_in_the_simulation_stops_the_run_cleanly(
    tmp_path: Path, tiny_pair: tuple[Path, Path], shared_data_dir: Path
) -> None:
    config = _config(tmp_path, tiny_pair, shared_data_dir, rounds=50)
    out, log = tmp_path / "out", (tmp_path / "out" / console.LOG_NAME).resolve()
    process = _start(config, tmp_path, "run")
    with _cleaned_up(process, log) as known:
        _wait_for(log, "fedcollm round 1/50", process, seconds=120)
        known += psutil.Process(process.pid).children(recursive=True)
        assert any("raylet" in p.name() for p in known), [p.name() for p in known]

        os.kill(process.pid, signal.SIGINT)  # only the fedkt process: it must stop Ray itself
        start = time.monotonic()
        code = process.wait(timeout=60)
        assert code == 130, (tmp_path / "run.err").read_text(errors="replace")
        assert time.monotonic() - start < 30
        deadline = time.monotonic() + 10
        while _alive(known + _of_this_run(log)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(known + _of_this_run(log))

    results = json.loads((out / "results.json").read_text())
    assert list(results["tasks"]["ag_news"]["baselines"]) == ["zero_shot"]
    assert (out / "ag_news" / "zero_shot" / "run.json").is_file()
    err = (tmp_path / "run.err").read_text(errors="replace")
    assert err.splitlines()[-1].startswith("fedkt: interrupted")
    assert "[ag_news] fedcollm round 1/50: 2 clients x 4 rows, distil on 4 public rows" in err
    for noise in ("flwr", "DEBUG", "Warning", "ClientAppActor", "Loading weights", "Traceback",
                  "DEPRECATED", "INFO"):  # fmt: skip
        assert noise not in err, noise
    assert "KeyboardInterrupt" in log.read_text()  # the details are in the log


def test_a_second_run_on_the_same_output_dir_is_refused_and_a_killed_runs_lock_is_not(
    tmp_path: Path, tiny_pair: tuple[Path, Path], shared_data_dir: Path
) -> None:
    config = _config(tmp_path, tiny_pair, shared_data_dir, rounds=50)
    out, log = tmp_path / "out", (tmp_path / "out" / console.LOG_NAME).resolve()
    first = _start(config, tmp_path, "first")
    with _cleaned_up(first, log):
        _wait_for(out / console.LOCK_NAME, f"{first.pid}\n", first, seconds=60)
        start = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "fedkt.cli", "run", str(config), "--resume"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert time.monotonic() - start < 30  # refused at once, nothing loaded
        assert second.returncode == 2, second.stderr
        assert second.stderr.splitlines() == [
            f"fedkt: error: {out} is in use by another fedkt run, pid {first.pid} "
            f"(fedkt run {config}); wait for it to finish, stop it, or pass another "
            "--output-dir."
        ]
        assert first.poll() is None  # the first run goes on

        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    # The killed run's lock died with it: the directory is free at once (e.g. for --resume).
    with console.OutputLock(out):
        pass
