"""FedCoLLM over Flower's Message API: the client app, the server app and their simulation.

A round is one ``train`` message per client and one reply (wire format in `keys`): the server
sends theta and the round index; the client runs `fedcollm.client_update` and replies with
theta_k, n_k and its partition id. The server's round is `fedcollm.server_round` itself, with
these messages as its exchange, so the in-process protocol and the federation are one code
path. The server models live in the ServerApp's process; clients keep their SLM loaded across
rounds (a Ray actor serves many messages from one module-level cache).

Without public data (``aux_source = "dp_synthetic"``) one ``query`` message per client comes
first: the client DP-trains a fresh generator on its rows and replies with synthetic texts and
their labels only (its DP report, which counts its rows, goes to its own disk); the server
turns them into its auxiliary set, writes it beside the checkpoint at once and never asks
again, not even after a resume (a second query would spend every client's budget twice).

Rounds survive clients that fail, time out (``RoundPolicy.reply_timeout``) or answer another
round (a replay, a late reply: refused with one log line): the round aggregates the others
when at least ``min_clients`` answered and its record names who was missing; with fewer it
is tried once more, then the run stops with one error, its checkpoint (the last complete
round) ready for ``resume``. With ``RoundPolicy.secure_aggregation`` the uploads go through
Flower's SecAgg+ (`fedkt.federation.secagg`): the server sees only their mean.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.serverapp import Grid
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from fedkt import console
from fedkt.algorithms.fedcollm import (
    Adapter,
    ClientUpdate,
    DPAuxSettings,
    FedCoLLMSettings,
    RoundResult,
    ServerModels,
    aux_examples,
    client_aux_synthesis,
    client_training,
    client_update,
    load_server_models,
    server_round,
)
from fedkt.data import Example
from fedkt.data.formats import LabelFormat
from fedkt.errors import ConfigError, FedktError, ModelError
from fedkt.federation import keys
from fedkt.federation.boundary import answer_privately
from fedkt.federation.checkpoint import read_checkpoint, write_checkpoint
from fedkt.federation.codec import adapter_to_record, record_to_adapter
from fedkt.federation.messaging import (
    ShortRound,
    answered,
    checked_replies,
    missing_nodes,
    replies_by_node,
    send_and_receive,
    string_list,
    wait_for_nodes,
)
from fedkt.federation.reports import write_report
from fedkt.federation.secagg import SecAggSettings, secure_aggregation_mod, secure_mean
from fedkt.federation.simulation import simulate
from fedkt.models import (
    LoraSettings,
    adapter_state,
    add_lora,
    load_adapter_state,
    load_model_and_tokenizer,
    vocabulary_fingerprint,
)
from fedkt.privacy.accounting import check_target
from fedkt.report import read_json, to_strict_json, write_json
from fedkt.training import TrainSettings, derive_seed

_LOG = logging.getLogger(__name__)

# ---- what a run needs and returns ---------------------------------------------------------


@dataclass(frozen=True)
class ClientSetup:
    """What a client process needs to answer a round.

    Args:
        slm: the SLM's model name (embedded name, local directory or hub id).
        partitions: the private examples D_k of every client, indexed by Flower's
            ``partition-id``. The simulation ships the table to each client process, which
            reads only its own entry; a deployed SuperNode would hold just its own data.
        train: local training settings; each client derives its own seed per round.
        lora: the SLM's LoRA (must match the server's, or aggregation refuses the update).
        dtype: model dtype (None: fedkt.models.pick_dtype).
        device: model device (None: fedkt.models.pick_device).
        max_message_bytes: replies larger than this are refused before sending.
        generator: the DP generator's base model name (the query only; "": the SLM).
        dp_aux: how to answer the server's query for DP synthetic samples; None: this
            client answers no query.
        reports_dir: where the client writes its own DP report (``client<k>.json``: eps
            spent, private rows; never sent); None: not written.
    """

    slm: str
    partitions: tuple[tuple[Example, ...], ...]
    train: TrainSettings
    lora: LoraSettings
    dtype: str | None = None
    device: str | None = None
    max_message_bytes: int = keys.DEFAULT_MAX_MESSAGE_BYTES
    generator: str = ""
    dp_aux: DPAuxSettings | None = None
    reports_dir: str | None = None


@dataclass(frozen=True)
class RoundPolicy:
    """How the server treats its clients within a round (transport, not the protocol).

    Args:
        min_clients: the fewest answers a round aggregates (0: every client, the default:
            a round never silently averages fewer clients than the run was set up with).
            A round with fewer is tried once more, then the run stops with its checkpoint.
        reply_timeout: seconds the server waits for a round's replies (for each of the
            four stages with secure aggregation); None: no limit (a client's local training
            may take hours, so set it from a measured round time).
        secure_aggregation: SecAgg+ for the adapter uploads (None: plain uploads).
    """

    min_clients: int = 0
    reply_timeout: float | None = None
    secure_aggregation: SecAggSettings | None = None

    def __post_init__(self) -> None:
        if self.min_clients < 0 or (self.reply_timeout is not None and self.reply_timeout <= 0):
            raise ConfigError(
                f"RoundPolicy: min_clients={self.min_clients} must be >= 0 (0: all) and "
                f"reply_timeout={self.reply_timeout} > 0 or None (no limit)."
            )

    def needed(self, clients: int) -> int:
        """The answers a round of ``clients`` needs."""
        if self.min_clients > clients:
            raise ConfigError(f"min_clients={self.min_clients} exceeds the {clients} clients")
        return self.min_clients or clients


@dataclass(frozen=True)
class FederationSpec:
    """One FedCoLLM federation: the models by name, the data split and the settings.

    Args:
        llm: the server LLM's model name (embedded name, local directory or hub id).
        slm: the SLM's model name, loaded by the server and by every client.
        client_data: the private partitions D_k, one per client (Flower partition-id k).
        public_data: the server's public set D_a for mutual distillation (unused, and may
            be empty, with ``settings.aux_source = "dp_synthetic"``).
        settings: FedCoLLM hyperparameters (rounds, KD, client training, LoRA, where D_a
            comes from); with ``settings.distil`` off the federation is FedAvg.
        dtype: model dtype on both sides (None: fedkt.models.pick_dtype).
        device: model device on both sides (None: fedkt.models.pick_device).
        client_cpus: CPU cores Ray reserves per client; clients run side by side when the
            machine has room for several.
        client_gpus: GPU share Ray reserves per client (0: clients train on CPU).
        max_message_bytes: messages with a larger payload are refused, in both directions.
        checkpoint: file the server rewrites (atomically) after every round with both
            adapters, the round index, the round records and what ``after_round`` returned
            (and, once, the DP synthetic D_a beside it: `aux_path`); None: no checkpoint.
        resume: continue from ``checkpoint`` when it exists (a fresh start when it does not).
        aux_format: the task's label names and prompt format, read off rows the server
            holds (`LabelFormat.of` the public evaluation rows); the server builds D_a from
            the clients' (label, text) pairs with it. Required with "dp_synthetic".
        generator: the clients' DP generator base ("": the SLM), LoRA-trained in fp32.
        reports_dir: where each client writes its DP report (``client<k>.json``, on its own
            disk; `read_report`); None: not written.
        policy: dropouts, timeouts and secure aggregation (`RoundPolicy`).
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
    max_message_bytes: int = keys.DEFAULT_MAX_MESSAGE_BYTES
    checkpoint: str | None = None
    resume: bool = False
    aux_format: LabelFormat | None = None
    generator: str = ""
    reports_dir: str | None = None
    policy: RoundPolicy = RoundPolicy()

    def __post_init__(self) -> None:
        self.policy.needed(len(self.client_data))
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
        if self.uses_dp_aux:
            if self.aux_format is None:
                raise ConfigError(
                    "FederationSpec: aux_source 'dp_synthetic' needs aux_format, the task's "
                    "labels and prompt format (LabelFormat.of the public evaluation rows)."
                )
            dp, smallest = self.settings.dp_aux.dp, min(len(part) for part in self.client_data)
            check_target(dp.target_epsilon, dp.delta, smallest)  # before any model loads
        elif self.settings.distil and not self.public_data:
            raise ConfigError(
                "FederationSpec: FedCoLLM distils on public_data, which is empty; give the "
                "server public rows or set settings.aux_source = 'dp_synthetic'."
            )

    @property
    def uses_dp_aux(self) -> bool:
        """Whether D_a comes from the clients' DP synthetic samples (a query before round 1)."""
        return self.settings.distil and self.settings.aux_source == "dp_synthetic"

    @property
    def num_clients(self) -> int:
        return len(self.client_data)

    @property
    def label_format(self) -> LabelFormat:
        if self.aux_format is None:
            raise ConfigError("FederationSpec.aux_format is None: no task format for D_a")
        return self.aux_format

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
            generator=self.generator,
            dp_aux=self.settings.dp_aux if self.uses_dp_aux else None,
            reports_dir=self.reports_dir,
        )

    def load_server_models(self) -> ServerModels:
        """The server's models in the federation's dtype and device
        (`fedkt.algorithms.fedcollm.load_server_models`: FedAvg loads no LLM)."""
        return load_server_models(
            self.llm, self.slm, self.settings, dtype=self.dtype, device=self.device
        )


