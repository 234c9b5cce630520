"""A client's long-lived worker: the deployed ClientApp's messages answered with the models
still loaded from the round before.

Why: Flower 1.41's deployment engine starts one ``flwr-clientapp`` process per message (the
SuperNode's SuperExec launches a fresh process per task and ``Context.state``, which holds
records only, is all that survives), so a client would import torch and load its models again
every round. `fedkt client` therefore starts this worker beside its SuperNode (and stops it
when it exits); the deployed ClientApp (`fedkt.deploy.clientapp`) forwards each train or query
message here and returns the reply. The worker runs the very code the ClientApp runs inline
(`fedkt.deploy.apps.answer`), one message at a time, in one process, so the module-level
caches (the setups and client apps in `fedkt.deploy.apps`, each algorithm's model cache) keep
the models loaded across rounds. Flower's mods (SecAgg+) still run in the ClientApp process;
``context.state`` travels here and back with each message. This module imports no torch at
the top (the ClientApp process imports it to call `forward`).

Security: requests and replies are pickles, so only this user's processes holding the key may
talk to the worker. It listens on a Unix socket in a 0700 folder inside the client's own
output directory, and `multiprocessing.connection` makes each peer prove the 32-byte key (an
HMAC challenge) read from a 0600 file beside the socket. Nothing here leaves the machine;
``worker.json`` (messages served, models loaded, seconds per message) is for the operator.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

from flwr.app import Context, Message

from fedkt.errors import FedktError

_LOG = logging.getLogger(__name__)

NODE_CONFIG_KEY = "worker"
"""The SuperNode's node config key naming the worker's folder (set by `fedkt client`)."""

SOCKET, KEY, STATS = "worker.sock", "worker.key", "worker.json"
READY_SECONDS = 60.0
"""How long `start` waits for a new worker to listen."""
MIN_REPLY_SECONDS = 60.0
"""The least a forwarded message waits for its reply (else until the message's TTL ends)."""
_MAX_SOCKET_PATH = 100  # AF_UNIX paths hold 107 bytes on Linux, 103 on macOS


Answer = Callable[[str, Message, Context], Message]
"""``answer(kind, msg, context)``: the reply, computed in the worker's process."""


class WorkerError(FedktError):
    """The worker cannot be reached or died while answering."""


# ---- fedkt client's side: the worker's folder and process ----------------------------------


def folder_for(output: Path, partition: int) -> Path:
    """The worker's folder (socket and key): ``<output>/client-worker-<k>``, or a private
    temporary folder when that path is too long for a Unix socket."""
    folder = output / f"client-worker-{partition}"
    if len(os.fsencode(folder / SOCKET)) <= _MAX_SOCKET_PATH:
        return folder
    return Path(tempfile.mkdtemp(prefix="fedkt-worker-"))  # mode 0700


def prepare(folder: Path) -> None:
    """The folder (0700) with a fresh key (0600) and no socket of an earlier worker."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    (folder / SOCKET).unlink(missing_ok=True)
    key = folder / KEY
    key.unlink(missing_ok=True)
    handle = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(handle, "wb") as out:
        out.write(secrets.token_bytes(32))


def start(folder: Path, stats: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """A worker serving at ``folder`` (`prepare` it first), its stats in ``stats``, its log
    lines in this process's output; returns once it listens (at most `READY_SECONDS`)."""
    from fedkt.deploy import launch  # not at the top: the worker listens before torch loads

    command = [sys.executable, "-c", _MAIN, str(folder), str(stats)]
    process = subprocess.Popen(
        command, env=dict(env), start_new_session=True, preexec_fn=launch.die_with_parent
    )
    deadline = time.monotonic() + READY_SECONDS
    while not (folder / SOCKET).exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait(timeout=5.0)
            raise FedktError(f"the client's worker did not start at {folder}; see the log above")
        time.sleep(0.1)
    return process


def stop(process: subprocess.Popen[bytes], folder: Path) -> None:
    """End the worker (SIGTERM, then SIGKILL: bounded waits) and remove its socket and key."""
    from fedkt.deploy import launch

    launch.stop(process, grace=5.0)
    for name in (SOCKET, KEY):
        (folder / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # a temporary folder; one with worker.json stays
        folder.rmdir()


_MAIN = "import sys; from fedkt.deploy.worker import main; main(sys.argv[1:])"


# ---- the ClientApp's side ------------------------------------------------------------------


def forward(folder: Path, kind: str, msg: Message, context: Context) -> Message:
    """``kind`` ("train"/"query") answered by the worker at ``folder``; ``context.state``
    becomes the worker's. Waits until the message's TTL ends (at least `MIN_REPLY_SECONDS`);
    raises `WorkerError` when the worker is unreachable, dies or does not answer in time."""
    socket = folder / SOCKET
    try:
        conn = Client(str(socket), family="AF_UNIX", authkey=(folder / KEY).read_bytes())
    except (OSError, EOFError, AuthenticationError) as err:
        raise _failed(socket, f"is unreachable ({type(err).__name__})") from err
    with conn:
        try:
            conn.send((kind, msg, context))
            wait = msg.metadata.created_at + msg.metadata.ttl - time.time()
            if not conn.poll(max(wait, MIN_REPLY_SECONDS)):
                raise _failed(socket, "did not answer before the message expired")
            status, reply, state = conn.recv()
        except (OSError, EOFError) as err:
            raise _failed(socket, f"died mid-message ({type(err).__name__})") from err
    if status != "ok":
        raise _failed(socket, f"failed ({status}; its log has the details)")
    context.state.clear()  # in place: a mod may hold this object
    context.state.update(state)
    return reply


def _failed(socket: Path, what: str) -> WorkerError:
    return WorkerError(f"the client's worker at {socket} {what}; restart `fedkt client`")


# ---- the worker process --------------------------------------------------------------------


def serve(
    folder: Path, stats: Path, answer: Answer | None = None, parent: int | None = None
) -> None:
    """Answer forwarded messages one at a time with ``answer`` (default:
    `fedkt.deploy.apps.answer`) until this process is stopped, or the process ``parent``
    (`fedkt client`) is gone."""
    key = (folder / KEY).read_bytes()
    listener = Listener(str(folder / SOCKET), family="AF_UNIX", backlog=8, authkey=key)
    pending: queue.Queue[Connection] = queue.Queue()
    threading.Thread(target=_accept, args=(listener, pending), daemon=True).start()
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    begin = time.perf_counter()
    if answer is None:
        from fedkt.deploy import apps  # torch, transformers: once, while the first request waits

        answer = apps.answer
    record = _Stats(stats, import_seconds=time.perf_counter() - begin)
    while True:
        with pending.get() as conn:
            _serve_one(conn, answer, record)


def _accept(listener: Listener, pending: queue.Queue[Connection]) -> None:
    """Take connections (and their key challenge) at once, even while a message is served."""
    while True:
        try:
            pending.put(listener.accept())
        except Exception as err:  # a wrong key, a peer that hung up: refuse it, go on
            _LOG.warning("refused a connection to the worker: %s", type(err).__name__)


def _exit_with_parent(parent: int) -> None:
    """Leave when `fedkt client` is gone (even killed): nothing else would stop this worker."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _serve_one(conn: Connection, answer: Answer, record: _Stats) -> None:
    try:
        if not conn.poll(MIN_REPLY_SECONDS):
            return
        kind, msg, context = conn.recv()
        begin, loads = time.perf_counter(), _models_loaded()
        reply = answer(kind, msg, context)
        record.add(kind, time.perf_counter() - begin, _models_loaded() - loads)
        conn.send(("ok", reply, context.state))
    except Exception as err:  # the handlers have their own boundary; this is the transport
        _LOG.exception("the worker could not answer a message")
        with contextlib.suppress(Exception):  # the ClientApp process is gone: it says so
            conn.send((type(err).__name__, None, None))


def _models_loaded() -> int:
    """Models (or model kits) in the algorithms' module-level caches of this process."""
    from fedkt.federation import fdkt, fedcollm, fedcot

    return len(fedcollm._SLMS) + len(fedcot._CLIENT_MODELS) + len(fdkt._CLIENT_MODELS)


class _Stats:
    """``worker.json``: messages served, models loaded, seconds of the first and later ones."""

    def __init__(self, path: Path, import_seconds: float) -> None:
        self.path, self.import_seconds = path, import_seconds
        self.served: list[dict[str, Any]] = []

    def add(self, kind: str, seconds: float, loads: int) -> None:
        self.served.append({"kind": kind, "seconds": seconds, "model_loads": loads})
        from fedkt.report import write_json

        write_json(
            self.path,
            {
                "pid": os.getpid(),
                "import_seconds": self.import_seconds,
                "messages": len(self.served),
                "model_loads": sum(s["model_loads"] for s in self.served),
                "first_message_seconds": self.served[0]["seconds"],
                "later_message_seconds": [s["seconds"] for s in self.served[1:]],
                "served": self.served,
            },
        )


_FORMAT = "%(asctime)s fedkt-worker %(levelname)s %(name)s: %(message)s"


def main(argv: list[str]) -> None:
    """The worker process: ``main([folder, stats])`` (`start` runs it)."""
    folder, stats = Path(argv[0]), Path(argv[1])
    logging.basicConfig(level=logging.INFO, format=_FORMAT)
    _LOG.info("client worker %d serving at %s", os.getpid(), folder / SOCKET)
    with contextlib.suppress(KeyboardInterrupt):
        serve(folder, stats, parent=os.getppid())
