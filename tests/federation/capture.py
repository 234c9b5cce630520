"""Capture what a client sends, and search it for private strings (shared by the FedCoLLM and
FedCoT app tests)."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects


@dataclass(frozen=True)
class Recorder:
    """A client mod keeping every message the client sends (pickled, one file each): Ray runs
    clients in other processes, so the capture goes through the file system."""

    directory: Path

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        out = call_next(msg, context)
        (self.directory / f"{uuid4().hex}.pkl").write_bytes(pickle.dumps(out))
        return out

    def messages(self) -> list[Message]:
        return [pickle.loads(p.read_bytes()) for p in sorted(self.directory.iterdir())]


def find_leaks(msg: Message, needles: Sequence[str]) -> list[str]:
    """The ``needles`` found in ``msg``: in its record names and keys, its decoded config and
    metric values, the bytes of its arrays, and the whole message as Flower serializes it."""
    content = msg.content
    strings = [*content, *(key for record in content.values() for key in record)]
    for record in [*content.config_records.values(), *content.metric_records.values()]:
        for value in record.values():
            items = value if isinstance(value, list) else [value]
            strings += [
                v.decode(errors="ignore") if isinstance(v, bytes) else str(v) for v in items
            ]
    arrays = b"".join(a.data for record in content.array_records.values() for a in record.values())
    wire = b"".join(obj.deflate() for obj in get_all_nested_objects(msg).values())
    return [
        needle
        for needle in needles
        if any(needle in s for s in strings) or needle.encode() in arrays or needle.encode() in wire
    ]
