"""What to generate and how: the decoding settings and the id-keyed request/response records.

Requests and responses carry an id because the FedCoT server answers perturbed prompts that the
client must match back to its own questions: a reply is matched by id, never by its position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fedkt.errors import ConfigError


@dataclass(frozen=True)
class GenerationSettings:
    """How every backend decodes; the settings are the whole decoding rule.

    Args:
        max_new_tokens: tokens generated at most per prompt.
        temperature: 0 decodes greedily. FedCoT's reference code samples at 0.01, which is
            greedy in all but name (at 0.01 a token whose logit trails the top one by 0.1 is
            e^-10 times as likely); the default 0 is exact greedy, reproducible without a seed.
        top_p: nucleus mass kept when sampling (ignored when greedy). Top-k is off and the
            repetition penalty is 1 in every backend, whatever the checkpoint's own
            ``generation_config.json`` says, so transformers and vLLM decode alike.
        stop: the text is cut before the first occurrence of any of these strings, and
            generation of that prompt stops there.
        batch_size: prompts per forward pass (transformers) and per checkpoint of a
            `ResponseStore`: a crash loses at most one batch.
        seed: seeds sampling (temperature > 0); the same prompts, settings and seed give the
            same text. Unused when greedy.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        # A TOML array arrives as a list; keep the frozen value a hashable tuple.
        if isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple(self.stop))
        problems = [f"{name}={getattr(self, name)!r} ({need})" for name, need in _violations(self)]
        if problems:
            raise ConfigError(f"GenerationSettings: {'; '.join(problems)}")

    @property
    def sampling(self) -> bool:
        """True when decoding samples (temperature > 0) rather than taking the top token."""
        return self.temperature > 0


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _violations(settings: GenerationSettings) -> list[tuple[str, str]]:
    """(field, what it needs) for every field out of range."""
    stop = settings.stop
    checks = {
        "max_new_tokens": (
            _is_int(settings.max_new_tokens) and settings.max_new_tokens >= 1,
            "need an integer >= 1",
        ),
        "temperature": (
            _is_number(settings.temperature) and settings.temperature >= 0,
            "need a finite number >= 0; 0 is greedy",
        ),
        "top_p": (
            _is_number(settings.top_p) and 0 < settings.top_p <= 1,
            "need a number in (0, 1]",
        ),
        "stop": (
            isinstance(stop, tuple) and all(isinstance(s, str) and s for s in stop),
            'need a tuple of non-empty strings, e.g. ("Question:",), not a bare string',
        ),
        "batch_size": (
            _is_int(settings.batch_size) and settings.batch_size >= 1,
            "need an integer >= 1",
        ),
        "seed": (_is_int(settings.seed) and settings.seed >= 0, "need an integer >= 0"),
    }
    return [(name, need) for name, (ok, need) in checks.items() if not ok]


@dataclass(frozen=True)
class Request:
    """One prompt to answer, under an id unique within its batch of requests."""

    id: str
    prompt: str


@dataclass(frozen=True)
class Response:
    """The generated text for the request with the same id."""

    id: str
    text: str


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string.

    Backends stop generating at a stop string only at a token boundary, so the decoded text
    can run past it; the cut makes every backend return the same text.
    """
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]