@dataclass(frozen=True)
class RoundRecord:
    """One round as the server saw it.

    ``bytes_down``/``bytes_up`` map each aggregated client's partition id to the payload
    bytes of the messages sent to it / received from it (`codec.payload_bytes`; all four
    stages with secure aggregation). ``metrics`` holds "clients", "client_examples", the mean
    distillation terms ("distil_llm_ce", ..., "distil_seconds"; none for FedAvg),
    "clients_missing" and "seconds" (the whole round). ``missing`` names each client left out
    of the round and why ("partition 2 (node 51): error reply: ..."; "node 51" while its
    partition is unknown).
    """

    round: int
    bytes_down: dict[int, int]
    bytes_up: dict[int, int]
    metrics: dict[str, float]
    missing: tuple[str, ...] = ()

    @property
    def total_bytes_down(self) -> int:
        return sum(self.bytes_down.values())

    @property
    def total_bytes_up(self) -> int:
        return sum(self.bytes_up.values())

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RoundRecord:
        """The inverse of `dataclasses.asdict` after a JSON round trip (keys become strings)."""
        as_ints = {
            k: {int(p): int(b) for p, b in raw[k].items()} for k in ("bytes_down", "bytes_up")
        }
        missing = tuple(str(m) for m in raw.get("missing", ()))
        return cls(int(raw["round"]), **as_ints, metrics=dict(raw["metrics"]), missing=missing)


