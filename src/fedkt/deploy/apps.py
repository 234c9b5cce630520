"""The deployed ServerApp, and what the deployed ClientApp runs.

``pyproject.toml``'s ``[tool.flwr.app.components]`` names `serverapp` (here) and `clientapp`
(`fedkt.deploy.clientapp`, a small module that imports no torch): one pair for every
algorithm, dispatching on the fedkt config's ``algorithm``. Each runs the
simulation's code (FedCoLLM: `fedkt.federation.fedcollm`'s `run_server`, `train`, `query`;
FedCoT and FDKT: their server functions and client apps, `fedkt.deploy.fedcot`,
`fedkt.deploy.fdkt`); what differs is where their inputs come from:

- the ServerApp reads the fedkt config named by the run config (``config``, and for FedCoLLM
  optionally ``public``, a rows file with the server's public set D_a); it never sees a
  client's rows;
- the ClientApp reads the fedkt config, its partition id and its own rows file from its
  SuperNode's node config (``config``, ``partition-id``, ``data``, ``output-dir``), all on the
  client's machine. Setup failures go through the same error boundary as training, so an
  error reply quotes no data.

Flower 1.41 starts one ``flwr-clientapp`` process per message (SuperNode ``--isolation
subprocess``, the default, and ``process`` alike), which would load the client's models once
per message. So when the node config names a worker (``worker``: `fedkt client` starts one
unless ``--no-worker``), the ClientApp forwards each message to that long-lived process
(`fedkt.deploy.worker`), which runs `answer` with the models still loaded (`_SETUPS`,
`_APPS` and the algorithms' model caches live there); without one it imports this module and
runs `answer` itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedkt.algorithms.fedcollm import ServerModels
from fedkt.config import FedktConfig, load_config
from fedkt.data import Example
from fedkt.data.formats import LabelFormat
from fedkt.deploy import fdkt as deployed_fdkt
from fedkt.deploy import fedcot as deployed_fedcot
from fedkt.deploy.clientapp import ALGORITHM_NAMES
from fedkt.deploy.clientapp import clientapp as clientapp  # the component's former home
from fedkt.deploy.common import OUTCOME, NodeSetup, cached_config, one_point
from fedkt.deploy.common import deployment_task as deployment_task  # `fedkt partition` uses it
from fedkt.deploy.rows import read_rows
from fedkt.federation import fedcollm
from fedkt.federation.boundary import answer_privately
from fedkt.federation.checkpoint import write_checkpoint
from fedkt.federation.fdkt import make_fdkt_client_app
from fedkt.federation.fedcollm import ClientSetup, FederationResult, FederationSpec
from fedkt.federation.fedcot import make_fedcot_client_app
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
    config_path = str(run_config["config"])
    config = load_config(config_path)
    if config.algorithm == "fedcot":
        deployed_fedcot.run_deployed_fedcot(grid, config)
    elif config.algorithm == "fdkt":
        deployed_fdkt.run_deployed_fdkt(grid, config)
    else:
        run_deployed_server(grid, config_path, str(run_config.get("public", "")))


def preflight(config: FedktConfig) -> None:
    """Refuse, before any process starts, a config a deployment cannot run: more than one
    task, or (FedCoT, FDKT) more than one point of a sweep."""
    deployment_task(config)
    if config.algorithm == "fedcot":
        deployed_fedcot.point(config)
    elif config.algorithm == "fdkt":
        one_point("fdkt.eps", config.fdkt.eps)


def outcome_file(config: FedktConfig) -> Path:
    """The file a finished deployed run of ``config`` leaves on the server: FedCoLLM's
    `RESULT` (adapters and rounds), FedCoT's and FDKT's `OUTCOME` (counts and bytes), in
    ``<output_dir>/<task>/<algorithm>-deployed/``."""
    folder = Path(config.output_dir) / deployment_task(config)
    if config.algorithm == "fedcot":
        return folder / deployed_fedcot.METHOD / OUTCOME
    if config.algorithm == "fdkt":
        return folder / deployed_fdkt.METHOD / OUTCOME
    return folder / METHOD / RESULT


def run_deployed_server(grid: Grid, config_path: str, public_path: str = "") -> Path:
    """All FedCoLLM rounds of the config at ``config_path`` over ``grid``; returns the folder
    holding the outcome (`RESULT`, the adapters, ``rounds.json``)."""
    config = load_config(config_path)
    task = deployment_task(config)
    spec = server_spec(config, task, public_path)
    models = spec.load_server_models()
    start = time.perf_counter()
    with client_count_line():
        result = fedcollm.run_server(grid, spec, models)
    folder = Path(config.output_dir) / task / METHOD
    _write_result(folder, result, time.perf_counter() - start)
    _save_models(folder, config, task, models, public_rows=len(spec.public_data))
    _LOG.info("FedCoLLM across machines: %d rounds, outcome in %s", len(result.rounds), folder)
    return folder


ROUND_LINE = "%s round %d/%d: %d clients x %s rows, %s, %.0f s"
"""The protocol's progress line (`fedkt.federation.fedcollm`), which counts each client's rows
in ``FederationSpec.client_data``: on this server those are one-row stand-ins."""

DEPLOYED_ROUND_LINE = "%s round %d/%d: %d clients, %s, %.0f s"
"""The same line on the deployed server: the client count only (it never sees their rows)."""


class _ClientCountOnly(logging.Filter):
    """Rewrites `ROUND_LINE` to `DEPLOYED_ROUND_LINE` (drops the stand-in row count)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == ROUND_LINE and isinstance(record.args, tuple) and len(record.args) == 7:
            record.msg = DEPLOYED_ROUND_LINE
            record.args = record.args[:4] + record.args[5:]
        return True


