"""The settings every text-level protocol's run spec shares (FedCoT, FDKT).

Where the clients' models run, how they score, and where each client writes what stays on its
own disk. Keyword-only, so a protocol's spec lists its own fields first, defaults or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedkt.errors import ConfigError
from fedkt.federation import keys


@dataclass(frozen=True, kw_only=True)
class ClientRunSpec:
    """Args:
    dtype, device: for the clients' and the server's models (None: fedkt.models picks).
    client_cpus, client_gpus: Ray resources per simulated client.
    eval_batch_size, eval_max_new_tokens: client-side scoring.
    response_store: JSONL file of the LLM's answers (resumable); None: in memory.
    predictions_dir: where each client writes its SLM's per-row predictions
        (``slm-client<k>.jsonl``, on its own disk); None: not written.
    artefacts_dir: where each client saves its SLM adapter (``clients/<k>/slm``).
    reports_dir: where each client writes its own report (``client<k>.json``; never sent).
    max_message_bytes: larger messages are refused, in both directions.
    """

    dtype: str | None = None
    device: str | None = None
    client_cpus: int = 1
    client_gpus: float = 0.0
    eval_batch_size: int = 16
    eval_max_new_tokens: int = 256
    response_store: str | None = None
    predictions_dir: str | None = None
    artefacts_dir: str | None = None
    reports_dir: str | None = None
    max_message_bytes: int = keys.DEFAULT_MAX_MESSAGE_BYTES


def check_client_partitions(spec_name: str, client_data: Sequence[Sequence[object]],
                            *, deployed: bool) -> int:  # fmt: skip
    """How many partitions hold rows, after refusing a simulated spec with an empty partition
    and a deployed one (a client's own process) that holds more than its own rows."""
    held = sum(1 for part in client_data if part)
    if deployed and (not client_data or held > 1):
        raise ConfigError(
            f"{spec_name}.client_data: a deployed spec counts at least one client and holds "
            "at most one client's rows (its own)"
        )
    if not deployed and (not client_data or held < len(client_data)):
        raise ConfigError(
            f"{spec_name}.client_data: need at least one client and no empty partition"
        )
    return held