@dataclass(frozen=True)
class AuxSet:
    """The server's auxiliary set D_a and what fetching it cost: the payload bytes of the
    query (all clients together) each way; 0 for public rows the server already held."""

    examples: tuple[Example, ...]
    bytes_down: int = 0
    bytes_up: int = 0

    def to_json(self, fmt: LabelFormat) -> dict[str, Any]:
        """The DP synthetic pairs (not private) and the bytes, to keep beside the checkpoint:
        ``from_json`` rebuilds the same rows."""
        pairs = [[label, text] for text, label in map(fmt.text_and_label, self.examples)]
        return {"pairs": pairs, "bytes_down": self.bytes_down, "bytes_up": self.bytes_up}

    @classmethod
    def from_json(cls, raw: dict[str, Any], fmt: LabelFormat) -> AuxSet:
        examples = aux_examples([(label, text) for label, text in raw["pairs"]], fmt)
        return cls(examples, int(raw["bytes_down"]), int(raw["bytes_up"]))


@dataclass(frozen=True)
class FederationResult:
    """The final global SLM adapter theta (what clients use), the server's LLM adapter omega
    (it never left the server; empty for FedAvg, whose server has no LLM), one record per
    round, per round what ``after_round`` returned (None where it returned nothing), and the
    DP synthetic auxiliary set the clients sent (None: the server distilled on its public
    rows, or not at all)."""

    slm_adapter: Adapter
    llm_adapter: Adapter
    rounds: tuple[RoundRecord, ...]
    after_round: tuple[Any, ...] = ()
    aux: AuxSet | None = None


