"""The terminal and the log file of a `fedkt` command, in-process and fast: fedkt's own lines on
the terminal and the libraries' chatter in ``<output_dir>/fedkt.log`` (all of it on the
terminal with ``--verbose``), ``--version``, one line for an unexpected error with its
traceback in the log, and the output directory's lock."""

from __future__ import annotations

import fcntl
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import pytest

import fedkt
from fedkt import cli, console
from fedkt.cli import main

_COMMANDS = [
    ["eval", "--model", "m"],
    ["finetune", "--model", "m"],
    ["run", "c.toml"],
    ["make-student"],
    ["export", "run-dir", "--which", "slm", "--out", "o"],
]


def _chatty_eval(config: Any, args: Any) -> int:
    """What a command's libraries and fedkt say while it runs."""
    logging.getLogger("fedkt.jobs").info("fedkt progress line")
    logging.getLogger("fedkt.jobs").debug("fedkt debug detail")
    logging.getLogger("flwr").warning("DEPRECATED FEATURE: run_simulation")
    logging.getLogger("flwr").debug("Constructed ActorPool")
    logging.getLogger("alembic.runtime.plugins").info("setup plugin")
    warnings.warn_explicit(
        "`is_gradient_checkpointing` is deprecated and will be removed in v6.",
        FutureWarning, "modeling_utils.py", 1, module="transformers.modeling_utils",
    )  # fmt: skip
    warnings.warn_explicit("a library's other warning", UserWarning, "lib.py", 1, module="lib")
    return 0


def test_the_terminal_shows_fedkt_lines_and_the_log_file_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "_eval", _chatty_eval)
    out = tmp_path / "out"
    assert main(["eval", "--model", "m", "--output-dir", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == ["fedkt progress line"]
    log = (out / console.LOG_NAME).read_text()
    for text in ("fedkt progress line", "fedkt debug detail", "DEPRECATED FEATURE",
                 "Constructed ActorPool", "setup plugin", "a library's other warning"):  # fmt: skip
        assert text in log, text
    assert "is_gradient_checkpointing" not in log  # known noise is dropped

    assert main(["eval", "--model", "m", "--output-dir", str(out), "--verbose"]) == 0
    err = capsys.readouterr().err
    for text in ("fedkt debug detail", "DEPRECATED FEATURE", "Constructed ActorPool",
                 "a library's other warning", "is_gradient_checkpointing"):  # fmt: skip
        assert text in err, text
    assert (out / console.LOG_NAME).read_text().count("==== fedkt") == 2  # appended


def test_the_settings_reach_ray_workers_and_are_undone_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def capture(config: Any, args: Any) -> int:
        seen.update(os.environ)
        seen["init_args"] = console.ray_init_args()
        return 0

    monkeypatch.setattr(cli, "_eval", capture)
    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    before = dict(os.environ)
    assert main(["eval", "--model", "m", "--output-dir", str(tmp_path / "o")]) == 0
    assert seen["init_args"] == {"logging_level": "ERROR", "log_to_driver": False}
    assert seen["__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"] == "fedkt.console.setup_worker"
    assert seen[console.LOG_FILE_ENV] == str((tmp_path / "o" / console.LOG_NAME).resolve())
    assert seen["TRANSFORMERS_VERBOSITY"] == "error"
    assert seen["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert seen["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] == "0"
    assert seen["FLWR_LOG_LEVEL"] == "CRITICAL"
    assert dict(os.environ) == before
    assert main(["eval", "--model", "m", "--output-dir", str(tmp_path / "o"), "--verbose"]) == 0
    assert seen["init_args"] == {"logging_level": "INFO", "log_to_driver": True}


def test_the_worker_hook_logs_to_the_file_and_drops_known_noise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "fedkt.log"
    monkeypatch.setenv(console.LOG_FILE_ENV, str(path))
    root = logging.getLogger()
    handlers, level, filters = list(root.handlers), root.level, list(warnings.filters)
    try:
        console.setup_worker()
        logging.getLogger("fedkt.federation").info("client line")
        with warnings.catch_warnings(record=True) as caught:
            warnings.filters[:] = [f for f in warnings.filters if f[0] == "ignore"]
            warnings.warn_explicit(
                "`is_gradient_checkpointing` is deprecated", FutureWarning, "m.py", 1,
                module="transformers.modeling_utils",
            )  # fmt: skip
        assert caught == []
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
        logging.captureWarnings(False)
        warnings.filters[:] = filters
    assert "client line" in path.read_text()


@pytest.mark.parametrize("command", _COMMANDS, ids=[c[0] for c in _COMMANDS])
def test_every_command_takes_verbose(command: list[str]) -> None:
    assert cli._parser().parse_args([*command, "--verbose"]).verbose is True


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"fedkt {fedkt.__version__}"


def test_an_unexpected_error_is_one_line_with_its_traceback_in_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(config: Any, args: Any) -> int:
        raise RuntimeError("something broke\nwith a second line")

    monkeypatch.setattr(cli, "_eval", boom)
    out = tmp_path / "out"
    assert main(["eval", "--model", "m", "--output-dir", str(out)]) == 1
    log = (out / console.LOG_NAME).resolve()
    assert capsys.readouterr().err.splitlines() == [
        f"fedkt: unexpected error: RuntimeError: something broke (traceback in {log})"
    ]
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "in boom" in text


def test_without_an_output_dir_the_traceback_goes_to_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(config: Any, args: Any) -> int:
        raise ValueError("bad student")

    monkeypatch.setenv("FEDKT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cli, "_make_student", boom)
    assert main(["make-student"]) == 1
    log = tmp_path / "cache" / "logs" / console.LOG_NAME
    err = capsys.readouterr().err
    assert err.startswith("fedkt: unexpected error: ValueError: bad student (traceback in ")
    assert str(log) in err and "ValueError: bad student" in log.read_text()


def test_a_fedkt_error_stays_one_line_with_exit_code_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(config: Any, args: Any) -> int:
        # Flower wraps what its ServerApp raised: the fedkt error inside still counts.
        raise RuntimeError("Simulation crashed") from fedkt.errors.DataError("no rows")

    monkeypatch.setattr(cli, "_eval", refuse)
    assert main(["eval", "--model", "m", "--output-dir", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.splitlines() == ["fedkt: error: no rows"]


def test_a_held_output_dir_is_refused_naming_its_owner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ran: list[Any] = []
    monkeypatch.setattr(cli, "_eval", lambda config, args: ran.append(config) or 0)
    out = tmp_path / "out"
    out.mkdir()
    with open(out / console.LOCK_NAME, "w") as held:
        held.write("4242\nfedkt run other.toml\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["eval", "--model", "m", "--output-dir", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"fedkt: error: {out} is in use by another fedkt run, pid 4242")
        assert len(err.splitlines()) == 1 and not ran
    # released (or left by a process that died): the same directory is free again
    assert main(["eval", "--model", "m", "--output-dir", str(out)]) == 0
    assert len(ran) == 1
    assert (out / console.LOCK_NAME).read_text().startswith(f"{os.getpid()}\n")
