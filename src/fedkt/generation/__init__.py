"""fedkt.generation: batched text generation, keyed by request id, resumable.

The one generation path of fedkt: evaluation's greedy completions (GSM8K exact match), the
FedCoT server writing rationales for perturbed prompts and the client recovering them all go
through a `Backend` — `TransformersBackend` (left padding, length-grouped batches) or, when
installed on a CUDA machine, the optional `VllmBackend`. `generate_responses` answers
requests by id and checkpoints them in a `ResponseStore`, so a crash loses one batch at
most; `match_responses` pairs a server's answers with the client's requests by id. An
instruction-tuned model gets its prompts in its own chat template (`chat_text`), where its
tokenizer has one and the caller asks for it.
"""

from fedkt.generation.backends import Backend, applies_chat_template, make_backend
from fedkt.generation.chat import chat_text, encode_prompts, has_chat_template
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
    "applies_chat_template",
    "chat_text",
    "cut_at_stop",
    "encode_prompts",
    "generate_responses",
    "has_chat_template",
    "make_backend",
    "match_responses",
    "vllm_available",
]
