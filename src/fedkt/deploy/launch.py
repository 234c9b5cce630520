"""Flower's deployment processes, started with fedkt's security defaults.

Everything here drives Flower's own commands (``flower-superlink``, ``flower-supernode``,
``flwr supernode register``, ``flwr run``); fedkt adds no transport. The defaults are the safe
ones: TLS with certificates given by path, SuperNode authentication against registered public
keys, no dependency installation at run time (the machines already have fedkt installed, and
an app that lists torch would otherwise pull a CUDA build per run). ``insecure`` turns TLS and
authentication off, with a warning, for trials only.

Flower 1.41 serves the Fleet, Control and Runtime APIs of a SuperLink on one HTTP(S) port
(``--host``/``--port``), and each SuperNode serves a Runtime API to its ClientApp processes
on a port of its own (bound to 127.0.0.1 here: only local processes need it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from fedkt.config import DeploymentConfig
from fedkt.errors import ConfigError, FedktError

_LOG = logging.getLogger(__name__)

CONNECTION = "fedkt"
"""The SuperLink connection fedkt writes into ``$FLWR_HOME/config.toml`` for ``flwr``."""

INSECURE_WARNING = (
    "--insecure: TLS and SuperNode authentication are OFF; messages (adapters) travel in "
    "clear text and any process that reaches the SuperLink may join. Use only for trials."
)


def flower_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every Flower process: this interpreter's scripts first on PATH
    (Flower starts ``flower-superexec`` and ``flwr-*app`` by name), no telemetry, no
    update check, no runtime dependency installation, Flower's log lines shown."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_LOG_LEVEL="INFO",  # fedkt's console silences Flower in-process; not here
    )
    env.update(extra or {})
    return env


def executable(name: str) -> str:
    """A Flower command: beside this interpreter (the venv), else on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.is_file() else shutil.which(name)
    if found is None:
        raise FedktError(f"{name} not found; install fedkt with its federation extra")
    return found


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


# ---- the SuperLink --------------------------------------------------------------------------


