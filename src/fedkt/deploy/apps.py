"""The FedCoLLM ServerApp and ClientApp as Flower's deployment engine loads them.

``pyproject.toml``'s ``[tool.flwr.app.components]`` names `serverapp` and `clientapp`. Both
run the simulation's code (`fedkt.federation.fedcollm`: `run_server`, `train`, `query`); what
differs is where their inputs come from:

- the ServerApp reads the fedkt config named by the run config (``config``, and optionally
  ``public``, a rows file with the server's public set D_a); it never sees a client's rows;
- the ClientApp reads the fedkt config, its partition id and its own rows file from its
  SuperNode's node config (``config``, ``partition-id``, ``data``, ``output-dir``), all on the
  client's machine. Setup failures go through the same error boundary as training, so an
  error reply quotes no data.

Flower 1.41 starts one ``flwr-clientapp`` process per message (SuperNode ``--isolation
subprocess``, the default, and ``process`` alike): the client loads its SLM once per round,
not once per run. `_SETUPS` caches the setup should Flower ever reuse a process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedkt.config import FedktConfig, load_config
from fedkt.data import Example
from fedkt.data.formats import LabelFormat
from fedkt.deploy.rows import read_rows
from fedkt.errors import ConfigError
from fedkt.federation import fedcollm
from fedkt.federation.boundary import answer_privately
from fedkt.federation.checkpoint import write_checkpoint
from fedkt.federation.fedcollm import ClientSetup, FederationResult, FederationSpec
from fedkt.report import to_strict_json, write_json

_LOG = logging.getLogger(__name__)

METHOD = "fedcollm-deployed"
"""The folder under ``<output_dir>/<task>/`` where the server keeps the run's outcome."""

RESULT = "result.safetensors"
"""The final adapters (``slm``, ``llm``) and the round records, in that folder."""

# ---- server -------------------------------------------------------------------------------

serverapp = ServerApp()


@serverapp.main()
def _server_main(grid: Grid, context: Context) -> None:
    run_config = context.run_config
    run_deployed_server(grid, str(run_config["config"]), str(run_config.get("public", "")))


def run_deployed_server(grid: Grid, config_path: str, public_path: str = "") -> Path:
    """All FedCoLLM rounds of the config at ``config_path`` over ``grid``; returns the folder
    holding the outcome (`RESULT`, the adapters, ``rounds.json``)."""
    config = load_config(config_path)
    task = deployment_task(config)
    spec = server_spec(config, task, public_path)
    models = spec.load_server_models()
    start = time.perf_counter()
    result = fedcollm.run_server(grid, spec, models)
    folder = Path(config.output_dir) / task / METHOD
    _write_result(folder, result, time.perf_counter() - start)
    _LOG.info("FedCoLLM across machines: %d rounds, outcome in %s", len(result.rounds), folder)
    return folder


def deployment_task(config: FedktConfig) -> str:
    """The one task a deployment trains on (the config's only ``data.tasks`` entry)."""
    if len(config.data.tasks) != 1:
        raise ConfigError(
            f"a deployment runs one task; data.tasks = {list(config.data.tasks)}: keep one"
        )
    return config.data.tasks[0]


def server_spec(config: FedktConfig, task: str, public_path: str = "") -> FederationSpec:
    """The server's FederationSpec: the simulation's, without the clients' rows.

    The server knows how many clients to wait for, not their rows: each client partition is
    a one-row stand-in (`FederationSpec` wants non-empty partitions; the server uses them for
    the client count and its progress line only). D_a comes from ``public_path`` when given,
    else from the task's split as the simulation carves it (`TaskData`).
    """
    from fedkt.jobs import placement

    settings = config.fedcollm.settings(config.train, config.lora)
    no_public = settings.distil and settings.aux_source == "dp_synthetic"
    public, label_rows = _server_rows(config, task, public_path, need_format=no_public)
    dtype, device = placement(config)
    folder = Path(config.output_dir) / task / METHOD
    return FederationSpec(
        llm=config.federation.llm,
        slm=config.federation.slm,
        client_data=tuple((_STAND_IN,) for _ in range(config.federation.clients)),
        public_data=() if no_public else public,
        settings=settings,
        dtype=dtype,
        device=device,
        checkpoint=str(folder / "checkpoint.safetensors"),
        aux_format=LabelFormat.of(list(label_rows)) if no_public else None,
        generator=config.fedcollm.generator,
    )


