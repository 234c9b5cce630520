"""What a federated FedCoLLM run needs (`FederationSpec`) and what it returns."""

from __future__ import annotations

from dataclasses import dataclass

from fedkt.algorithms.fedcollm import Adapter, FedCoLLMSettings
from fedkt.data import Example
from fedkt.errors import ConfigError
from fedkt.federation.client_app import ClientSetup
from fedkt.federation.keys import DEFAULT_MAX_MESSAGE_BYTES


@dataclass(frozen=True)
class FederationSpec:
    """One FedCoLLM federation: the models by name, the data split and the settings.

    Args:
        llm: the server LLM's model name (embedded name, local directory or hub id).
        slm: the SLM's model name, loaded by the server and by every client.
        client_data: the private partitions D_k, one per client (Flower partition-id k).
        public_data: the server's public set D_a for mutual distillation.
        settings: FedCoLLM hyperparameters (rounds, KD, client training, LoRA).
        dtype: model dtype on both sides (None: fedkt.models.pick_dtype).
        device: model device on both sides (None: fedkt.models.pick_device).
        client_cpus: CPU cores Ray reserves per client; clients run side by side when the
            machine has room for several.
        client_gpus: GPU share Ray reserves per client (0: clients train on CPU).
        max_message_bytes: messages with a larger payload are refused, in both directions.
    """

    llm: str
    slm: str
    client_data: tuple[tuple[Example, ...], ...]
    public_data: tuple[Example, ...]
    settings: FedCoLLMSettings
    dtype: str | None = None
    device: str | None = None
    client_cpus: int = 1
    client_gpus: float = 0.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        empty = [k for k, part in enumerate(self.client_data) if not part]
        if not self.client_data or empty:
            raise ConfigError(
                f"FederationSpec.client_data: need at least one client and no empty partition "
                f"(empty: {empty}); drop empty partitions or split the data differently."
            )
        if self.client_cpus < 1 or self.client_gpus < 0 or self.max_message_bytes < 1:
            raise ConfigError(
                f"FederationSpec: client_cpus={self.client_cpus} must be >= 1, client_gpus="
                f"{self.client_gpus} >= 0 and max_message_bytes={self.max_message_bytes} >= 1."
            )

    @property
    def num_clients(self) -> int:
        return len(self.client_data)

    def client_setup(self) -> ClientSetup:
        """The client side's share of the spec: no LLM, no public data."""
        return ClientSetup(
            slm=self.slm,
            partitions=self.client_data,
            train=self.settings.client,
            lora=self.settings.lora,
            dtype=self.dtype,
            device=self.device,
            max_message_bytes=self.max_message_bytes,
        )


@dataclass(frozen=True)
class RoundRecord:
    """One round as the server saw it.

    ``bytes_down``/``bytes_up`` map each client's Flower node id to the payload bytes of the
    message sent to it / received from it (`codec.payload_bytes`). ``metrics`` holds
    "clients", "client_examples", the mean distillation terms ("distil_llm_ce", ...,
    "distil_seconds") and "seconds" (the whole round).
    """

    round: int
    bytes_down: dict[int, int]
    bytes_up: dict[int, int]
    metrics: dict[str, float]

    @property
    def total_bytes_down(self) -> int:
        return sum(self.bytes_down.values())

    @property
    def total_bytes_up(self) -> int:
        return sum(self.bytes_up.values())


@dataclass(frozen=True)
class FederationResult:
    """The final global SLM adapter theta (what clients use), the server's LLM adapter omega
    (it never left the server) and one record per round."""

    slm_adapter: Adapter
    llm_adapter: Adapter
    rounds: tuple[RoundRecord, ...]
