"""Noise that the server cannot replay: generator state from the OS's secure source.

Every DP mechanism in fedkt draws its randomness from a `torch.Generator`. In a seeded
simulation the caller passes one seeded from the config (reproducible, not secret); everywhere
else the generator comes from `secure_generator`, so the noise is a secret of the client.
"""

from __future__ import annotations

import secrets
import sys

import torch

from fedkt.errors import ConfigError

_MT_WORDS = 624
_MT_STATE_OFFSET = 24  # bytes before the words: u64 seed, i32 left, i32 seeded, u64 next


def secure_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A generator whose state is drawn from the OS's secure source (`secrets`), for the noise
    of every run outside a seeded simulation.

    ``manual_seed(secrets.randbits(64))`` is not enough on a CPU: torch's CPU generator is an
    MT19937 that keeps only the low 32 bits of its seed, so the server could try all 2^32 seeds
    and replay the noise. Its 624 state words are filled with 19,968 fresh bits instead (the
    layout is checked against a known seed first; a torch whose layout differs is refused, not
    silently weakened). A CUDA generator (Philox) uses its whole 64-bit seed. MT19937 is not a
    cryptographic generator: its output reveals its state after 624 draws, but the server sees
    the sampled tokens, not the generator's raw output.
    """
    generator = torch.Generator(device=device)
    generator.manual_seed(secrets.randbits(64))
    if generator.device.type != "cpu":
        return generator
    state = bytearray(generator.get_state().numpy().tobytes())
    _check_mt_layout(state, generator.initial_seed())
    words = secrets.token_bytes(4 * _MT_WORDS)
    for j in range(_MT_WORDS):
        word = int.from_bytes(words[4 * j : 4 * j + 4], "little")
        at = _MT_STATE_OFFSET + 8 * j
        state[at : at + 8] = word.to_bytes(8, sys.byteorder)
    generator.set_state(torch.frombuffer(state, dtype=torch.uint8).clone())
    return generator


def _check_mt_layout(state: bytearray, seed: int) -> None:
    """Refuse a CPU generator state whose first words are not MT19937's for ``seed``."""
    expected = [seed & 0xFFFFFFFF]
    for j in range(1, 3):
        previous = expected[-1]
        expected.append((1812433253 * (previous ^ (previous >> 30)) + j) & 0xFFFFFFFF)
    at = [_MT_STATE_OFFSET + 8 * j for j in range(3)]
    found = [int.from_bytes(state[a : a + 8], sys.byteorder) for a in at]
    if len(state) < _MT_STATE_OFFSET + 8 * _MT_WORDS or found != expected:
        raise ConfigError(
            "secure_generator: this torch's CPU generator state has an unknown layout, so its "
            "state cannot be filled with secure bits; pin torch 2.13 or run the kit on CUDA."
        )