_STAND_IN = Example(id="remote", context="(held by the client)", choices=("-",), gold=0)


def _server_rows(
    config: FedktConfig, task: str, public_path: str, *, need_format: bool
) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """(D_a, rows to read the task's label format from)."""
    if public_path:
        public = read_rows(public_path)
        return public, public
    from fedkt.experiments.harness import TaskData  # the simulation's split, seed for seed

    data = TaskData.load(config, task)
    return tuple(data.public), tuple(data.evaluation) if need_format else ()


def _write_result(folder: Path, result: FederationResult, seconds: float) -> None:
    adapters = {"slm": result.slm_adapter}
    if result.llm_adapter:
        adapters["llm"] = result.llm_adapter
    rounds = [
        {
            "round": r.round,
            "bytes_down": r.bytes_down,
            "bytes_up": r.bytes_up,
            "metrics": r.metrics,
        }
        for r in result.rounds
    ]
    state = {"rounds": rounds, "seconds": seconds}
    write_checkpoint(folder / RESULT, adapters, to_strict_json(state))
    write_json(folder / "rounds.json", to_strict_json(state))


# ---- client -------------------------------------------------------------------------------

clientapp = ClientApp()

_SETUPS: dict[tuple[str, ...], ClientSetup] = {}

Handler = Callable[[ClientSetup, Message, Context], Message]


@clientapp.train()
def _client_train(msg: Message, context: Context) -> Message:
    return answer_privately("FedCoLLM", partial(_with_setup, fedcollm.train), msg, context)


@clientapp.query()
def _client_query(msg: Message, context: Context) -> Message:
    return answer_privately("FedCoLLM", partial(_with_setup, fedcollm.query), msg, context)


def _with_setup(handler: Handler, msg: Message, context: Context, partition: int) -> Message:
    return handler(client_setup(context.node_config), msg, context)


def client_setup(node_config: dict[str, Any]) -> ClientSetup:
    """This SuperNode's ClientSetup: its settings from the fedkt config, its rows from its own
    file. ``partitions`` holds its rows at its own index and nothing at any other (the
    handlers read ``partitions[partition-id]``)."""
    try:
        config_path, data_path = str(node_config["config"]), str(node_config["data"])
        partition = int(node_config["partition-id"])
        output_dir = str(node_config.get("output-dir", ""))
    except KeyError as err:
        raise ConfigError(
            f"this SuperNode's node config lacks {err}; start it with `fedkt client`"
        ) from err
    key = (config_path, data_path, str(partition), output_dir)
    if key not in _SETUPS:
        _SETUPS[key] = _build_setup(load_config(config_path), data_path, partition, output_dir)
    return _SETUPS[key]


def _build_setup(
    config: FedktConfig, data_path: str, partition: int, output_dir: str
) -> ClientSetup:
    from fedkt.jobs import placement

    rows = read_rows(data_path)
    settings = config.fedcollm.settings(config.train, config.lora)
    dp_aux = settings.distil and settings.aux_source == "dp_synthetic"
    dtype, device = placement(config)
    reports = Path(output_dir or config.output_dir) / "client-reports"
    return ClientSetup(
        slm=config.federation.slm,
        partitions=tuple(rows if k == partition else () for k in range(partition + 1)),
        train=settings.client,
        lora=settings.lora,
        dtype=dtype,
        device=device,
        generator=config.fedcollm.generator,
        dp_aux=settings.dp_aux if dp_aux else None,
        reports_dir=str(reports) if dp_aux else None,
    )