@contextmanager
def client_count_line() -> Iterator[None]:
    """While open, the protocol's round line gives the client count without rows. (The real
    fix belongs in `fedkt.federation.fedcollm`: count the clients' rows from their replies'
    ``n-examples``, and let a FederationSpec name its clients without holding their rows.)"""
    logger, only = logging.getLogger(fedcollm.__name__), _ClientCountOnly()
    logger.addFilter(only)
    try:
        yield
    finally:
        logger.removeFilter(only)


def server_spec(config: FedktConfig, task: str, public_path: str = "") -> FederationSpec:
    """The server's FederationSpec: the simulation's, without the clients' rows.

    The server knows how many clients to wait for, not their rows: each client partition is
    a one-row stand-in (`FederationSpec` wants non-empty partitions; the server uses them for
    the client count only: `client_count_line` keeps their size out of the progress line).
    D_a comes from ``public_path`` when given, else from the task's split as the simulation
    carves it (`TaskData`).
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
        policy=config.fedcollm.round_policy(),  # min_clients, timeouts, SecAgg+
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
            "missing": list(r.missing),
            "metrics": r.metrics,
        }
        for r in result.rounds
    ]
    state = {"rounds": rounds, "seconds": seconds}
    write_checkpoint(folder / RESULT, adapters, to_strict_json(state))
    write_json(folder / "rounds.json", to_strict_json(state))


def _save_models(
    folder: Path, config: FedktConfig, task: str, models: ServerModels, public_rows: int
) -> None:
    """The final adapters as the simulation saves them (peft folders ``slm/`` and ``llm/``)
    and a ``run.json``, so ``fedkt export FOLDER --which slm`` merges the deployed result into
    a transformers folder as it does a simulated one. The server never evaluates: no metrics."""
    from fedkt.experiments.harness import run_record, save_adapter

    save_adapter(models.slm, folder / "slm")
    if models.llm is not None:
        save_adapter(models.llm, folder / "llm")
    data = {"split": None, "rows": {"public": public_rows}, "deployed": True}
    write_json(folder / "run.json", run_record(config, "fedcollm", METHOD, task, data=data,
                                               metrics={}))  # fmt: skip


# ---- client -------------------------------------------------------------------------------

_SETUPS: dict[tuple[str, ...], ClientSetup] = {}
_APPS: dict[tuple[str, ...], ClientApp] = {}

Handler = Callable[[ClientSetup, Message, Context], Message]

_HANDLERS: dict[str, Handler] = {"train": fedcollm.train, "query": fedcollm.query}


def answer(kind: str, msg: Message, context: Context) -> Message:
    """The reply to a ``kind`` ("train"/"query") message, computed in this process (the
    worker's code, and the ClientApp's without a worker: `fedkt.deploy.clientapp`)."""
    return _answer(_HANDLERS[kind], msg, context)


def _answer(fedcollm_handler: Handler, msg: Message, context: Context) -> Message:
    """The reply of this SuperNode's algorithm (its config's ``algorithm``), behind the error
    boundary; a config that cannot be read fails there too, as the FedCoLLM client's."""
    algorithm = _algorithm(context.node_config)
    if algorithm in ("fedcot", "fdkt"):
        return answer_privately(ALGORITHM_NAMES[algorithm], _answer_text_protocol, msg, context)
    return answer_privately("FedCoLLM", partial(_with_setup, fedcollm_handler), msg, context)


def _algorithm(node_config: dict[str, Any]) -> str:
    try:
        return cached_config(str(node_config["config"])).algorithm
    except Exception:  # the FedCoLLM path reports it inside the boundary
        return "fedcollm"


def _with_setup(handler: Handler, msg: Message, context: Context, partition: int) -> Message:
    return handler(client_setup(context.node_config), msg, context)


def _answer_text_protocol(msg: Message, context: Context, partition: int) -> Message:
    """FedCoT's or FDKT's client app, as in the simulation, over this client's own spec."""
    return client_app(context.node_config)(msg, context)


def client_app(node_config: dict[str, Any]) -> ClientApp:
    """This SuperNode's FedCoT or FDKT client app (the simulation's handlers), over a spec
    holding its own rows at its own index (`fedkt.deploy.fedcot.client_spec`,
    `fedkt.deploy.fdkt.client_spec`)."""
    node = NodeSetup.of(node_config)
    key = (node.config_path, node.data, str(node.partition), node.output_dir)
    if key not in _APPS:
        config = cached_config(node.config_path)
        if config.algorithm == "fedcot":
            _APPS[key] = make_fedcot_client_app(deployed_fedcot.client_spec(config, node))
        else:
            _APPS[key] = make_fdkt_client_app(deployed_fdkt.client_spec(config, node))
    return _APPS[key]


def client_setup(node_config: dict[str, Any]) -> ClientSetup:
    """This SuperNode's FedCoLLM ClientSetup: its settings from the fedkt config, its rows
    from its own file. ``partitions`` holds its rows at its own index and nothing at any
    other (the handlers read ``partitions[partition-id]``)."""
    node = NodeSetup.of(node_config)
    key = (node.config_path, node.data, str(node.partition), node.output_dir)
    if key not in _SETUPS:
        _SETUPS[key] = _build_setup(
            load_config(node.config_path), node.data, node.partition, node.output_dir
        )
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
