"""FDKT on Flower's deployment engine: the specs the deployed apps build, and the server run.

The protocol is the simulation's (`fedkt.federation.fdkt`: `run_fdkt_server` and the client
app's QUERY/TRAIN handlers); only where the inputs come from differs:

- the server holds the LLM and the sentence embedder and counts the clients
  (``federation.clients``); it reads the task's format (label names, or the number of
  choices) off the public evaluation rows, as every party does, and never sees a client's
  rows;
- each client builds its spec from its node config: its own rows file at its own index, the
  task's public evaluation rows from its own data directory, and its own output dir for its
  DP report, predictions and adapter. It refuses a DP target that is no guarantee for its
  own number of rows (delta >= 1/N) before any model is loaded.

A deployment runs one eps (``fdkt.eps`` must hold one value), with the LLM's augmentation.
The server keeps what it received (DP synthetic) and sent (augmented) beside its outcome.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from flwr.serverapp import Grid

from fedkt.config import FedktConfig
from fedkt.deploy.common import (
    NodeSetup,
    deployment_task,
    evaluation_rows,
    one_point,
    write_outcome,
)
from fedkt.federation.fdkt import FDKTSpec, run_fdkt_server
from fedkt.privacy.accounting import check_target
from fedkt.report import write_jsonl

_LOG = logging.getLogger(__name__)

METHOD = "fdkt-deployed"
"""The folder under ``<output_dir>/<task>/`` where the server keeps the run's outcome."""


def _common(config: FedktConfig) -> dict[str, Any]:
    from fedkt.jobs import placement

    eps = float(one_point("fdkt.eps", config.fdkt.eps))
    dtype, device = placement(config)
    federation = config.federation
    return {
        "llm": federation.llm,
        "slm": federation.slm,
        "generator": config.fdkt.generator or federation.slm,
        "settings": config.fdkt.settings(config.train, eps, use_llm=True),
        "lora": config.lora,
        "embedder": config.fdkt.embedder,
        "canaries": config.fdkt.canaries,
        "dtype": dtype,
        "device": device,
        "eval_batch_size": config.eval.batch_size,
        "eval_max_new_tokens": config.eval.max_new_tokens,
        "deployed": True,
    }


def server_spec(config: FedktConfig, folder: Path) -> FDKTSpec:
    """The server's spec: the models and settings, every client counted, no rows; the public
    evaluation rows tell it the task's format; the LLM's answers are kept in
    ``folder/responses.jsonl`` (a restarted run skips what it answered)."""
    return FDKTSpec(
        **_common(config),
        client_data=((),) * config.federation.clients,
        eval_data=evaluation_rows(config, deployment_task(config)),
        response_store=str(folder / "responses.jsonl"),
    )


def client_spec(config: FedktConfig, node: NodeSetup) -> FDKTSpec:
    """This SuperNode's spec: its own rows at its own index, the task's public evaluation
    rows, and its own folder for what stays on its disk."""
    own = node.own_rows(config)
    fields = _common(config)
    check_target(fields["settings"].dp.target_epsilon, config.fdkt.delta, len(own[node.partition]))
    output = node.output(config)
    return FDKTSpec(
        **fields,
        client_data=own,
        eval_data=evaluation_rows(config, deployment_task(config)),
        reports_dir=str(output / "client-reports"),
        predictions_dir=str(output / "predictions"),
        artefacts_dir=str(output),
    )


def run_deployed_fdkt(grid: Grid, config: FedktConfig) -> Path:
    """FDKT's round trip over ``grid`` with the server LLM and embedder; returns the outcome
    folder (`fedkt.deploy.common.OUTCOME`, ``synthetic.jsonl``, ``augmented.jsonl``)."""
    from fedkt.generation import make_backend
    from fedkt.models import load_model_and_tokenizer
    from fedkt.models.embeddings import load_embedder

    folder = Path(config.output_dir) / deployment_task(config) / METHOD
    spec = server_spec(config, folder)
    model, tokenizer = load_model_and_tokenizer(spec.llm, dtype=spec.dtype, device=spec.device)
    backend = make_backend(model, tokenizer, prefer_vllm=True, model_path=None)
    result = run_fdkt_server(grid, spec, backend, load_embedder(spec.embedder))
    write_jsonl(folder / "synthetic.jsonl", map(dataclasses.asdict, result.received_samples))
    write_jsonl(folder / "augmented.jsonl", map(dataclasses.asdict, result.sent_samples))
    write_outcome(
        folder,
        {
            "eps": spec.settings.dp.target_epsilon,
            "synthetic": result.synthetic,
            "curation": result.curation,
            "augmentation": result.augmentation,
            "sent": result.sent,
            "acknowledged": result.acks,
            "bytes_up": result.bytes_up,
            "bytes_down": result.bytes_down,
            "total_bytes": sum(result.bytes_up.values()) + sum(result.bytes_down.values()),
            "seconds": result.seconds,
        },
    )
    _LOG.info("FDKT across machines: %d clients, outcome in %s", spec.num_clients, folder)
    return folder
