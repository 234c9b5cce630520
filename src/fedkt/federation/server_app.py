"""FedCoLLM's ServerApp: the round loop of `fedcollm.run_round`, with Flower messages as the
transport between the server and the clients.

Per round t: (1) send theta to every client, (2) the clients train (`client_app`) and reply
with theta_k and n_k, (3) aggregate, (4) mutual distillation of the LLM and the SLM on D_a,
(5) the distilled theta goes out next round. The server models live in this process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from fedkt.algorithms.fedcollm import (
    ClientUpdate,
    aggregate_adapters,
    check_pair,
    mutual_distillation,
)
from fedkt.errors import FedktError
from fedkt.federation import keys
from fedkt.federation.codec import Adapter, adapter_to_record, record_to_adapter
from fedkt.federation.spec import FederationResult, FederationSpec, RoundRecord
from fedkt.models import adapter_state, add_lora, load_adapter_state, load_model_and_tokenizer

_LOG = logging.getLogger(__name__)
NODE_WAIT_SECONDS = 120.0
"""How long the server waits for all clients to register before giving up."""


@dataclass(frozen=True)
class ServerModels:
    """The server's LLM (adapter omega), its SLM copy (global adapter theta), one tokenizer."""

    llm: PeftModel
    slm: PeftModel
    tokenizer: PreTrainedTokenizerBase


def load_server_models(spec: FederationSpec) -> ServerModels:
    """Both models with fresh LoRA, after checking they share one vocabulary.

    The LoRA initialisation is seeded by ``settings.seed``: theta's first value is the same
    in every run of a spec.
    """
    llm, llm_tokenizer = load_model_and_tokenizer(spec.llm, dtype=spec.dtype, device=spec.device)
    slm, slm_tokenizer = load_model_and_tokenizer(spec.slm, dtype=spec.dtype, device=spec.device)
    check_pair(llm_tokenizer, slm_tokenizer, llm, slm)
    torch.manual_seed(spec.settings.seed)
    lora = spec.settings.lora
    return ServerModels(add_lora(llm, lora), add_lora(slm, lora), llm_tokenizer)


def make_server_app(
    spec: FederationSpec, on_result: Callable[[FederationResult], None]
) -> ServerApp:
    """A ServerApp running `spec`'s rounds and handing the result to ``on_result``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        on_result(run_server(grid, spec, load_server_models(spec)))

    return app


def run_server(grid: Grid, spec: FederationSpec, models: ServerModels) -> FederationResult:
    """All rounds, top to bottom; ``models`` are updated in place."""
    nodes = wait_for_nodes(grid, spec.num_clients)
    rounds = tuple(
        federated_round(grid, nodes, spec, models, t) for t in range(spec.settings.rounds)
    )
    return FederationResult(
        slm_adapter=adapter_state(models.slm), llm_adapter=adapter_state(models.llm), rounds=rounds
    )


def federated_round(
    grid: Grid, nodes: list[int], spec: FederationSpec, models: ServerModels, round_index: int
) -> RoundRecord:
    """One FedCoLLM round over Flower; the same steps as `fedcollm.run_round`."""
    start = time.perf_counter()
    settings = spec.settings
    # 1. broadcast theta
    content = broadcast_content(adapter_state(models.slm), round_index)
    down = keys.check_message_size(
        content, spec.max_message_bytes, what=f"round {round_index} broadcast"
    )
    messages = [
        Message(content, dst_node_id=node, message_type=keys.TRAIN, group_id=str(round_index))
        for node in nodes
    ]
    # 2. local training on the clients
    replies = list(grid.send_and_receive(messages))
    updates, up = read_replies(replies, spec.max_message_bytes)
    # 3. aggregate
    load_adapter_state(models.slm, aggregate_adapters(list(updates.values()), settings.aggregation))
    # 4. mutual distillation on D_a
    distil = mutual_distillation(
        models.llm,
        models.slm,
        models.tokenizer,
        spec.public_data,
        settings,
        seed=settings.seed + round_index,
    )
    metrics = {
        "clients": float(len(updates)),
        "client_examples": float(sum(u.n_examples for u in updates.values())),
        **{f"distil_{name}": value for name, value in distil.items()},
        "seconds": time.perf_counter() - start,
    }
    _LOG.info("FedCoLLM round %d: %s", round_index, metrics)
    return RoundRecord(round_index, dict.fromkeys(nodes, down), up, metrics)


def broadcast_content(theta: Adapter, round_index: int) -> RecordDict:
    """What every client receives in round ``round_index``: theta and the round index."""
    return RecordDict(
        {
            keys.ADAPTER: adapter_to_record(theta),
            keys.CONFIG: ConfigRecord({keys.ROUND: round_index}),
        }
    )


def read_replies(
    replies: Iterable[Message], limit: int
) -> tuple[dict[int, ClientUpdate], dict[int, int]]:
    """Each client's update and reply size, keyed by node id; any error reply raises.

    Sorted by node id: replies arrive in any order, and a fixed order keeps the fp32 sum of
    the aggregation the same from one round to the next.
    """
    replies = sorted(replies, key=lambda reply: reply.metadata.src_node_id)
    errors = [f"node {r.metadata.src_node_id}: {r.error.reason}" for r in replies if r.has_error()]
    if errors:
        raise FedktError(
            f"{len(errors)} of {len(replies)} clients failed this round: " + "; ".join(errors)
        )
    updates, sizes = {}, {}
    for reply in replies:
        node = reply.metadata.src_node_id
        sizes[node] = keys.check_message_size(reply.content, limit, what=f"reply of node {node}")
        n_examples = reply.content.metric_records[keys.COUNTS][keys.N_EXAMPLES]
        updates[node] = ClientUpdate(
            adapter=record_to_adapter(reply.content.array_records[keys.ADAPTER]),
            n_examples=int(n_examples),  # type: ignore[arg-type]
        )
    return updates, sizes


def wait_for_nodes(grid: Grid, count: int, timeout: float = NODE_WAIT_SECONDS) -> list[int]:
    """The node ids of ``count`` clients, sorted, once that many have registered."""
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise FedktError(
                f"only {len(nodes)} of {count} clients registered within {timeout:.0f} s; "
                "check that the SuperNodes are running and can reach the SuperLink."
            )
        time.sleep(0.05)
    return nodes
