"""Flower's in-process simulation, the embedded default for every algorithm.

Flower simulates each client on a Ray actor: a separate process. Live models therefore cannot
be handed to the clients; each ClientApp carries a picklable setup (model names and data) and
loads its models itself, once per process. The ServerApp runs in a thread of this process, so
its result comes back through a plain callback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

T = TypeVar("T")


def simulate(
    server_main: Callable[[Grid], T],
    client_app: ClientApp,
    *,
    num_clients: int,
    client_cpus: int,
    client_gpus: float,
) -> T:
    """Run ``server_main(grid)`` against ``num_clients`` simulated SuperNodes (partition ids
    0..num_clients-1) and return what it returns.

    Flower reads FLWR_HOME, FLWR_TELEMETRY_ENABLED and FLWR_DISABLE_UPDATE_CHECK from the
    environment; set them before calling (see the stack notes).
    """
    from flwr.simulation import run_simulation  # imports Ray (~1 s): only when simulating

    results: list[T] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        results.append(server_main(grid))

    run_simulation(
        server_app=server,
        client_app=client_app,
        num_supernodes=num_clients,
        backend_config={"client_resources": {"num_cpus": client_cpus, "num_gpus": client_gpus}},
    )
    return results[0]  # run_simulation re-raises a ServerApp failure, so the result is there
