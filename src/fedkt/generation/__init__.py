"""fedkt.generation: batched text generation, keyed by request id, resumable.

The one generation path of fedkt: evaluation's greedy completions (GSM8K exact match), the
FedCoT server writing rationales for perturbed prompts and the client recovering them all go
through a `Backend` — `TransformersBackend` (left padding, length-grouped batches) or, when
installed on a CUDA machine, the optional `VllmBackend`. `generate_responses` answers
requests by id and checkpoints them in a `ResponseStore`, so a crash loses one batch at
most; `match_responses` pairs a server's answers with the client's requests by id.
"""

from fedkt.generation.backends import Backend, make_backend
from fedkt.generation.responses import generate_responses, match_responses
from fedkt.generation.settings import GenerationSettings, Request, Response, cut_at_stop
from fedkt.generation.store import ResponseStore
from fedkt.generation.transformers_backend import TransformersBackend
from fedkt.generation.vllm_backend import VllmBackend, vllm_available

__all__ = [
    "Backend",
    "GenerationSettings",
    "Request",
    "Response",
    "ResponseStore",
    "TransformersBackend",
    "VllmBackend",
    "cut_at_stop",
    "generate_responses",
    "make_backend",
    "match_responses",
    "vllm_available",
]
