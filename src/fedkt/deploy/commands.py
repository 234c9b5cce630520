"""`fedkt server` and `fedkt client`: a run across machines, one command per side.

The config's ``algorithm`` (FedCoLLM, FedCoT or FDKT) picks what runs; the commands are the
same for all three. The server side starts a SuperLink (unless one runs already), registers
the clients' public keys, submits the deployed app (`fedkt.deploy.apps`) with ``flwr run``
and follows its log to the end, then stops the SuperLink. A client side becomes one
SuperNode (``flower-supernode`` replaces the fedkt process) whose node config points its
ClientApp at the client's own config and rows.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import fedkt
from fedkt.config import FedktConfig
from fedkt.deploy import launch
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
clientapp = "fedkt.deploy.apps:clientapp"

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
) -> None:
    """Become this client's SuperNode (never returns): check the rows file, then replace this
    process with ``flower-supernode``."""
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
    command = launch.supernode_command(
        config.deployment,
        node_config,
        key=key,
        insecure=insecure,
        runtime_port=launch.free_port(),
        max_wait=max_wait,
    )
    flwr_home = Path(os.environ.get("FLWR_HOME") or output / "flwr-home")
    env = launch.flower_env({"FLWR_HOME": str(flwr_home), **_cache_env(config)})
    _LOG.info(
        "client %d: %d rows from %s, joining %s", partition, len(rows), data,
        config.deployment.superlink,
    )  # fmt: skip
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)


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