AfterRound = Callable[[int, ServerModels], Any]
"""Called with the round index and the live server models after every round, before the
checkpoint is written (evaluation, artefacts); what it returns (JSON-able) is kept in the
checkpoint and in `FederationResult.after_round`."""

ServerUpdate = Callable[[int, ServerModels], Mapping[str, float]]
"""An extra server step after round t's `server_round` (aggregation, and distillation when
on) and before ``after_round``: it may train ``models.slm`` in place, which is then the theta
the clients receive next round (e.g. FedAvg whose server fine-tunes theta on D_a, a
baseline). Returns metrics for the round's record; it must seed itself from t alone, so a
resumed run repeats an uninterrupted one."""

# ---- client -------------------------------------------------------------------------------

_SlmKey = tuple[str, LoraSettings, str | None, str | None]
_SLMS: dict[_SlmKey, tuple[PeftModel, PreTrainedTokenizerBase]] = {}


def make_client_app(setup: ClientSetup, mods: Sequence[Mod] = ()) -> ClientApp:
    """A ClientApp answering FedCoLLM ``train`` messages (and the ``query`` for DP synthetic
    samples); ``mods`` wrap its handlers (e.g. an audit that records every outgoing message).
    The innermost mod answers secure aggregation's messages (`secure_aggregation_mod`; it
    lets every other message through), so one app serves either kind of server."""
    app = ClientApp(mods=[*mods, secure_aggregation_mod])
    # A partial of a module-level function pickles by reference: Ray ships `setup` by value
    # and each client process keeps using this module's model cache.
    app.train()(partial(train, setup))
    app.query()(partial(query, setup))
    return app


def train(setup: ClientSetup, msg: Message, context: Context) -> Message:
    """The ``train`` handler: local update, or an error reply that quotes no data."""
    return answer_privately("FedCoLLM", partial(_train, setup), msg, context)


def _train(setup: ClientSetup, msg: Message, context: Context, partition: int) -> Message:
    slm, tokenizer = _load_slm(setup)
    config = msg.content.config_records[keys.CONFIG]
    _check_vocabulary(setup, tokenizer, str(config.get(keys.VOCABULARY, "")))
    round_index = int(config[keys.ROUND])  # type: ignore[arg-type]
    settings = client_training(setup.train, partition, round_index)
    theta = record_to_adapter(msg.content.array_records[keys.ADAPTER])
    update = client_update(slm, tokenizer, theta, setup.partitions[partition], settings)
    content = RecordDict(
        {
            keys.ADAPTER: adapter_to_record(update.adapter),
            keys.COUNTS: MetricRecord(
                {
                    keys.N_EXAMPLES: update.n_examples,
                    keys.PARTITION: partition,
                    keys.ROUND: round_index,
                }
            ),
        }
    )
    keys.check_message_size(
        content, setup.max_message_bytes, what=f"reply of partition {partition}"
    )
    return Message(content, reply_to=msg)


def _check_vocabulary(setup: ClientSetup, tokenizer: PreTrainedTokenizerBase, server: str) -> None:
    """Refuse a round whose server SLM has another vocabulary than this client's (its adapters
    could have the same shapes and average silently); an old server sends no fingerprint."""
    own = vocabulary_fingerprint(tokenizer)
    if server and server != own:
        raise ModelError(
            f"this client's SLM {setup.slm!r} has another vocabulary than the server's "
            f"(fingerprint {own[:12]} against {server[:12]}): load the SLM and tokenizer the "
            "server's config names"
        )


def query(setup: ClientSetup, msg: Message, context: Context) -> Message:
    """The ``query`` handler: DP synthetic samples, or an error reply that quotes no data."""
    return answer_privately("FedCoLLM", partial(_query, setup), msg, context)


