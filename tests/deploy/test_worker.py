"""The client's worker (`fedkt.deploy.worker`) in this process: a message forwarded over its
socket comes back with the state the handler left; a peer without the key is refused; a
worker that is missing or dies mid-message fails that message with one error, behind the
client's error boundary. The worker serves in a daemon thread with a fake handler (no model);
the loopback test (`test_deployment.py`) runs the real one across rounds."""

from __future__ import annotations

import logging
import os
import threading
import time
from multiprocessing.connection import Listener
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

from fedkt.deploy import clientapp, worker
from fedkt.report import read_json


def _message(kind: str = "train") -> Message:
    metadata = Metadata(1, f"m-{time.time()}", 0, 7, "", "0", time.time(), 30.0, kind)
    return Message(RecordDict({"in": ConfigRecord({"x": 1})}), metadata=metadata)


def _context(folder: Path) -> Context:
    node_config = {"partition-id": 1, worker.NODE_CONFIG_KEY: str(folder)}
    state = RecordDict({"mod": ConfigRecord({"stage": "setup"})})
    return Context(run_id=1, node_id=7, node_config=node_config, state=state, run_config={})


def _fake_answer(kind: str, msg: Message, context: Context) -> Message:
    """What a handler does: reads the message, writes its state, replies."""
    context.state["handler"] = ConfigRecord({"kind": kind, "x": msg.content["in"]["x"]})
    return Message(RecordDict({"out": ConfigRecord({"kind": kind})}), reply_to=msg)


def _wait_for(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"no {path} within {timeout} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A worker with `_fake_answer`, serving in a daemon thread; its folder."""
    folder = tmp_path_factory.mktemp("w") / "client-worker-1"
    worker.prepare(folder)
    args = (folder, folder / worker.STATS, _fake_answer)
    threading.Thread(target=worker.serve, args=args, daemon=True).start()
    _wait_for(folder / worker.SOCKET)
    return folder


def test_the_folder_and_key_are_private(served: Path) -> None:
    assert os.stat(served).st_mode & 0o777 == 0o700
    assert os.stat(served / worker.KEY).st_mode & 0o777 == 0o600
    assert len((served / worker.KEY).read_bytes()) == 32


def test_a_forwarded_message_comes_back_with_the_handlers_state(served: Path) -> None:
    for kind in ("query", "train"):  # both pickle both ways: Message, Context, RecordDict
        msg, context = _message(kind), _context(served)
        reply = worker.forward(served, kind, msg, context)
        assert reply.content["out"]["kind"] == kind
        assert reply.metadata.reply_to_message_id == msg.metadata.message_id
        assert dict(context.state["handler"]) == {"kind": kind, "x": 1}
        assert context.state["mod"]["stage"] == "setup"  # what the mods keep is kept
    stats = read_json(served / worker.STATS)
    assert stats["messages"] >= 2 and stats["model_loads"] == 0
    assert stats["first_message_seconds"] >= 0 and len(stats["later_message_seconds"]) >= 1


def test_a_peer_without_the_key_is_refused(served: Path, tmp_path: Path) -> None:
    """Same socket, another key: refused, and the worker serves the next peer as before."""
    (tmp_path / worker.SOCKET).symlink_to(served / worker.SOCKET)
    (tmp_path / worker.KEY).write_bytes(os.urandom(32))
    with pytest.raises(worker.WorkerError, match="AuthenticationError"):
        worker.forward(tmp_path, "train", _message(), _context(tmp_path))
    reply = worker.forward(served, "train", _message(), _context(served))
    assert reply.content["out"]["kind"] == "train"


def test_a_missing_worker_fails_the_message_through_the_boundary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The ClientApp's handler gives an error reply naming no path and no data; the client's
    log says which socket and what to do."""
    context = _context(tmp_path / "gone")
    with caplog.at_level(logging.ERROR):
        reply = clientapp._client_train(_message(), context)
    assert reply.has_error()
    assert reply.error.reason.startswith("WorkerError in the FedCoLLM client of partition 1")
    assert str(tmp_path) not in reply.error.reason
    assert str(tmp_path / "gone" / worker.SOCKET) in caplog.text
    assert "restart `fedkt client`" in caplog.text


def test_a_worker_that_dies_mid_message_fails_that_message(tmp_path: Path) -> None:
    """A peer that takes the request and hangs up (as a killed worker does) is one error."""
    worker.prepare(tmp_path)
    key = (tmp_path / worker.KEY).read_bytes()
    listener = Listener(str(tmp_path / worker.SOCKET), family="AF_UNIX", authkey=key)

    def take_and_hang_up() -> None:
        with listener.accept() as conn:
            conn.recv()

    thread = threading.Thread(target=take_and_hang_up, daemon=True)
    thread.start()
    try:
        with pytest.raises(worker.WorkerError, match="died mid-message"):
            worker.forward(tmp_path, "train", _message(), _context(tmp_path))
    finally:
        thread.join(timeout=10)
        listener.close()
