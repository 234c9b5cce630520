"""FedCoLLM's ClientApp: step 2 of a round (local training on the private partition).

The handler receives the global SLM adapter theta and the round index, runs
`fedcollm.client_update` and replies with theta_k and n_k only (see `keys`). The SLM is
loaded once per client process and kept in a module-level cache: a Ray actor imports this
module once and serves many messages, so later rounds cost no model load.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.common.constant import PARTITION_ID_KEY, ErrorCode
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from fedkt.algorithms.fedcollm import client_update
from fedkt.data import Example
from fedkt.federation import keys
from fedkt.federation.codec import adapter_to_record, record_to_adapter
from fedkt.models import LoraSettings, add_lora, load_model_and_tokenizer
from fedkt.training import TrainSettings

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientSetup:
    """What a client process needs to answer a round.

    Args:
        slm: the SLM's model name (embedded name, local directory or hub id).
        partitions: the private examples D_k of every client, indexed by Flower's
            ``partition-id``. The simulation ships the table to each client process, which
            reads only its own entry; a deployed SuperNode would hold just its own data.
        train: local training settings; the seed is offset by the round index.
        lora: the SLM's LoRA (must match the server's, or aggregation refuses the update).
        dtype: model dtype (None: fedkt.models.pick_dtype).
        device: model device (None: fedkt.models.pick_device).
        max_message_bytes: replies larger than this are refused before sending.
    """

    slm: str
    partitions: tuple[tuple[Example, ...], ...]
    train: TrainSettings
    lora: LoraSettings
    dtype: str | None = None
    device: str | None = None
    max_message_bytes: int = keys.DEFAULT_MAX_MESSAGE_BYTES


_SlmKey = tuple[str, LoraSettings, str | None, str | None]
_SLMS: dict[_SlmKey, tuple[PeftModel, PreTrainedTokenizerBase]] = {}


def make_client_app(setup: ClientSetup, mods: Sequence[Mod] = ()) -> ClientApp:
    """A ClientApp answering FedCoLLM ``train`` messages; ``mods`` wrap its handler (e.g. an
    audit that records every outgoing message)."""
    app = ClientApp(mods=list(mods))
    # A partial of a module-level function pickles by reference: Ray ships `setup` by value
    # and each client process keeps using this module's model cache.
    app.train()(partial(train, setup))
    return app


def train(setup: ClientSetup, msg: Message, context: Context) -> Message:
    """The ``train`` handler: local update, or an error reply that quotes no data."""
    return answer_privately("FedCoLLM", partial(_train, setup), msg, context)


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
    partition = int(context.node_config[PARTITION_ID_KEY])
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


def _train(setup: ClientSetup, msg: Message, context: Context, partition: int) -> Message:
    slm, tokenizer = _load_slm(setup)
    round_index = int(msg.content.config_records[keys.CONFIG][keys.ROUND])  # type: ignore[arg-type]
    settings = replace(setup.train, seed=setup.train.seed + round_index)
    theta = record_to_adapter(msg.content.array_records[keys.ADAPTER])
    update = client_update(slm, tokenizer, theta, setup.partitions[partition], settings)
    content = RecordDict(
        {
            keys.ADAPTER: adapter_to_record(update.adapter),
            keys.COUNTS: MetricRecord({keys.N_EXAMPLES: update.n_examples}),
        }
    )
    keys.check_message_size(
        content, setup.max_message_bytes, what=f"reply of partition {partition}"
    )
    return Message(content, reply_to=msg)


def _load_slm(setup: ClientSetup) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """This process's SLM with LoRA, loaded on first use.

    Partitions served by one process share it: `client_update` first loads the broadcast
    adapter over every LoRA weight and builds a fresh optimiser, so nothing carries over
    from one partition to the next.
    """
    key = (setup.slm, setup.lora, setup.dtype, setup.device)
    if key not in _SLMS:
        model, tokenizer = load_model_and_tokenizer(
            setup.slm, dtype=setup.dtype, device=setup.device
        )
        _SLMS[key] = (add_lora(model, setup.lora), tokenizer)
    return _SLMS[key]