def _query(setup: ClientSetup, msg: Message, context: Context, partition: int) -> Message:
    """Step 0: DP-train a fresh generator adapter on this client's rows, sample per label,
    keep the DP report on this client's disk and reply with texts and labels only."""
    if setup.dp_aux is None:
        raise FedktError("this FedCoLLM client was set up without DP aux settings (dp_aux)")
    generator, tokenizer = load_model_and_tokenizer(
        setup.generator or setup.slm, dtype="float32", device=setup.device
    )  # not cached: each client trains it once
    torch.manual_seed(derive_seed(setup.dp_aux.seed or 0, partition))  # its LoRA's start
    out = client_aux_synthesis(
        add_lora(generator, setup.lora),
        tokenizer,
        setup.partitions[partition],
        setup.dp_aux,
        partition,
    )
    write_report(setup.reports_dir, partition, "synthesis", out.local_report(), fresh=True)
    record = ConfigRecord({keys.TEXTS: list(out.texts), keys.LABELS: list(out.labels)})
    content = RecordDict({keys.SYNTHETIC: record})
    keys.check_message_size(content, setup.max_message_bytes, what=f"samples of {partition}")
    return Message(content, reply_to=msg)


def _load_slm(setup: ClientSetup) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """This process's SLM with LoRA, loaded on first use.

    Partitions served by one process share it: `client_update` first loads the broadcast
    adapter over every LoRA weight and builds a fresh optimiser, so nothing carries over
    from one partition to the next.
    """
    key = (setup.slm, setup.lora, setup.dtype, setup.device)
    if key not in _SLMS:
        model, tokenizer = load_model_and_tokenizer(
            setup.slm, dtype=setup.dtype, device=setup.device
        )
        _SLMS[key] = (add_lora(model, setup.lora), tokenizer)
    return _SLMS[key]


# ---- server -------------------------------------------------------------------------------


def run_server(
    grid: Grid,
    spec: FederationSpec,
    models: ServerModels,
    after_round: AfterRound | None = None,
    server_update: ServerUpdate | None = None,
) -> FederationResult:
    """All rounds, top to bottom (from the checkpoint's next round when resuming); ``models``
    are updated in place, by each round and then by ``server_update`` when given.

    A round's checkpoint is complete: clients and the server's distillation build fresh
    optimisers every round and draw every seed from (seed, partition, round), so theta, omega
    and the round index are all the state there is (with D_a, kept beside the checkpoint when
    it is DP synthetic), and a resumed run repeats an uninterrupted one bit for bit.
    """
    nodes = wait_for_nodes(grid, spec.num_clients)
    records, kept = _resume(spec, models)
    aux = _aux_set(grid, nodes, spec, resumed=bool(records)) if spec.uses_dp_aux else None
    distil_on = spec.public_data if aux is None else aux.examples
    partitions: dict[int, int] = {}  # node id -> partition id, as the replies tell
    for t in range(len(records), spec.settings.rounds):
        start = time.perf_counter()
        result, exchange = _round(grid, nodes, spec, models, distil_on, t, partitions)
        extra = {} if server_update is None else server_update(t, models)
        metrics = {**result.metrics, **extra, "seconds": time.perf_counter() - start}
        missing = exchange.missing_labels()
        metrics["clients_missing"] = float(len(missing))
        records.append(RoundRecord(t, exchange.bytes_down, exchange.bytes_up, metrics, missing))
        kept.append(None if after_round is None else after_round(t, models))
        if spec.checkpoint is not None:
            _write_checkpoint(Path(spec.checkpoint), models, records, kept)
        _log_round(spec, t, time.perf_counter() - start, len(distil_on))
    adapters = _adapters(models)
    return FederationResult(
        slm_adapter=adapters["slm"],
        llm_adapter=adapters.get("llm", {}),
        rounds=tuple(records),
        after_round=tuple(kept),
        aux=aux,
    )


def _round(
    grid: Grid,
    nodes: list[int],
    spec: FederationSpec,
    models: ServerModels,
    distil_on: Sequence[Example],
    t: int,
    partitions: dict[int, int],
) -> tuple[RoundResult, FlowerExchange]:
    """Round t, tried once more when too few clients answer (the models are untouched until
    the exchange succeeds); a second short round stops the run with one error."""
    for attempt in (1, 2):
        vocabulary = vocabulary_fingerprint(models.tokenizer)
        exchange = FlowerExchange(grid, nodes, spec, partitions, vocabulary=vocabulary)
        try:
            return server_round(models, distil_on, spec.settings, t, exchange), exchange
        except ShortRound as err:
            if attempt == 1:
                _LOG.warning("FedCoLLM round %d: %s; trying the round once more", t + 1, err)
                continue
            saved = (
                f"the checkpoint {spec.checkpoint} holds the {t} rounds done: run again with "
                "resume once the clients are back"
                if spec.checkpoint is not None and t > 0
                else "nothing was checkpointed (set FederationSpec.checkpoint to resume)"
            )
            raise FedktError(f"FedCoLLM round {t + 1} failed twice: {err}; {saved}.") from err
    raise AssertionError("unreachable")


