"""Flower's in-process simulation, the embedded default for every algorithm.

Flower simulates each client on a Ray actor: a separate process. Live models therefore cannot
be handed to the clients; each ClientApp carries a picklable setup (model names and data) and
loads its models itself, once per process. The ServerApp runs in a thread of this process, so
its result comes back through a plain callback.

Ctrl-C reaches the main thread, where Flower runs its simulation loop; Flower then stops Ray
but not the ServerApp thread, which would keep the process alive. `simulate` ends that thread
too (an asynchronous exception, delivered at its next Python instruction) and makes sure Ray
and its processes are gone before the KeyboardInterrupt goes on.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedkt import console

T = TypeVar("T")

_LOG = logging.getLogger(__name__)


class SimulationStopped(BaseException):
    """Raised inside the ServerApp thread to end it after Ctrl-C (not an `Exception`, so
    neither fedkt nor Flower handles it on the way out)."""


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
    threads: list[threading.Thread] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        threads.append(threading.current_thread())
        results.append(server_main(grid))

    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": client_cpus, "num_gpus": client_gpus},
        "init_args": console.ray_init_args(),
    }
    try:
        run_simulation(
            server_app=server,
            client_app=client_app,
            num_supernodes=num_clients,
            backend_config=backend_config,
        )
    except KeyboardInterrupt:
        _LOG.info("interrupted: stopping the simulation")
        _stop(threads)
        raise
    return results[0]  # run_simulation re-raises a ServerApp failure, so the result is there


def _stop(threads: list[threading.Thread], timeout: float = 20.0) -> None:
    """End the ServerApp thread(s) and Ray (its raylet, GCS and worker processes)."""
    hook = threading.excepthook

    def quiet(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is not SimulationStopped:
            hook(args)

    threading.excepthook = quiet
    try:
        for thread in threads:
            if thread.is_alive() and thread.ident is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(thread.ident), ctypes.py_object(SimulationStopped)
                )
        for thread in threads:
            thread.join(timeout)
            if thread.is_alive():
                _LOG.warning("the Flower ServerApp thread did not stop within %.0f s", timeout)
    finally:
        _shutdown_ray()
        threading.excepthook = hook


def _shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
