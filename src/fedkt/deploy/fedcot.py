"""FedCoT on Flower's deployment engine: the specs the deployed apps build, and the server run.

The protocol is the simulation's (`fedkt.federation.fedcot`: `run_fedcot_server` and the
client app's QUERY/TRAIN handlers); only where the inputs come from differs:

- the server holds the LLM and counts the clients (``federation.clients``); it never sees a
  client's rows and needs no evaluation rows;
- each client builds its spec from its node config: its own rows file at its own index, the
  task's public evaluation rows from its own data directory (scored, and also the public
  text of the adaptive mechanism's token importance and of the pattern-uniqueness reference:
  the simulation uses the task's public train part there, which a deployed client does not
  read), and its own output dir for its report, predictions and adapter.

A deployment runs one (strategy, eps) point: ``fedcot.strategies`` and the strategy's eps grid
(`fedkt.experiments.fedcot.strategy_grid`) must each hold one value.
"""

from __future__ import annotations

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
from fedkt.federation.fedcot import FedCoTSpec, run_fedcot_server

_LOG = logging.getLogger(__name__)

METHOD = "fedcot-deployed"
"""The folder under ``<output_dir>/<task>/`` where the server keeps the run's outcome."""


def point(config: FedktConfig) -> tuple[str, float]:
    """The one (strategy, eps) a deployment runs."""
    from fedkt.experiments.fedcot import strategy_grid

    strategy = one_point("fedcot.strategies", config.fedcot.strategies)
    eps = one_point(f"fedcot eps of {strategy}", strategy_grid(config.fedcot, strategy))
    return str(strategy), float(eps)


def _common(config: FedktConfig) -> dict[str, Any]:
    from fedkt.jobs import placement

    strategy, eps = point(config)
    dtype, device = placement(config)
    federation = config.federation
    return {
        "llm": federation.llm,
        "slm": federation.slm,
        "decoder": config.fedcot.decoder,
        "settings": config.fedcot.settings(config.train, strategy, eps),
        "lora": config.lora,
        "dtype": dtype,
        "device": device,
        "eval_batch_size": config.eval.batch_size,
        "eval_max_new_tokens": config.eval.max_new_tokens,
        "train_slm": config.fedcot.train_slm,
        "deployed": True,
    }


def server_spec(config: FedktConfig, folder: Path) -> FedCoTSpec:
    """The server's spec: the LLM and the settings, every client counted, no rows; its
    answers are kept in ``folder/responses.jsonl`` (a restarted run skips what it answered)."""
    return FedCoTSpec(
        **_common(config),
        client_data=((),) * config.federation.clients,
        eval_data=(),
        public_texts=(),
        response_store=str(folder / "responses.jsonl"),
    )


def client_spec(config: FedktConfig, node: NodeSetup) -> FedCoTSpec:
    """This SuperNode's spec: its own rows at its own index, the task's public evaluation
    rows, and its own folder for what stays on its disk."""
    from fedkt.data.cot import label_names

    own = node.own_rows(config)
    public = evaluation_rows(config, deployment_task(config))
    output = node.output(config)
    return FedCoTSpec(
        **_common(config),
        client_data=own,
        eval_data=public,
        public_texts=tuple(row.question for row in public if row.question),
        label_names=label_names(public),
        pattern_reference=public,
        reports_dir=str(output / "client-reports"),
        predictions_dir=str(output / "predictions"),
        artefacts_dir=str(output),
    )


def run_deployed_fedcot(grid: Grid, config: FedktConfig) -> Path:
    """FedCoT's round trip over ``grid`` with the server LLM; returns the outcome folder."""
    from fedkt.generation import make_backend
    from fedkt.models import load_model_and_tokenizer

    folder = Path(config.output_dir) / deployment_task(config) / METHOD
    spec = server_spec(config, folder)
    model, tokenizer = load_model_and_tokenizer(spec.llm, dtype=spec.dtype, device=spec.device)
    backend = make_backend(
        model, tokenizer, prefer_vllm=True, model_path=None,
        chat_template=spec.settings.chat_template,
    )  # fmt: skip
    result = run_fedcot_server(grid, spec, backend)
    strategy, eps = point(config)
    write_outcome(
        folder,
        {
            "strategy": strategy,
            "eps": eps,
            "requests": list(result.requests),
            "acknowledged": list(result.acknowledged),
            "bytes_up": result.bytes_up,
            "bytes_down": result.bytes_down,
            "total_bytes": sum(result.bytes_up.values()) + sum(result.bytes_down.values()),
            "seconds": result.seconds,
        },
    )
    _LOG.info(
        "FedCoT across machines: %d clients sent %s prompts, outcome in %s",
        spec.num_clients, list(result.requests), folder,
    )  # fmt: skip
    return folder
