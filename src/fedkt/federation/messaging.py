"""What every server app does with the grid: wait for its clients, check their replies."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid

from fedkt.errors import FedktError
from fedkt.federation.keys import COUNTS, ROUND, check_message_size

_LOG = logging.getLogger(__name__)

NODE_WAIT_SECONDS = 120.0
"""How long a server waits for all clients to register before giving up."""


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


FIRST_PULL_SECONDS, LAST_PULL_SECONDS = 0.05, 0.5
"""`send_and_receive` pulls after 0.05 s, each pause 1.5x the last, up to one pull per 0.5 s."""


def send_and_receive(
    grid: Grid, messages: Iterable[Message], *, timeout: float | None = None
) -> list[Message]:
    """``grid.send_and_receive``, without its 3-second naps: Flower's deployed grid sleeps 3 s
    between pulls, which adds up to 3 s to every exchange (round, SecAgg+ stage) however fast
    the clients answer. Pushes ``messages``, then pulls the replies until all have come or
    ``timeout`` seconds have passed (None: no limit), first often and then every 0.5 s."""
    waiting = set(grid.push_messages(messages))
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    pause = FIRST_PULL_SECONDS
    while waiting:
        pulled = list(grid.pull_messages(waiting))
        replies += pulled
        waiting -= {reply.metadata.reply_to_message_id for reply in pulled}
        if not waiting or (deadline is not None and time.monotonic() >= deadline):
            break
        time.sleep(pause if deadline is None else min(pause, max(deadline - time.monotonic(), 0)))
        pause = min(pause * 1.5, LAST_PULL_SECONDS)
    return replies


def checked_replies(
    replies: Iterable[Message], limit: int, *, algorithm: str
) -> list[tuple[Message, int]]:
    """Each reply with its payload size, sorted by node id; an error reply or an oversized
    one raises, naming every failed node (their reasons quote no data: see `boundary`)."""
    replies = sorted(replies, key=lambda reply: reply.metadata.src_node_id)
    errors = [f"node {r.metadata.src_node_id}: {r.error.reason}" for r in replies if r.has_error()]
    if errors:
        raise FedktError(
            f"{len(errors)} of {len(replies)} {algorithm} clients failed: " + "; ".join(errors)
        )
    return [
        (
            reply,
            check_message_size(
                reply.content, limit, what=f"reply of node {reply.metadata.src_node_id}"
            ),
        )
        for reply in replies
    ]


def replies_by_node(
    replies: Iterable[Message], limit: int, *, algorithm: str
) -> dict[int, tuple[Message, int]]:
    """`checked_replies`, keyed by the sending node's id."""
    checked = checked_replies(replies, limit, algorithm=algorithm)
    return {reply.metadata.src_node_id: (reply, size) for reply, size in checked}


def string_list(
    record: ConfigRecord, key: str, *, algorithm: str, required: bool = True
) -> list[str]:
    """``record[key]`` as a list of strings (absent and not ``required``: none); anything
    else is a malformed message."""
    value = record.get(key) if required else record.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FedktError(f"malformed {algorithm} message: {key!r} must be a list of strings")
    return [str(v) for v in value]


class ShortRound(FedktError):
    """Fewer clients answered a round than it needs; the server may retry the round."""


def answered(
    replies: Iterable[Message], round_index: int, *, algorithm: str
) -> tuple[list[Message], dict[int, str]]:
    """The replies that answer round ``round_index``, sorted by node id, and why each other
    sender was dropped (node id -> reason): an error reply (a client that failed; its reason
    quotes no data) or a reply stamped with another round (a replay or a late answer from an
    earlier round). One log line per dropped reply; the round goes on with the others."""
    kept: list[Message] = []
    dropped: dict[int, str] = {}
    for reply in sorted(replies, key=lambda r: r.metadata.src_node_id):
        node = reply.metadata.src_node_id
        if reply.has_error():
            dropped[node] = f"error reply: {reply.error.reason}"
        elif (stamp := _round_stamp(reply)) != round_index:
            dropped[node] = f"it answers round {stamp}, not round {round_index} (replayed or late)"
        else:
            kept.append(reply)
            continue
        _LOG.warning(
            "%s round %d: refused node %d: %s", algorithm, round_index, node, dropped[node]
        )
    return kept, dropped


def _round_stamp(reply: Message) -> int | None:
    """The round index a reply says it answers (``COUNTS[ROUND]``); None: unstamped."""
    counts = reply.content.metric_records.get(COUNTS)
    value = None if counts is None else counts.get(ROUND)
    return int(value) if isinstance(value, int | float) else None


def missing_nodes(
    sent: Iterable[int], kept: Iterable[Message], dropped: dict[int, str]
) -> dict[int, str]:
    """Every node of ``sent`` without a kept reply, with its reason (no reply: timed out)."""
    answered_nodes = {reply.metadata.src_node_id for reply in kept}
    return {
        node: dropped.get(node, "no reply before the timeout")
        for node in sent
        if node not in answered_nodes
    }
