"""fedkt.federation: the FedCoLLM protocol over Flower's Message API, and its simulation.

Keys and size limits live in `keys`, adapter (de)serialisation in `codec`, the two apps in
`client_app` and `server_app`; `simulate_fedcollm` runs a spec in Flower's simulation runtime.
"""

from fedkt.federation.client_app import ClientSetup, make_client_app
from fedkt.federation.codec import adapter_to_record, payload_bytes, record_to_adapter
from fedkt.federation.keys import DEFAULT_MAX_MESSAGE_BYTES, check_message_size
from fedkt.federation.server_app import ServerModels, load_server_models, make_server_app
from fedkt.federation.simulation import simulate_fedcollm
from fedkt.federation.spec import FederationResult, FederationSpec, RoundRecord

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ClientSetup",
    "FederationResult",
    "FederationSpec",
    "RoundRecord",
    "ServerModels",
    "adapter_to_record",
    "check_message_size",
    "load_server_models",
    "make_client_app",
    "make_server_app",
    "payload_bytes",
    "record_to_adapter",
    "simulate_fedcollm",
]
