"""Checks that come first: what `fedkt run`, `eval` and `finetune` can find wrong before any
model loads, so a mistake costs a second instead of surfacing minutes into the work.

Each ``check_*`` raises the first problem as one `FedktError` that says what to do:

- every task is known (built-in or a ``[tasks.<name>]`` table) and the splits the command
  reads exist and hold rows (local data: a file per split, read to its first row; a custom
  task's own files are read whole; hub data is left to the loader);
- every model name resolves without loading it: an embedded name's package is installed, a
  healed student is cached and whole, a local directory holds config.json, a hub id is
  well-formed and, with ``HF_HUB_OFFLINE=1``, in the Hugging Face cache; ``@layers=K`` is within
  the model's layers where its config.json is at hand;
- the output directory can be created and written;
- FedCoLLM's LLM and SLM share a vocabulary (only their tokenizers are loaded).

Argument ranges are checked by the config dataclasses themselves (``__post_init__``), which the
CLI's overrides go through too (`fedkt.config.with_overrides` builds a new instance).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from huggingface_hub import is_offline_mode, try_to_load_from_cache
from huggingface_hub.utils import HFValidationError, validate_repo_id

from fedkt.config import FedktConfig
from fedkt.data import resolve_data_dir
from fedkt.data.sources import check_local_split, split_slice
from fedkt.data.tasks import TaskSpec
from fedkt.errors import ConfigError, DataError, ModelError, TokenizerMismatchError
from fedkt.models import (
    EMBEDDED_MODELS,
    check_same_vocabulary,
    load_tokenizer,
    locate_embedded_gguf,
    parse_model_name,
    resolve_cache_dir,
)
from fedkt.models.student import cached_student

DEV_SPLIT = "dev"
"""`fedkt run` carves this split from train itself (`fedkt.experiments.harness.DEV_SPLIT`)."""


def check_run(config: FedktConfig) -> None:
    """Everything `fedkt run` needs, for the config's algorithm."""
    federation = config.federation
    models = [federation.llm, federation.slm]
    if config.algorithm == "fedcot":
        models.append(config.fedcot.decoder)
    if config.algorithm == "fdkt":
        from fedkt.models.embeddings import resolve_embedder

        resolve_embedder(config.fdkt.embedder)  # the embedded one: its package is installed
        if config.fdkt.generator:
            models.append(config.fdkt.generator)
    distils = {"fedcollm", "fedcollm_min_ce", "fedcollm_dp_aux"} & set(federation.baselines)
    generates = {"fedcollm", "fedcollm_dp_aux"} & set(federation.baselines)
    if config.algorithm == "fedcollm" and config.fedcollm.generator and generates:
        models.append(config.fedcollm.generator)
    _check(config, ["train"], models, carves_dev=True)
    if config.algorithm == "fedcollm" and distils:
        check_shared_vocabulary(
            federation.llm, federation.slm, resolve_cache_dir(config.cache_dir or None)
        )


def check_eval(config: FedktConfig) -> None:
    """Everything `fedkt eval` needs: its tasks' evaluation split, every model, the output."""
    _check(config, [], config.eval.models or (config.model.name,))


def check_finetune(config: FedktConfig) -> None:
    """Everything `fedkt finetune` needs: train and evaluation splits, the model, the output."""
    _check(config, ["train"], [config.model.name])


def _check(
    config: FedktConfig, splits: Sequence[str], models: Iterable[str], *, carves_dev: bool = False
) -> None:
    check_tasks(config, splits, carves_dev=carves_dev)
    cache_dir = resolve_cache_dir(config.cache_dir or None)
    for name in dict.fromkeys(models):
        check_model(name, cache_dir)
    check_output_dir(config.output_dir)


# ---- tasks and their data ------------------------------------------------------------------


def check_tasks(config: FedktConfig, splits: Sequence[str], *, carves_dev: bool = False) -> None:
    """Each task of ``data.tasks`` is known and has rows in each of `splits` and in its own
    evaluation split (``data.splits``, else ``data.split``; ``dev`` is no file when the
    command carves it from train: ``carves_dev``). A split named in ``data.splits`` that the
    task lacks is a config error naming that key."""
    for task in config.data.tasks:
        spec = config.task_spec(task)  # an unknown name lists the known ones
        for split in dict.fromkeys(split_slice(split)[0] for split in splits):
            _check_split(config, task, spec, split)
        evaluation = config.data.split_for(task)
        if carves_dev and evaluation == DEV_SPLIT:
            continue
        try:
            _check_split(config, task, spec, split_slice(evaluation)[0])
        except DataError as err:
            if task not in config.data.splits:
                raise
            raise ConfigError(
                f"data.splits.{task} = {evaluation!r}: task {task} cannot be evaluated on "
                f"that split ({err})"
            ) from err


