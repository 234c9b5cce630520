"""A whole deployed federation on this machine: `fedkt server` and one `fedkt client` per
partition as subprocesses on loopback, as the README runs them (tests, benchmarks, trials).

Each command starts in its own process group with its output in a log file (not a pipe: a
SuperNode's SuperExec child would hold a pipe open after the SuperNode exits). Every wait is
bounded; when `launch_local_federation` returns or raises, every process it started is gone,
including the SuperLink that `fedkt server` starts in a session of its own (found by walking
the process tree while the run goes on, so a server killed by a timeout cannot orphan it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedkt.deploy import launch
from fedkt.errors import FedktError

FEDKT = (sys.executable, "-m", "fedkt.cli")
"""`fedkt` run by this interpreter (the venv's, whatever PATH holds)."""

READY = "waiting for"
"""What `fedkt server` logs once clients may join (after the SuperNode keys are registered)."""


def server_command(
    config: Path | str, *, public: Path | str | None = None, insecure: bool = False
) -> list[str]:
    """``fedkt server CONFIG [--public ROWS] [--insecure]``."""
    command = [*FEDKT, "server", str(config)]
    if public is not None:
        command += ["--public", str(public)]
    return [*command, "--insecure"] if insecure else command


def client_command(
    config: Path | str,
    *,
    data: Path | str,
    partition: int,
    output_dir: Path | str,
    key: Path | str | None = None,
    insecure: bool = False,
    max_wait: float = 60.0,
    worker: bool = True,
) -> list[str]:
    """``fedkt client CONFIG --data ROWS --partition-id K [--key KEY | --insecure] ...``
    (``--no-worker`` when ``worker`` is False)."""
    command = [
        *FEDKT, "client", str(config),
        "--data", str(data),
        "--partition-id", str(partition),
        "--max-wait", f"{max_wait:g}",
        "--output-dir", str(output_dir),
    ]  # fmt: skip
    if key is not None:
        command += ["--key", str(key)]
    if not worker:
        command.append("--no-worker")
    return [*command, "--insecure"] if insecure else command


def start_logged(
    command: Sequence[str], log: Path, env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """``command`` in its own process group, stdout and stderr into the file ``log``."""
    with open(log, "wb") as handle:
        return subprocess.Popen(
            list(command),
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
        )


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ("" when it does not exist)."""
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_for_line(path: Path, text: str, process: subprocess.Popen[Any], timeout: float) -> None:
    """Return once ``text`` is in the log ``path``; raise if ``process`` exits first or
    ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.2)
    raise FedktError(f"no {text!r} in {path} within {timeout:.0f} s:\n{tail(path)}")


@dataclass(frozen=True)
class LocalRun:
    """How a local federation ended: the server's exit status (None: it did not end within
    the timeout and was killed), its wall time from the server's start, and the logs."""

    returncode: int | None
    seconds: float
    server_log: Path
    client_logs: tuple[Path, ...]


def launch_local_federation(
    server: Sequence[str],
    clients: Sequence[Sequence[str]],
    *,
    env: Mapping[str, str],
    log_dir: Path,
    timeout: float,
    ready: str = READY,
    ready_timeout: float = 60.0,
    poll: Callable[[], None] | None = None,
    poll_interval: float = 0.5,
    grace: float = 5.0,
) -> LocalRun:
    """Start ``server`` (log ``log_dir/server.log``), wait for its ``ready`` line, start each
    of ``clients`` (``log_dir/client<k>.log``) and wait at most ``timeout`` seconds for the
    server to exit; then stop every process, children included.

    ``poll`` is called every ``poll_interval`` seconds while the run goes on, and once more
    after the server exits, before any client is stopped (e.g. to sample the sockets or the
    memory of the run). A server that is not ready in ``ready_timeout`` seconds raises
    `FedktError`; one that does not finish in ``timeout`` gives ``returncode=None``.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    server_log = log_dir / "server.log"
    client_logs = tuple(log_dir / f"client{k}.log" for k in range(len(clients)))
    started: list[subprocess.Popen[bytes]] = []
    seen: dict[int, float] = {}  # pid -> start time of every descendant met on the way
    begin = time.perf_counter()
    code: int | None = None
    try:
        started.append(start_logged(server, server_log, env))
        wait_for_line(server_log, ready, started[0], ready_timeout)
        for command, log in zip(clients, client_logs, strict=True):
            started.append(start_logged(command, log, env))
        deadline = time.monotonic() + timeout
        while code is None and time.monotonic() < deadline:
            seen.update(descendants(p.pid for p in started))
            if poll is not None:
                poll()
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = started[0].wait(timeout=poll_interval)
        seconds = time.perf_counter() - begin
        if poll is not None:
            poll()
    finally:
        seen.update(descendants(p.pid for p in started))
        for process in reversed(started):  # clients first, then the server
            launch.stop(process, grace=grace)
        kill_processes(seen)
    return LocalRun(code, seconds, server_log, client_logs)


# ---- the process tree (Linux /proc; elsewhere nothing is found) ------------------------------


def descendants(roots: Any) -> dict[int, float]:
    """Every live descendant of the ``roots`` pids, as {pid: start time} (the start time tells
    a reused pid from the process met before)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, float] = {}
    for entry in _proc_entries():
        stat = _stat(entry)
        if stat is not None:
            pid, ppid, start = stat
            children.setdefault(ppid, []).append(pid)
            starts[pid] = start
    found: dict[int, float] = {}
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found[child] = starts[child]
                todo.append(child)
    return found


def kill_processes(seen: Mapping[int, float]) -> None:
    """SIGKILL each process of ``seen`` still alive (same pid, same start time), with its
    process group when it leads one (a SuperLink started in a session of its own)."""
    for pid, start in seen.items():
        stat = _stat(str(pid))
        if stat is None or stat[2] != start:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)


def _proc_entries() -> list[str]:
    try:
        return [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def _stat(pid: str) -> tuple[int, int, float] | None:
    """(pid, parent pid, start time in clock ticks) from /proc/PID/stat; None if gone or a
    zombie (nothing left to kill)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the name may hold spaces and parentheses
    if fields[0] in ("Z", "X"):
        return None
    return int(pid), int(fields[1]), float(fields[19])
