"""`fedkt server` and `fedkt client`: a run across machines, one command per side.

The config's ``algorithm`` (FedCoLLM, FedCoT or FDKT) picks what runs; the commands are the
same for all three. The server side starts a SuperLink (unless one runs already), registers
the clients' public keys, submits the deployed app (`fedkt.deploy.apps`) with ``flwr run``
and follows its log to the end, then stops the SuperLink. A client side runs one SuperNode
(``flower-supernode``) whose node config points its ClientApp at the client's own config and
rows, and beside it the client's worker (`fedkt.deploy.worker`), which keeps the models loaded
across rounds; both stop when the command does. With ``worker=False`` the SuperNode replaces
the fedkt process, and each message loads the models again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import fedkt
from fedkt.config import FedktConfig
from fedkt.deploy import launch
from fedkt.deploy import worker as client_worker
from fedkt.deploy.apps import outcome_file, preflight
from fedkt.deploy.rows import read_rows
from fedkt.errors import FedktError

_LOG = logging.getLogger(__name__)

_APP_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "fedkt"
version = "{version}"
description = "FedCoLLM, FedCoT and FDKT across machines (fedkt.deploy.apps)"
license = {{ text = "Apache-2.0" }}
dependencies = []

[tool.flwr.app]
publisher = "fedkt"

[tool.flwr.app.components]
serverapp = "fedkt.deploy.apps:serverapp"
clientapp = "fedkt.deploy.clientapp:clientapp"

[tool.flwr.app.config]
config = ""
public = ""
"""


def serve(
    config: FedktConfig,
    config_path: str,
    *,
    public: str = "",
    insecure: bool = False,
    superlink_running: bool = False,
) -> Path:
    """Run the config's algorithm over the deployment engine; returns the folder with the
    outcome (`fedkt.deploy.apps.outcome_file`)."""
    deployment, output = config.deployment, Path(config.output_dir).resolve()
    preflight(config)  # one task (and one point), checked before any process starts
    output.mkdir(parents=True, exist_ok=True)
    if insecure:
        _LOG.warning(launch.INSECURE_WARNING)
    flwr_home = Path(os.environ.get("FLWR_HOME") or output / "flwr-home")
    env = launch.flower_env({"FLWR_HOME": str(flwr_home), **_cache_env(config)})
    launch.write_connection(flwr_home, deployment, insecure=insecure)
    result = outcome_file(config).resolve()
    result.unlink(missing_ok=True)  # an old run's outcome must not pass for this one's
    superlink = None
    with open(output / "superlink.log", "ab") as log:
        try:
            if not superlink_running:
                command = launch.superlink_command(deployment, insecure=insecure)
                superlink = launch.start(command, log, env)
                launch.wait_for_port(deployment.superlink, superlink)
                _LOG.info("SuperLink on %s (log: %s)", deployment.superlink, log.name)
            if deployment.node_auth and not insecure:
                launch.register_nodes(deployment, env)
                _LOG.info("%d SuperNode keys registered", len(deployment.node_keys))
            _LOG.info("waiting for %d clients", config.federation.clients)
            run_config = {"config": str(Path(config_path).resolve())}
            if public:
                run_config["public"] = str(Path(public).resolve())
            launch.run_app(app_dir(output), run_config, env, deployment.timeout)
        finally:
            if superlink is not None:
                launch.stop(superlink)
    if not result.is_file():
        raise FedktError(f"the run ended without an outcome ({result}); see {output}/superlink.log")
    return result.parent


