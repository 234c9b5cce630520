"""Seeds derived from several integers, so parallel parties never share a random stream."""

from __future__ import annotations

import hashlib


def derive_seed(base: int, *parts: int) -> int:
    """A 31-bit seed for ``(base, *parts)``: the same inputs give the same seed on any machine.

    Offsets such as ``base + partition`` collide (client 1 in round 0 draws what client 0
    draws in round 1); a hash of the whole tuple does not, and stays reproducible.
    """
    text = ":".join(str(int(value)) for value in (base, *parts))
    return int.from_bytes(hashlib.sha256(text.encode("ascii")).digest()[:4], "little") >> 1
