"""`send_and_receive`: every reply as soon as it is there, none waited for past the timeout.

Flower's deployed grid sleeps 3 s between pulls; fedkt's exchange pulls often at first, so
a round costs what the clients take, not a multiple of 3 s. A virtual clock stands in for
time, so nothing here depends on the machine's speed.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import pytest

from fedkt.federation import messaging
from fedkt.federation.messaging import FIRST_PULL_SECONDS, LAST_PULL_SECONDS, send_and_receive


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.naps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.naps.append(seconds)
        self.now += seconds


class SlowGrid:
    """Node ``k``'s reply shows up ``delays[k]`` seconds after the push (None: never)."""

    def __init__(self, clock: VirtualClock, delays: list[float | None]) -> None:
        self.clock, self.delays = clock, delays
        self.ids: dict[str, int] = {}
        self.handed_out: list[str] = []

    def push_messages(self, messages: Iterable[Any]) -> list[str]:
        for message in messages:
            self.ids[f"m{message.metadata.dst_node_id}"] = message.metadata.dst_node_id
        return list(self.ids)

    def pull_messages(self, message_ids: Iterable[str]) -> list[Any]:
        out = []
        for message_id in message_ids:
            delay = self.delays[self.ids[message_id]]
            if delay is not None and self.clock.now >= delay:
                self.handed_out.append(message_id)
                out.append(_message(reply_to_message_id=message_id, node=self.ids[message_id]))
        return out


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> VirtualClock:
    fake = VirtualClock()
    monkeypatch.setattr(messaging, "time", fake)
    return fake


def _send(
    clock: VirtualClock, delays: list[float | None], timeout: float | None = None
) -> tuple[SlowGrid, list[int]]:
    grid = SlowGrid(clock, delays)
    messages = [_message(dst_node_id=k) for k in range(len(delays))]
    replies = send_and_receive(grid, messages, timeout=timeout)
    return grid, sorted(reply.node for reply in replies)


def _message(node: int = 0, **metadata: Any) -> Any:
    """Flower Messages need a run's identity; the exchange reads only ``metadata``."""
    return SimpleNamespace(metadata=SimpleNamespace(**metadata), node=node)


def test_replies_come_back_promptly_each_once(clock: VirtualClock) -> None:
    grid, answered = _send(clock, [0.0, 0.2, 2.0])
    assert answered == [0, 1, 2] and sorted(grid.handed_out) == ["m0", "m1", "m2"]
    assert clock.naps[0] == FIRST_PULL_SECONDS and max(clock.naps) == LAST_PULL_SECONDS
    assert 2.0 <= clock.now < 2.0 + LAST_PULL_SECONDS  # Flower's grid: 3 s


def test_an_exchange_answered_at_once_never_naps(clock: VirtualClock) -> None:
    assert _send(clock, [0.0, 0.0])[1] == [0, 1]
    assert clock.naps == []


def test_a_silent_node_is_waited_for_only_until_the_timeout(clock: VirtualClock) -> None:
    _, answered = _send(clock, [0.0, None], timeout=1.0)
    assert answered == [0]
    assert clock.now == pytest.approx(1.0)