def join(
    config: FedktConfig,
    config_path: str,
    *,
    data: str,
    partition: int,
    key: str | None = None,
    insecure: bool = False,
    max_wait: float | None = None,
    worker: bool = True,
) -> None:
    """Run this client's SuperNode until it exits or this command is stopped: check the rows
    file, start the worker (unless ``worker`` is False: then ``flower-supernode`` replaces
    this process), then the SuperNode; stop both on the way out."""
    preflight(config)
    rows = read_rows(data)  # fail here, not inside the first round
    output = Path(config.output_dir).resolve()
    if insecure:
        _LOG.warning(launch.INSECURE_WARNING)
    node_config: dict[str, str | int] = {
        "partition-id": partition,
        "num-partitions": config.federation.clients,
        "config": str(Path(config_path).resolve()),
        "data": str(Path(data).resolve()),
        "output-dir": str(output),
    }
    folder = client_worker.folder_for(output, partition) if worker else None
    if folder is not None:
        node_config[client_worker.NODE_CONFIG_KEY] = str(folder)
    command = launch.supernode_command(
        config.deployment,
        node_config,
        key=key,
        insecure=insecure,
        runtime_port=launch.free_port(),
        max_wait=max_wait,
    )
    flwr_home = Path(os.environ.get("FLWR_HOME") or output / "flwr-home")
    env = launch.flower_env({"FLWR_HOME": str(flwr_home), **_cache_env(config), **_poll_env()})
    _LOG.info(
        "client %d: %d rows from %s, joining %s", partition, len(rows), data,
        config.deployment.superlink,
    )  # fmt: skip
    sys.stdout.flush()
    sys.stderr.flush()
    if folder is None:
        os.execve(command[0], command, env)
    stats = output / f"client-worker-{partition}" / client_worker.STATS
    _run_beside_worker(command, env, folder, stats)


_POLL = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"


def _poll_env() -> dict[str, str]:
    """Flower's SuperExec asks its SuperNode for the next message every second by default
    (``run_superexec.py``), a wait each message pays before its ClientApp process starts;
    with the models kept in the worker that wait would be a round's largest cost on small
    models. Flower accepts 0.01 to 60 s; an interval set in the environment stays."""
    return {_POLL: os.environ.get(_POLL, "0.2")}


def _run_beside_worker(command: list[str], env: dict[str, str], folder: Path, stats: Path) -> None:
    """The worker, then the SuperNode, until the SuperNode exits or this command is stopped
    (Ctrl-C, SIGTERM, SIGHUP); both are stopped on the way out, every wait bounded."""
    client_worker.prepare(folder)
    stats.parent.mkdir(parents=True, exist_ok=True)
    stats.unlink(missing_ok=True)  # an earlier run's counts must not pass for this one's
    previous = {sig: signal.signal(sig, _interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    helper = supernode = None
    try:
        helper = client_worker.start(folder, stats, env)
        supernode = subprocess.Popen(
            command, env=env, start_new_session=True, preexec_fn=launch.die_with_parent
        )
        code = _wait(supernode, helper)
    finally:
        if supernode is not None:
            launch.stop(supernode, grace=5.0)
        if helper is not None:
            client_worker.stop(helper, folder)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code != 0:
        raise FedktError(f"the SuperNode exited with status {code}; see the lines above")


def _wait(supernode: subprocess.Popen[bytes], helper: subprocess.Popen[bytes]) -> int:
    """The SuperNode's exit status; says once if the worker ends first."""
    warned = False
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return supernode.wait(timeout=1.0)
        if not warned and helper.poll() is not None:
            _LOG.error(
                "the client's worker exited with status %s: every message fails until you "
                "restart `fedkt client`", helper.returncode,
            )  # fmt: skip
            warned = True


def _interrupted(signum: int, frame: object) -> None:
    """SIGTERM and SIGHUP end `fedkt client` as Ctrl-C does, so its children are stopped."""
    raise KeyboardInterrupt


def app_dir(output: Path) -> Path:
    """The Flower app ``flwr run`` builds: fedkt's source tree when this is a checkout (its
    pyproject.toml has [tool.flwr.app]), else a minimal app written under ``output``."""
    checkout = Path(fedkt.__file__).resolve().parents[2]
    pyproject = checkout / "pyproject.toml"
    if pyproject.is_file() and "[tool.flwr.app]" in pyproject.read_text(encoding="utf-8"):
        return checkout
    folder = output / "flwr-app"
    folder.mkdir(parents=True, exist_ok=True)
    text = _APP_PYPROJECT.format(version=fedkt.__version__)
    (folder / "pyproject.toml").write_text(text, encoding="utf-8")
    return folder


def _cache_env(config: FedktConfig) -> dict[str, str]:
    """The model cache for the app processes Flower starts (they read it from the env)."""
    return {"FEDKT_CACHE_DIR": config.cache_dir} if config.cache_dir else {}
