"""The wire protocols: every record key, the message types and the size limit.

FedCoLLM. A round is one Flower ``train`` message per client and one reply:

    server -> client   {ADAPTER: ArrayRecord(theta),   CONFIG: ConfigRecord{ROUND: t}}
    client -> server   {ADAPTER: ArrayRecord(theta_k),
                        COUNTS: MetricRecord{N_EXAMPLES: n_k, PARTITION: k, ROUND: t}}

Nothing else crosses the boundary: no text, no losses, no client report. The partition id
names the sender (not its data): the server sums in partition order, so a rerun sums alike.
The reply repeats the round index: the server refuses a reply of another round (a replay or
a late answer). With secure aggregation (`fedkt.federation.secagg`) a round is Flower's four
SecAgg+ stages instead, every message a TRAIN message with Flower's SECAGG ConfigRecord and
CONFIG{ROUND, WEIGHTED}; the third stage also carries ADAPTER down, and every reply carries
COUNTS{PARTITION, ROUND} (the third also N_EXAMPLES) but never ADAPTER: only a masked,
quantised vector in Flower's record.
Without public data (aux_source "dp_synthetic") one query per client comes before round 1:

    server -> client   QUERY  {}
    client -> server          {SYNTHETIC: ConfigRecord{TEXTS, LABELS}}

the client's DP synthetic samples, the server's auxiliary set; its eps stays on its disk.

FedCoT. One ``query`` and one ``train`` message per client, no weights:

    server -> client   QUERY  {CONFIG: ConfigRecord{ROUND: t}}
    client -> server          {REQUESTS: ConfigRecord{IDS, PROMPTS}}
    server -> client   TRAIN  {RATIONALES: ConfigRecord{IDS, TEXTS}, CONFIG}
    client -> server          {RECEIVED: MetricRecord{RECEIVED: rationales received}}

PROMPTS are the DP-perturbed questions inside the server's instruction template; the TRAIN
reply is a bare acknowledgement whose count the server already knows. The client's privacy
report, losses, counts and scores stay on its disk (derived from private rows, not covered
by eps).

Keys live here only, so the apps and any audit agree on them by construction.
"""

from __future__ import annotations

from flwr.app import MessageType, RecordDict

from fedkt.errors import FedktError
from fedkt.federation.codec import payload_bytes

TRAIN = MessageType.TRAIN
"""Message type of a round: the ClientApp's ``@app.train()`` handler answers it."""

QUERY = MessageType.QUERY
"""FedCoT: the server asks for a client's perturbed requests (``@app.query()``); FDKT and
FedCoLLM without public data: for its DP synthetic samples."""

ADAPTER = "adapter"
"""ArrayRecord: the global SLM adapter theta (down) or a client's theta_k (up)."""

CONFIG = "config"
"""ConfigRecord sent down with the adapter."""

ROUND = "round"
"""int in CONFIG: the round index t; clients offset their training seed by it. FedCoLLM
replies repeat it in COUNTS: the server drops a reply of any other round."""

VOCABULARY = "vocabulary"
"""str in CONFIG: the sha256 fingerprint of the server's SLM vocabulary
(`fedkt.models.vocabulary_fingerprint`, public: it describes a public tokenizer). A client
whose own tokenizer differs refuses the round: adapters of two vocabularies can have the same
shapes and would average silently into nonsense."""

WEIGHTED = "weighted"
"""bool in CONFIG, secure aggregation only: the client masks n_k * theta_k ("weighted"
aggregation) instead of theta_k (uniform), so the server's sum divides into the right mean."""

COUNTS = "counts"
"""MetricRecord sent up with the adapter."""

N_EXAMPLES = "n-examples"
"""int in COUNTS: n_k, the client's number of training examples (weighted aggregation)."""

PARTITION = "partition-id"
"""int in COUNTS: the client's partition id k (its node config's ``partition-id``)."""

REQUESTS = "requests"
"""FedCoT ConfigRecord up: a client's request ids and perturbed prompts (parallel lists)."""

RATIONALES = "rationales"
"""FedCoT ConfigRecord down: the server's rationale per request id (parallel lists)."""

IDS = "ids"
"""list[str] in REQUESTS / RATIONALES: opaque request ids ("q0", "q1", ...)."""

PROMPTS = "prompts"
"""list[str] in REQUESTS: the perturbed prompts, in IDS order."""

TEXTS = "texts"
"""list[str] in RATIONALES: the rationales, in IDS order."""

SYNTHETIC = "synthetic"
"""FDKT (and FedCoLLM's query) ConfigRecord up: a client's DP synthetic samples, TEXTS and
LABELS (parallel lists)."""

AUGMENTED = "augmented"
"""FDKT ConfigRecord down: the server's augmented samples, TEXTS and LABELS (parallel lists);
for a multiple-choice task ITEMS instead."""

LABELS = "labels"
"""list[str] in SYNTHETIC / AUGMENTED: each text's label name, in TEXTS order."""

ITEMS = "items"
"""list[str] in FDKT's SYNTHETIC / AUGMENTED for a multiple-choice task, in place of TEXTS and
LABELS: whole items, each one line as `fedkt.data.synthetic.format_item` writes it
(``"Question: ... | Choices: A) ... B) ... | Answer: B"``); the receiver parses each back with
`parse_item` and refuses the message if one does not parse."""

RECEIVED = "received"
"""FDKT MetricRecord up (the TRAIN ack): how many augmented samples the client received;
FedCoT's TRAIN ack likewise: how many rationales it received."""

DEFAULT_MAX_MESSAGE_BYTES = 256 * 2**20
"""256 MiB: a LoRA adapter of a 7B model (r=8, all linear layers) is ~80 MB in fp32, so only a
mistake (a full state dict, a wrong rank) comes near it."""


def check_message_size(content: RecordDict, limit: int, *, what: str) -> int:
    """The payload size of ``content`` in bytes; refuse it when it exceeds ``limit``.

    ``what`` names the message (e.g. "reply of partition 2") so the error says which side
    produced the oversized message.
    """
    size = payload_bytes(content)
    if size > limit:
        raise FedktError(
            f"{what}: message payload is {size:,} bytes, over the limit of {limit:,} bytes; "
            "only LoRA adapters should travel: check the LoRA rank and target modules, or "
            "raise max_message_bytes if the adapter really is this large."
        )
    return size
