"""Run a FedCoLLM federation in Flower's simulation runtime on this machine.

Flower simulates each client on a Ray actor: a separate process. Live models therefore cannot
be handed to the clients; they receive a picklable `ClientSetup` (model names and their data)
inside the ClientApp and load the SLM themselves, once per process. The ServerApp runs in a
thread of this process, so its result comes back through a plain callback.
"""

from __future__ import annotations

from collections.abc import Sequence

from flwr.clientapp.typing import Mod

from fedkt.federation.client_app import make_client_app
from fedkt.federation.server_app import make_server_app
from fedkt.federation.spec import FederationResult, FederationSpec


def simulate_fedcollm(spec: FederationSpec, *, client_mods: Sequence[Mod] = ()) -> FederationResult:
    """Run all of ``spec``'s rounds with one simulated SuperNode per client partition.

    ``client_mods`` wrap every client's handler (Flower mods), e.g. to audit what leaves a
    client. Flower reads FLWR_HOME, FLWR_TELEMETRY_ENABLED and FLWR_DISABLE_UPDATE_CHECK from
    the environment; set them before calling (see the stack notes).
    """
    from flwr.simulation import run_simulation  # imports Ray (~1 s): only when simulating

    results: list[FederationResult] = []
    run_simulation(
        server_app=make_server_app(spec, results.append),
        client_app=make_client_app(spec.client_setup(), client_mods),
        num_supernodes=spec.num_clients,
        backend_config={
            "client_resources": {"num_cpus": spec.client_cpus, "num_gpus": spec.client_gpus}
        },
    )
    return results[0]  # run_simulation re-raises a ServerApp failure, so the result is there