def _aux_set(grid: Grid, nodes: list[int], spec: FederationSpec, *, resumed: bool) -> AuxSet:
    """Step 0, once per run: D_a is written beside the checkpoint as soon as it arrives, and
    a resumed run reads it back (asking again would spend every client's budget twice)."""
    path = None if spec.checkpoint is None else aux_path(spec.checkpoint)
    if spec.resume and path is not None and path.is_file():
        _LOG.info("FedCoLLM reuses the DP synthetic aux set of %s", path)
        return AuxSet.from_json(read_json(path), spec.label_format)
    if resumed:
        raise FedktError(
            f"checkpoint {spec.checkpoint} has rounds distilled on DP synthetic rows, but "
            f"{path} (those rows) is gone; delete the checkpoint to start this method again."
        )
    aux = query_aux(grid, nodes, spec)
    if path is not None:
        write_json(path, aux.to_json(spec.label_format))
    return aux


def aux_path(checkpoint: str) -> Path:
    """Where the DP synthetic D_a is kept beside the checkpoint (not private)."""
    return Path(checkpoint).with_suffix(".aux.json")


def query_aux(grid: Grid, nodes: list[int], spec: FederationSpec) -> AuxSet:
    """Step 0 on the server: ask every client for its DP synthetic samples and turn the
    pooled (label, text) pairs into D_a, in the task's own format."""
    start = time.perf_counter()
    content = RecordDict()  # the query itself says nothing: a client knows what to do
    down = keys.check_message_size(content, spec.max_message_bytes, what="aux query")
    query = [Message(content, dst_node_id=node, message_type=keys.QUERY) for node in nodes]
    replies = replies_by_node(
        send_and_receive(grid, query), spec.max_message_bytes, algorithm="FedCoLLM"
    )
    pairs = [pair for reply, _ in replies.values() for pair in _samples(reply)]
    examples = aux_examples(pairs, spec.label_format)
    _LOG.info(
        "%s: %d DP synthetic aux rows from %d clients, %.0f s",
        console.scope() or "FedCoLLM",
        len(examples),
        len(replies),
        time.perf_counter() - start,
    )
    up = sum(size for _, size in replies.values())
    return AuxSet(examples, bytes_down=down * len(nodes), bytes_up=up)


def _samples(reply: Message) -> list[tuple[str, str]]:
    """A query reply's (label, text) pairs; anything but parallel string lists is malformed."""
    record = reply.content.config_records.get(keys.SYNTHETIC)
    if record is None:
        raise FedktError(f"malformed FedCoLLM samples from node {reply.metadata.src_node_id}")
    texts = string_list(record, keys.TEXTS, algorithm="FedCoLLM")
    labels = string_list(record, keys.LABELS, algorithm="FedCoLLM")
    if len(texts) != len(labels):
        raise FedktError(f"malformed FedCoLLM samples: {len(texts)} texts, {len(labels)} labels")
    return list(zip(labels, texts, strict=True))


def _log_round(spec: FederationSpec, t: int, seconds: float, aux_rows: int) -> None:
    """One progress line per round: what ran, on which rows, how long (with evaluation)."""
    sizes = sorted(len(part) for part in spec.client_data)
    rows = f"{sizes[0]}" if sizes[0] == sizes[-1] else f"{sizes[0]}-{sizes[-1]}"
    distil = spec.settings.distil
    _LOG.info(
        "%s round %d/%d: %d clients x %s rows, %s, %.0f s",
        console.scope() or ("FedCoLLM" if distil else "FedAvg"),
        t + 1,
        spec.settings.rounds,
        spec.num_clients,
        rows,
        f"distil on {aux_rows} {'DP synthetic' if spec.uses_dp_aux else 'public'} rows"
        if distil
        else "no distillation",
        seconds,
    )