def _check_split(config: FedktConfig, task: str, spec: TaskSpec, split: str) -> None:
    """``split`` (a plain split name) of ``task`` exists and holds rows, where that can be
    told without the hub."""
    custom = config.tasks.get(task)
    if custom is not None:
        if not custom.hub:  # the user's own files: missing, empty, too few rows
            assert spec.rows is not None
            spec.rows(split)
        return
    root = resolve_data_dir(config.data.dir or None)
    if root is not None:
        check_local_split(spec, split, root, explicit=bool(config.data.dir))


# ---- models --------------------------------------------------------------------------------


def check_model(name: str, cache_dir: Path) -> None:
    """`name` resolves to a model `fedkt.models.load_model` can load, without loading it."""
    spec = parse_model_name(name)
    if spec.healed:
        assert spec.layers is not None  # parse_model_name guarantees it
        cached_student(cache_dir, spec.base, spec.layers)  # missing or damaged: what to run
        return
    if spec.is_embedded:
        locate_embedded_gguf(spec.base)  # the package is installed (conversion comes later)
        config_file: Path | None = cache_dir / "models" / spec.base / "config.json"
    else:
        config_file = _config_file(name, spec.base)
    if spec.layers is not None and config_file is not None:
        _check_layers(name, spec.layers, config_file)


def _config_file(name: str, base: str) -> Path | None:
    """config.json of a local directory or a cached hub model (None: online, not cached)."""
    folder = Path(base).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ModelError(
                f"model {name!r}: directory {folder} holds no config.json: pass a folder "
                "written by save_pretrained (config.json, weights, tokenizer files)"
            )
        return folder / "config.json"
    if folder.exists():
        raise ModelError(
            f"model {name!r}: {folder} is a file, not a model directory: pass the folder "
            "holding config.json and the weights"
        )
    if base.startswith(("/", ".", "~")):
        raise ModelError(
            f"model directory {base!r} does not exist: pass a directory holding config.json "
            f"and weights (e.g. written by save_pretrained), a hub id or an embedded name "
            f"({_embedded_names()})"
        )
    try:
        validate_repo_id(base)
    except HFValidationError as err:
        raise ModelError(
            f"model {name!r}: {base!r} is not an embedded name ({_embedded_names()}), an "
            f"existing directory or a valid hub id ('owner/name': letters, digits, - _ .): {err}"
        ) from err
    if not is_offline_mode():
        return None  # the hub answers when the model loads
    cached = try_to_load_from_cache(base, "config.json")
    if not isinstance(cached, str):
        here = f" (nor is there a directory {folder.resolve()})" if "/" in base else ""
        raise ModelError(
            f"model {name!r}: hub id {base!r} is not in the Hugging Face cache and "
            f"HF_HUB_OFFLINE=1 forbids downloading it{here}. Pass a local directory holding "
            f"config.json and weights, an embedded name ({_embedded_names()}), or unset "
            "HF_HUB_OFFLINE to download it"
        )
    return Path(cached)


def _check_layers(name: str, layers: int, config_file: Path) -> None:
    try:
        total = json.loads(config_file.read_text())["num_hidden_layers"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # unknown here; the cut itself checks when the model loads
    if isinstance(total, int) and not layers <= total:
        raise ModelError(
            f"model {name!r}: layers={layers}, but the model has {total} decoder layers: "
            f"choose layers between 1 and {total}"
        )


def _embedded_names() -> str:
    return ", ".join(repr(name) for name in EMBEDDED_MODELS)


def check_shared_vocabulary(llm: str, slm: str, cache_dir: Path) -> None:
    """FedCoLLM distils logits token by token: the LLM and SLM tokenizers must be the same.

    Loads the two tokenizers only (an embedded model not converted yet is converted here, as
    the run would a moment later); a plain cut of the LLM shares its tokenizer by construction.
    """
    a, b = parse_model_name(llm), parse_model_name(slm)
    if a.base == b.base and not a.healed and not b.healed:
        return
    try:
        check_same_vocabulary(
            load_tokenizer(llm, cache_dir=cache_dir), load_tokenizer(slm, cache_dir=cache_dir)
        )
    except TokenizerMismatchError as err:
        raise TokenizerMismatchError(
            f"FedCoLLM needs federation.llm = {llm!r} and federation.slm = {slm!r} to share one "
            f"vocabulary, and they do not: {err}"
        ) from err


# ---- output --------------------------------------------------------------------------------


def check_output_dir(output_dir: str | Path) -> None:
    """Create `output_dir` (if needed) and write and delete a probe file in it."""
    folder = Path(output_dir).expanduser()
    probe = folder / f".fedkt-write-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        if isinstance(err, FileExistsError):
            reason = "a file of that name is in the way"
        elif isinstance(err, NotADirectoryError):
            reason = "a file is in the way of one of the folders above it"
        else:
            reason = f"{type(err).__name__}: {err.strerror or err}"
        raise ConfigError(
            f"output directory {folder} cannot be written ({reason}): choose another with "
            "--output-dir (output_dir in the config), or make it writable; nothing has run yet"
        ) from err