def superlink_command(deployment: DeploymentConfig, *, insecure: bool) -> list[str]:
    """``flower-superlink`` with TLS (or ``--insecure``), node authentication when asked, and
    no dependency installation; it binds ``listen`` (default: the host of ``superlink``)."""
    host, port = split_address(deployment.superlink)
    command = [
        executable("flower-superlink"),
        "--host", deployment.listen or host,
        "--port", str(port),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    if insecure:
        return [*command, "--insecure"]
    command += [
        "--ssl-ca-certfile", _existing(deployment.ca_cert, "deployment.ca_cert"),
        "--ssl-certfile", _existing(deployment.server_cert, "deployment.server_cert"),
        "--ssl-keyfile", _existing(deployment.server_key, "deployment.server_key"),
    ]  # fmt: skip
    return [*command, "--enable-supernode-auth"] if deployment.node_auth else command


def start(command: Sequence[str], log: BinaryIO, env: Mapping[str, str]) -> subprocess.Popen[Any]:
    """``command`` in its own process group (so `stop` ends the children Flower starts too),
    its output into ``log``."""
    _LOG.debug("starting %s", " ".join(command))
    return subprocess.Popen(
        list(command), stdout=log, stderr=subprocess.STDOUT, env=dict(env), start_new_session=True
    )


def wait_for_port(address: str, process: subprocess.Popen[Any], timeout: float = 60.0) -> None:
    """Return once ``address`` accepts TCP connections; raise if ``process`` exits first or
    ``timeout`` seconds pass."""
    host, port = split_address(address)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FedktError(f"the SuperLink exited with status {process.returncode}; see its log")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise FedktError(f"the SuperLink did not listen on {address} within {timeout:.0f} s")


def stop(process: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """End ``process`` and its process group: SIGTERM, then SIGKILL after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)
            break
    with contextlib.suppress(ProcessLookupError):  # children that outlived their leader
        os.killpg(process.pid, signal.SIGKILL)


# ---- the flwr CLI ---------------------------------------------------------------------------


def write_connection(flwr_home: Path, deployment: DeploymentConfig, *, insecure: bool) -> Path:
    """``$FLWR_HOME/config.toml`` with the SuperLink connection ``fedkt`` as the default, so
    ``flwr run``/``flwr supernode register``/``flwr ls`` reach this SuperLink (over TLS,
    trusting ``ca_cert``)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = [
        "[superlink]",
        f'default = "{CONNECTION}"',
        "",
        f"[superlink.{CONNECTION}]",
        f'address = "{deployment.superlink}"',
    ]
    if insecure:
        lines.append("insecure = true")
    else:
        ca = Path(_existing(deployment.ca_cert, "deployment.ca_cert")).resolve()
        lines.append(f"root-certificates = {_toml_string(str(ca))}")
    path = flwr_home / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def register_nodes(
    deployment: DeploymentConfig, env: Mapping[str, str], timeout: float = 60.0
) -> None:
    """``flwr supernode register`` each of ``node_keys``: only these SuperNodes may join."""
    for key in deployment.node_keys:
        path = _existing(key, "deployment.node_keys")
        done = subprocess.run(
            [executable("flwr"), "supernode", "register", path, CONNECTION],
            env=dict(env), capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise FedktError(
                f"registering SuperNode key {path} failed: {_last_line(done.stdout, done.stderr)}"
            )


def run_app(
    app_dir: Path,
    run_config: Mapping[str, str],
    env: Mapping[str, str],
    timeout: float,
    log: BinaryIO | None = None,
) -> None:
    """``flwr run APP fedkt --run-config ... --stream``: submit the run and follow its log
    until it ends (or ``timeout`` seconds pass)."""
    overrides = " ".join(f"{key}={_toml_string(value)}" for key, value in run_config.items())
    command = [executable("flwr"), "run", str(app_dir), CONNECTION, "--run-config", overrides]
    try:
        done = subprocess.run(
            [*command, "--stream"], env=dict(env), stdout=log, stderr=subprocess.STDOUT,
            timeout=timeout, check=False, start_new_session=True,
        )  # fmt: skip
    except subprocess.TimeoutExpired as err:
        raise FedktError(f"the run did not finish within {timeout:.0f} s") from err
    if done.returncode != 0:
        raise FedktError(f"flwr run exited with status {done.returncode}; see the server log")


# ---- the SuperNode --------------------------------------------------------------------------


def supernode_command(
    deployment: DeploymentConfig,
    node_config: Mapping[str, str | int],
    *,
    key: str | None,
    insecure: bool,
    runtime_port: int,
    max_wait: float | None = None,
) -> list[str]:
    """``flower-supernode`` reaching ``superlink`` over TLS (trusting ``ca_cert``) with its
    authentication key, or ``--insecure``; its Runtime API on 127.0.0.1:``runtime_port``.
    ``max_wait``: give up after that many seconds without a connection (None: retry on)."""
    config = " ".join(
        f"{name}={_toml_string(value) if isinstance(value, str) else value}"
        for name, value in node_config.items()
    )
    command = [
        executable("flower-supernode"),
        "--superlink", deployment.superlink,
        "--node-config", config,
        "--host", "127.0.0.1",
        "--port", str(runtime_port),
    ]  # fmt: skip
    if max_wait is not None:
        command += ["--max-wait-time", str(max_wait)]
    if insecure:
        return [*command, "--insecure"]
    command += ["--root-certificates", _existing(deployment.ca_cert, "deployment.ca_cert")]
    if key:
        command += ["--auth-supernode-private-key", _existing(key, "--key")]
    elif deployment.node_auth:
        raise ConfigError(
            "deployment.node_auth is on: give this client its private key (--key "
            "certs/client<k>.key; `fedkt certs` makes one per client)"
        )
    return command


def die_with_parent() -> None:
    """``preexec_fn`` of a child that must not outlive the fedkt command that started it, even
    when that one is killed (Linux: ``PR_SET_PDEATHSIG`` sends it SIGTERM; elsewhere
    nothing)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


# ---- helpers ----------------------------------------------------------------------------------


def _existing(path: str, setting: str) -> str:
    if not Path(path).is_file():
        raise ConfigError(f"{setting} = {path!r}: no such file (`fedkt certs DIR` makes them)")
    return str(Path(path).resolve())


def _toml_string(value: str) -> str:
    """A TOML basic string: how Flower's ``--run-config``/``--node-config`` parse values (a
    double quote inside would end it early, so it is refused)."""
    if '"' in value or "\\" in value:
        raise ConfigError(f"{value!r}: paths and values must not contain quotes or backslashes")
    return f'"{value}"'


def _last_line(*texts: str) -> str:
    lines = [line for text in texts for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
