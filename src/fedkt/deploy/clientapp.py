"""The deployed ClientApp, in the module Flower loads for it (``pyproject.toml``'s
``[tool.flwr.app.components]``); `fedkt.deploy.apps` has what it runs.

Flower 1.41 starts one ``flwr-clientapp`` process per message, four per client in a SecAgg+
round. So this module, and all it imports to forward a message to `fedkt client`'s worker
(`fedkt.deploy.worker.forward`, the SecAgg+ mod, the error boundary), imports no torch,
transformers or peft: some 5 s of CPU per message otherwise. Without a worker (``flwr run``,
``fedkt client --no-worker``) the message is answered here by `fedkt.deploy.apps.answer`,
imported only then.
"""

from __future__ import annotations

import tomllib
from functools import partial
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedkt.deploy import worker
from fedkt.federation.boundary import answer_privately
from fedkt.federation.secagg import secure_aggregation_mod

ALGORITHM_NAMES = {"fedcollm": "FedCoLLM", "fedcot": "FedCoT", "fdkt": "FDKT"}
"""The config's ``algorithm`` -> the name its log lines and error replies use."""

clientapp = ClientApp(mods=[secure_aggregation_mod])
"""Answers SecAgg+'s stages when the server asks for them (`[fedcollm] secure_aggregation`)
and lets every other message through, as the simulation's client app does."""


@clientapp.train()
def _client_train(msg: Message, context: Context) -> Message:
    return _reply("train", msg, context)


@clientapp.query()
def _client_query(msg: Message, context: Context) -> Message:
    return _reply("query", msg, context)


def _reply(kind: str, msg: Message, context: Context) -> Message:
    """`fedkt.deploy.apps.answer`, from this SuperNode's worker when `fedkt client` started
    one. A worker that is unreachable or dies fails this message alone, behind the error
    boundary."""
    folder = context.node_config.get(worker.NODE_CONFIG_KEY)
    if not folder:
        from fedkt.deploy import apps  # torch, transformers: this process computes the reply

        return apps.answer(kind, msg, context)
    name = algorithm_name(context.node_config)
    return answer_privately(name, partial(_forwarded, Path(str(folder)), kind), msg, context)


def _forwarded(folder: Path, kind: str, msg: Message, context: Context, partition: int) -> Message:
    return worker.forward(folder, kind, msg, context)


def algorithm_name(node_config: dict[str, Any]) -> str:
    """The name of this SuperNode's algorithm (its fedkt config's ``algorithm``), "FedCoLLM"
    when the config cannot be read (its own error comes later, inside the boundary). The key
    alone, read with tomllib: `fedkt.config.load_config` imports every algorithm's stack."""
    try:
        with open(str(node_config["config"]), "rb") as file:
            return ALGORITHM_NAMES[tomllib.load(file).get("algorithm", "fedcollm")]
    except Exception:
        return "FedCoLLM"
