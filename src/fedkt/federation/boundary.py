"""The client's error boundary: a failure becomes an error reply that quotes no data."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.common.constant import PARTITION_ID_KEY, ErrorCode

_LOG = logging.getLogger(__name__)

SpecT = TypeVar("SpecT")
Handler = Callable[[SpecT, Message, Context, int], Message]
"""``handler(spec, msg, context, partition)`` -> the reply."""


def partition_of(context: Context) -> int:
    """This client's partition id (Flower's node config ``partition-id``)."""
    return int(context.node_config[PARTITION_ID_KEY])


def answer_privately(
    algorithm: str,
    handler: Callable[[Message, Context, int], Message],
    msg: Message,
    context: Context,
) -> Message:
    """``handler(msg, context, partition)``, or on failure an error reply that quotes no data.

    Exceptions stop here on purpose: Flower would otherwise send their text (and traceback)
    to the server, and an error about an example may quote it. The details go to this
    client's log only. Every client handler of every algorithm goes through here.
    """
    partition = partition_of(context)
    try:
        return handler(msg, context, partition)
    except Exception as err:  # the boundary of the client: nothing private may leave
        _LOG.exception("%s client of partition %d failed", algorithm, partition)
        reason = (
            f"{type(err).__name__} in the {algorithm} client of partition {partition}; the "
            "details are in that client's log only (they may quote private data)."
        )
        return Message(
            Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg
        )


def query_train_app(
    algorithm: str,
    spec: SpecT,
    on_query: Handler[SpecT],
    on_train: Handler[SpecT],
    mods: Sequence[Mod] = (),
) -> ClientApp:
    """A ClientApp answering a QUERY then a TRAIN message (FedCoT, FDKT), both handlers behind
    `answer_privately`; ``mods`` wrap them (e.g. an audit of every outgoing message). The
    handlers are module-level functions in partials: Ray pickles them by reference."""
    app = ClientApp(mods=list(mods))
    app.query()(partial(_guarded, algorithm, on_query, spec))
    app.train()(partial(_guarded, algorithm, on_train, spec))
    return app


def _guarded(
    algorithm: str, handler: Handler[SpecT], spec: SpecT, msg: Message, context: Context
) -> Message:
    return answer_privately(algorithm, partial(handler, spec), msg, context)
