"""fedkt.federation: each algorithm's Flower apps, and the pieces they share.

One file per algorithm (`fedcollm`, `fedcot`) holds its client app, server app and simulation;
the shared pieces are named for what they are: wire keys and size limits (`keys`), adapter
(de)serialisation (`codec`), the client's error boundary (`boundary`), waiting for nodes and
checking replies (`messaging`), and Flower's in-process simulation (`simulation`).
"""

from fedkt.federation.codec import adapter_to_record, payload_bytes, record_to_adapter
from fedkt.federation.keys import DEFAULT_MAX_MESSAGE_BYTES, check_message_size

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "adapter_to_record",
    "check_message_size",
    "payload_bytes",
    "record_to_adapter",
]