def _write_checkpoint(
    path: Path, models: ServerModels, records: list[RoundRecord], kept: list[Any]
) -> None:
    adapters = _adapters(models)
    state = {
        "rounds_done": len(records),
        "records": [dataclasses.asdict(record) for record in records],
        "after_round": kept,
    }
    write_checkpoint(path, adapters, to_strict_json(state))


def _resume(spec: FederationSpec, models: ServerModels) -> tuple[list[RoundRecord], list[Any]]:
    """The records and kept values of the rounds already done, with their adapters loaded
    into ``models``; nothing when not resuming or no checkpoint exists yet."""
    if not spec.resume or spec.checkpoint is None or not Path(spec.checkpoint).exists():
        return [], []
    adapters, state = read_checkpoint(Path(spec.checkpoint))
    done = int(state["rounds_done"])
    if done > spec.settings.rounds:
        raise FedktError(
            f"checkpoint {spec.checkpoint} has {done} rounds but the run asks for "
            f"{spec.settings.rounds}; delete it to start this method again."
        )
    for role, model in _models(models).items():
        load_adapter_state(model, adapters[role])
    _LOG.info("FedCoLLM resumes after round %d from %s", done, spec.checkpoint)
    return [RoundRecord.from_json(r) for r in state["records"]], list(state["after_round"])


def _models(models: ServerModels) -> dict[str, PeftModel]:
    """The server's LoRA models by role; FedAvg's server has no LLM."""
    return {"slm": models.slm} | ({} if models.llm is None else {"llm": models.llm})


def _adapters(models: ServerModels) -> dict[str, Adapter]:
    return {role: adapter_state(model) for role, model in _models(models).items()}


class FlowerExchange:
    """Steps 1-2 over Flower (an `Exchange`): one ``train`` message per node, the replies of
    this round read back by partition id (or, with secure aggregation, only their mean); it
    keeps the payload bytes of each direction per partition and who was missing, and raises
    `ShortRound` when fewer clients answered than the policy needs."""

    def __init__(
        self,
        grid: Grid,
        nodes: list[int],
        spec: FederationSpec,
        partitions: dict[int, int] | None = None,
        sink: Callable[[RecordDict], None] | None = None,
        vocabulary: str = "",
    ) -> None:
        self.grid, self.nodes, self.limit = grid, nodes, spec.max_message_bytes
        self.vocabulary = vocabulary  # the server's fingerprint, checked by every client
        self.policy, self.weighted = spec.policy, spec.settings.aggregation == "weighted"
        self.partitions = {} if partitions is None else partitions
        self.sink = sink
        self.bytes_down: dict[int, int] = {}
        self.bytes_up: dict[int, int] = {}
        self.missing: dict[int, str] = {}

    def __call__(self, theta: Adapter, round_index: int) -> Mapping[int, ClientUpdate]:
        content = broadcast_content(theta, round_index, self.vocabulary)
        down = keys.check_message_size(content, self.limit, what=f"round {round_index} broadcast")
        if self.policy.secure_aggregation is not None:
            return self._secure(theta, content, round_index, self.policy.secure_aggregation)
        messages = [
            Message(content, dst_node_id=node, message_type=keys.TRAIN, group_id=str(round_index))
            for node in self.nodes
        ]
        replies = send_and_receive(self.grid, messages, timeout=self.policy.reply_timeout)
        kept, dropped = answered(replies, round_index, algorithm="FedCoLLM")
        self.missing = missing_nodes(self.nodes, kept, dropped)
        self._check_enough(len(kept), round_index)
        updates, self.bytes_up = read_replies(kept, self.limit)
        for reply in kept:
            counts = reply.content.metric_records[keys.COUNTS]
            self.partitions[reply.metadata.src_node_id] = int(counts[keys.PARTITION])  # type: ignore[arg-type]
        self.bytes_down = dict.fromkeys(updates, down)
        return updates

    def _secure(
        self, theta: Adapter, content: RecordDict, round_index: int, settings: SecAggSettings
    ) -> dict[int, ClientUpdate]:
        """The round under SecAgg+: every aggregated client's entry is the one mean the
        server learns (a uniform or weighted mean of equal entries is that mean again)."""
        outcome = secure_mean(
            self.grid,
            self.nodes,
            content,
            round_index,
            settings,
            layout=theta,
            weighted=self.weighted,
            min_clients=self.policy.needed(len(self.nodes)),
            timeout=self.policy.reply_timeout,
            sink=self.sink,
        )
        self.missing = outcome.missing
        by_partition = {p: (node, n) for node, (p, n) in outcome.counts.items()}
        self.partitions.update((node, p) for p, (node, _) in by_partition.items())
        self.bytes_down = {p: outcome.bytes_down[node] for p, (node, _) in by_partition.items()}
        self.bytes_up = {p: outcome.bytes_up[node] for p, (node, _) in by_partition.items()}
        return {p: ClientUpdate(outcome.mean, n) for p, (_, n) in by_partition.items()}

    def _check_enough(self, count: int, round_index: int) -> None:
        need = self.policy.needed(len(self.nodes))
        if count < need:
            raise ShortRound(
                f"{count} of {len(self.nodes)} clients answered round {round_index}, "
                f"min_clients needs {need} (missing: {'; '.join(self.missing_labels())})"
            )

    def missing_labels(self) -> tuple[str, ...]:
        """Who was missing and why, by partition where the server has seen it."""
        return tuple(
            f"{_node_label(node, self.partitions)}: {why}"
            for node, why in sorted(self.missing.items())
        )


