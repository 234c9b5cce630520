"""fedkt.models: load any causal LM by embedded name, local directory or hub id; the GGUF
conversion cache; students cut to their first layers; LoRA adapters; tokenizer compatibility;
sentence embeddings (`fedkt.models.embeddings`, the FDKT server's embedder).
"""

from fedkt.models.compat import check_same_vocabulary, vocabulary_fingerprint
from fedkt.models.devices import pick_device, pick_dtype
from fedkt.models.embedded import embedded_model, embedded_model_dir, locate_embedded_gguf
from fedkt.models.embeddings import (
    EMBEDDED_EMBEDDER,
    embed,
    embedded_embedder_dir,
    load_embedder,
    resolve_embedder,
)
from fedkt.models.loading import (
    load_model,
    load_model_and_tokenizer,
    load_tokenizer,
    resolve_cache_dir,
)
from fedkt.models.lora import (
    LoraSettings,
    adapter_state,
    add_lora,
    load_adapter_state,
    merged_copy,
    scoring_copy,
)
from fedkt.models.names import (
    EMBEDDED,
    EMBEDDED_MODELS,
    EmbeddedModel,
    ModelSpec,
    parse_model_name,
)
from fedkt.models.student import keep_first_layers, student_dir

__all__ = [
    "EMBEDDED",
    "EMBEDDED_EMBEDDER",
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "LoraSettings",
    "ModelSpec",
    "adapter_state",
    "add_lora",
    "check_same_vocabulary",
    "embed",
    "embedded_embedder_dir",
    "embedded_model",
    "embedded_model_dir",
    "keep_first_layers",
    "load_adapter_state",
    "load_embedder",
    "load_model",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "locate_embedded_gguf",
    "merged_copy",
    "parse_model_name",
    "pick_device",
    "pick_dtype",
    "resolve_cache_dir",
    "resolve_embedder",
    "scoring_copy",
    "student_dir",
    "vocabulary_fingerprint",
]
