"""FedAvg and FedCoLLM over Flower's simulation, with a hook after every round.

`fedkt.federation.simulate_fedcollm` returns only the final adapters; a learning curve needs
the server's models after each round. The ServerApp here runs the same loop as
`fedkt.federation.server_app.run_server`, takes the round as a function (FedCoLLM's
`federated_round`, or `fedavg_round`: FedCoLLM without step 4) and calls ``after_round`` with
the live server models, in this process, between rounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from fedkt.algorithms.fedcollm import aggregate_adapters
from fedkt.federation import (
    FederationResult,
    FederationSpec,
    RoundRecord,
    ServerModels,
    check_message_size,
    keys,
    load_server_models,
    make_client_app,
)
from fedkt.federation.server_app import (
    broadcast_content,
    federated_round,
    read_replies,
    wait_for_nodes,
)
from fedkt.models import adapter_state, load_adapter_state

RoundFn = Callable[[Grid, list[int], FederationSpec, ServerModels, int], RoundRecord]
AfterRound = Callable[[int, ServerModels], None]


def fedavg_round(
    grid: Grid, nodes: list[int], spec: FederationSpec, models: ServerModels, round_index: int
) -> RoundRecord:
    """FedCoLLM's steps 1-3 only (broadcast, local training, averaging): FedAvg of the SLM
    adapters, the same messages and sizes, no distillation; the LLM is never touched."""
    start = time.perf_counter()
    content = broadcast_content(adapter_state(models.slm), round_index)
    down = check_message_size(
        content, spec.max_message_bytes, what=f"round {round_index} broadcast"
    )
    messages = [
        Message(content, dst_node_id=node, message_type=keys.TRAIN, group_id=str(round_index))
        for node in nodes
    ]
    updates, up = read_replies(grid.send_and_receive(messages), spec.max_message_bytes)
    theta = aggregate_adapters(list(updates.values()), spec.settings.aggregation)
    load_adapter_state(models.slm, theta)
    metrics = {
        "clients": float(len(updates)),
        "client_examples": float(sum(u.n_examples for u in updates.values())),
        "seconds": time.perf_counter() - start,
    }
    return RoundRecord(round_index, dict.fromkeys(nodes, down), up, metrics)


def simulate(
    spec: FederationSpec, round_fn: RoundFn = federated_round, after_round: AfterRound | None = None
) -> FederationResult:
    """All of ``spec``'s rounds of ``round_fn`` in Flower's simulation (one SuperNode per
    client partition), calling ``after_round(t, models)`` after round t."""
    from flwr.simulation import run_simulation  # imports Ray (~1 s): only when simulating

    results: list[FederationResult] = []

    def main(grid: Grid, context: Context) -> None:
        models = load_server_models(spec)
        nodes = wait_for_nodes(grid, spec.num_clients)
        records = []
        for t in range(spec.settings.rounds):
            records.append(round_fn(grid, nodes, spec, models, t))
            if after_round is not None:
                after_round(t, models)
        slm, llm = adapter_state(models.slm), adapter_state(models.llm)
        results.append(FederationResult(slm, llm, tuple(records)))

    server = ServerApp()
    server.main()(main)
    run_simulation(
        server_app=server,
        client_app=make_client_app(spec.client_setup()),
        num_supernodes=spec.num_clients,
        backend_config={
            "client_resources": {"num_cpus": spec.client_cpus, "num_gpus": spec.client_gpus}
        },
    )
    return results[0]  # run_simulation re-raises a ServerApp failure, so the result is there