def _node_label(node: int, partitions: Mapping[int, int]) -> str:
    partition = partitions.get(node)
    return f"node {node}" if partition is None else f"partition {partition} (node {node})"


def broadcast_content(theta: Adapter, round_index: int, vocabulary: str = "") -> RecordDict:
    """What every client receives in round ``round_index``: theta, the round index and (when
    given) the fingerprint of the server's vocabulary, which each client checks."""
    config = ConfigRecord({keys.ROUND: round_index})
    if vocabulary:
        config[keys.VOCABULARY] = vocabulary
    return RecordDict({keys.ADAPTER: adapter_to_record(theta), keys.CONFIG: config})


def read_replies(
    replies: Iterable[Message], limit: int
) -> tuple[dict[int, ClientUpdate], dict[int, int]]:
    """Each client's update and reply size, keyed by its partition id; any error reply, an
    oversized reply or two replies for one partition raise."""
    updates: dict[int, ClientUpdate] = {}
    sizes: dict[int, int] = {}
    for reply, size in checked_replies(replies, limit, algorithm="FedCoLLM"):
        counts = reply.content.metric_records[keys.COUNTS]
        partition = int(counts[keys.PARTITION])  # type: ignore[arg-type]
        if partition in updates:
            raise FedktError(
                f"two FedCoLLM replies claim partition {partition}; every SuperNode needs its "
                "own partition-id in its node config."
            )
        sizes[partition] = size
        updates[partition] = ClientUpdate(
            adapter=record_to_adapter(reply.content.array_records[keys.ADAPTER]),
            n_examples=int(counts[keys.N_EXAMPLES]),  # type: ignore[arg-type]
        )
    return updates, sizes


# ---- simulation ---------------------------------------------------------------------------


def simulate_fedcollm(
    spec: FederationSpec,
    *,
    client_mods: Sequence[Mod] = (),
    after_round: AfterRound | None = None,
    server_update: ServerUpdate | None = None,
) -> FederationResult:
    """All of ``spec``'s rounds with one simulated SuperNode per client partition.

    ``client_mods`` wrap every client's handler (Flower mods), e.g. to audit what leaves a
    client; ``server_update(t, models)`` is an extra server step after round t's
    aggregation (`ServerUpdate`); ``after_round(t, models)`` then sees the live server models.
    """
    return simulate(
        lambda grid: run_server(grid, spec, spec.load_server_models(), after_round, server_update),
        make_client_app(spec.client_setup(), client_mods),
        num_clients=spec.num_clients,
        client_cpus=spec.client_cpus,
        client_gpus=spec.client_gpus,
    )
