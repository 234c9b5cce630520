"""FDKT over Flower's Message API: the client and server apps, and their simulation.

One round trip per run (see `fedkt.algorithms.fdkt` and the wire format in `keys`): the server
sends QUERY; each client DP-trains its generator, samples synthetic texts per label and answers
with those texts and their labels, nothing else (its DP report, which counts its private rows,
is written to its own disk). The server curates the pooled samples, has its LLM write new ones
and sends them in a TRAIN message; each client trains its SLM on its private rows plus those,
scores it on the public evaluation rows, writes its per-row predictions and adapter to its own
disk, and acknowledges with the number of samples it received.

A multiple-choice task (ARC, OpenBookQA, CommonsenseQA) runs the same round trip with whole
items in place of texts and labels: both ways the record holds ``keys.ITEMS``, one
`format_item` line per item, parsed back with `parse_item` on arrival (a message with a
malformed item, or with the other kind's keys, is refused). The task's kind and number of
choices are read off the public evaluation rows (`FDKTSpec.format`, `FDKTSpec.n_choices`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.serverapp import Grid
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from fedkt.algorithms.fdkt import (
    FDKTSettings,
    PublicFormat,
    client_audit,
    client_synthesize,
    client_train,
    server_augment,
    server_augment_items,
)
from fedkt.data import Example
from fedkt.data.augmentation import Item, LabelledText
from fedkt.data.formats import ItemFormat, LabelFormat, TaskFormat
from fedkt.data.synthetic import McItem, format_item, parse_item
from fedkt.errors import ConfigError, FedktError
from fedkt.evaluation import evaluate_rows
from fedkt.federation import keys
from fedkt.federation.boundary import query_train_app
from fedkt.federation.messaging import (
    replies_by_node,
    send_and_receive,
    string_list,
    wait_for_nodes,
)
from fedkt.federation.reports import write_report
from fedkt.federation.simulation import simulate
from fedkt.federation.spec import ClientRunSpec, check_client_partitions
from fedkt.generation import Backend, ResponseStore, make_backend
from fedkt.models import (
    LoraSettings,
    adapter_state,
    add_lora,
    load_adapter_state,
    load_model_and_tokenizer,
    scoring_copy,
)
from fedkt.models.embeddings import EMBEDDED_EMBEDDER, load_embedder
from fedkt.privacy.leakage import Canary, make_canaries
from fedkt.report import write_jsonl
from fedkt.training import derive_seed
from fedkt.training.dp_synthesis import DPSynthesis

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class FDKTSpec(ClientRunSpec, PublicFormat):
    """One FDKT run: models by name, the data, the settings.

    Args:
        llm: the server LLM that writes augmented samples (any tokenizer: only text crosses).
        slm: the clients' task model, trained with LoRA.
        generator: the clients' generator base, DP-trained with a LoRA adapter (fp32).
        embedder: the server's sentence embedder (`fedkt.models.embeddings.load_embedder`).
        client_data: the private labelled rows D_k, one tuple per client.
        eval_data: public evaluation rows every client scores its SLM on; they also tell
            every party the task's format (`format`: its label names, or that it is multiple
            choice) and a multiple-choice task's number of choices (`n_choices`), all public.
        settings: the protocol's settings (DP target, synthesis, curation, augmentation, SLM).
        lora: the adapter of both the generator and the SLM.
        dtype, device: for the SLM and the LLM (None: fedkt.models picks); the generator is
            always loaded in float32 (DP noise and Adam updates need fp32).
        client_cpus, client_gpus: Ray resources per simulated client.
        eval_batch_size, eval_max_new_tokens: client-side scoring.
        response_store: JSONL file of the LLM's answers (resumable); None: in memory.
        predictions_dir: where each client writes its SLM's per-row predictions
            (``slm-client<k>.jsonl``, on the client's own disk); None: not written.
        artefacts_dir: where each client saves its SLM adapter (``clients/<k>/slm``); None:
            not saved.
        reports_dir: where each client writes its own DP and training report
            (``client<k>.json``: eps spent, rows, counts; never sent); None: not written.
        max_message_bytes: larger messages are refused, in both directions.
        canaries: the leakage audit's canary sentences client 0 adds to its generator's
            training rows (0: no audit); its audit goes to its own report, never sent.
            Classification tasks only.
        deployed: a deployment's spec, holding only the rows of the process it runs in (its
            own partition at its index; the server's none); its client draws DP-SGD's noise
            and sampling, and the sampling of texts, from `secrets` (a simulation seeds them
            from ``settings.seed``).
    """

    llm: str
    slm: str
    generator: str
    client_data: tuple[tuple[Example, ...], ...]
    eval_data: tuple[Example, ...]
    settings: FDKTSettings
    lora: LoraSettings
    embedder: str = EMBEDDED_EMBEDDER
    canaries: int = 0
    deployed: bool = False

    def __post_init__(self) -> None:
        check_client_partitions("FDKTSpec", self.client_data, deployed=self.deployed)
        if not self.eval_data:
            raise ConfigError("FDKTSpec.eval_data is empty: give the clients rows to score")
        fmt = self.format  # a generative task is refused here, before any model
        if isinstance(fmt, ItemFormat) and self.canaries:
            raise ConfigError(
                f"FDKTSpec.canaries = {self.canaries}: the canary audit supports classification "
                "tasks only (a canary is a labelled text); set canaries = 0 for a "
                "multiple-choice task"
            )
        if isinstance(fmt, LabelFormat):
            for part in self.client_data:
                for row in part:
                    if row.choices != fmt.labels:
                        raise ConfigError(
                            f"FDKTSpec: the evaluation rows read as classification over "
                            f"{list(fmt.labels)}, but client row {row.id!r} has the choices "
                            f"{list(row.choices)}; give more evaluation rows (a set of one "
                            "row, or rows that share their choices, reads as classification)"
                        )

    @property
    def num_clients(self) -> int:
        return len(self.client_data)

    @property
    def public_rows(self) -> Sequence[Example]:
        return self.eval_data


@dataclass(frozen=True)
class FDKTResult:
    """What the server knows: samples received per node, what it curated and augmented, the
    samples themselves (DP synthetic, all received; augmented, all sent: labelled texts, or
    `McItem`s for a multiple-choice task), and bytes each way. The clients' scores and eps are
    on their own disks."""

    synthetic: dict[int, int]
    curation: dict[str, Any]
    augmentation: dict[str, int]
    sent: int
    acks: dict[int, int]
    bytes_up: dict[int, int]
    bytes_down: dict[int, int]
    seconds: float
    received_samples: tuple[Item, ...] = ()
    sent_samples: tuple[Item, ...] = ()


# ---- client -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ClientModels:
    generator: PeftModel
    generator_tokenizer: PreTrainedTokenizerBase
    fresh_generator: dict[str, torch.Tensor]
    slm: PeftModel
    slm_tokenizer: PreTrainedTokenizerBase
    fresh_slm: dict[str, torch.Tensor]


_CLIENT_MODELS: dict[tuple[Any, ...], _ClientModels] = {}


def make_fdkt_client_app(spec: FDKTSpec, mods: Sequence[Mod] = ()) -> ClientApp:
    """A ClientApp answering FDKT's QUERY and TRAIN messages; ``mods`` wrap both handlers."""
    return query_train_app("FDKT", spec, _answer_query, _answer_train, mods)


def _answer_query(spec: FDKTSpec, msg: Message, context: Context, partition: int) -> Message:
    """Steps 1-3: DP-train a fresh generator adapter, sample per label; send texts + labels
    (a multiple-choice task: sample whole items; send them, formatted)."""
    models = _client_models(spec)
    settings = spec.settings
    fmt = spec.format  # public: read off the evaluation rows, never off the private ones
    load_adapter_state(models.generator, models.fresh_generator)  # every run starts fresh
    canaries = _canaries(spec, partition)
    # A deployment draws DP-SGD's noise and sampling from secrets (None): the server holds the
    # config's seed too and could replay seeded noise. A simulation seeds them (reproducible).
    noise: torch.Generator | None = None
    seed: int | None = None
    if not spec.deployed:
        noise = torch.Generator().manual_seed(derive_seed(settings.seed, partition, 1))
        seed = derive_seed(settings.seed, partition, 2)
    out = client_synthesize(
        models.generator,
        models.generator_tokenizer,
        spec.client_data[partition],
        settings,
        noise=noise,
        seed=seed,
        canaries=canaries,
        fmt=fmt,
        n_choices=spec.n_choices,
    )
    _write_report(spec, partition, "synthesis", out.local_report())
    if canaries:
        audit = client_audit(
            models.generator,
            models.generator_tokenizer,
            canaries,
            out.texts,
            settings,
            seed=derive_seed(settings.seed, partition, 4),
        )
        _write_report(spec, partition, "audit", audit)
    record = _encode([*out.items] if isinstance(fmt, ItemFormat) else _labelled(out), fmt)
    content = RecordDict({keys.SYNTHETIC: record})
    keys.check_message_size(content, spec.max_message_bytes, what=f"samples of {partition}")
    return Message(content, reply_to=msg)


def _answer_train(spec: FDKTSpec, msg: Message, context: Context, partition: int) -> Message:
    """Step 6: train the SLM on private + received samples, score it; ack with a count."""
    models = _client_models(spec)
    fmt = spec.format
    received = _decode(msg.content.config_records[keys.AUGMENTED], fmt)
    load_adapter_state(models.slm, models.fresh_slm)
    train = replace(spec.settings.train, seed=derive_seed(spec.settings.train.seed, partition))
    report = client_train(
        models.slm,
        models.slm_tokenizer,
        spec.client_data[partition],
        received,
        replace(spec.settings, train=train),
        fmt,
    )
    evaluation = evaluate_rows(
        scoring_copy(models.slm),
        models.slm_tokenizer,
        list(spec.eval_data),
        batch_size=spec.eval_batch_size,
        max_new_tokens=spec.eval_max_new_tokens,
    )
    if spec.artefacts_dir is not None:
        models.slm.save_pretrained(
            str(Path(spec.artefacts_dir) / "clients" / str(partition) / "slm")
        )
    if spec.predictions_dir is not None:
        write_jsonl(Path(spec.predictions_dir) / f"slm-client{partition}.jsonl", evaluation.rows)
    _write_report(
        spec,
        partition,
        "train",
        {
            **evaluation.scores,
            "received": len(received),
            "train_steps": report.steps,
            "train_seconds": report.seconds,
            "first_loss": report.first_loss,
            "last_loss": report.last_loss,
        },
    )
    content = RecordDict({keys.RECEIVED: MetricRecord({keys.RECEIVED: len(received)})})
    return Message(content, reply_to=msg)


def _canaries(spec: FDKTSpec, partition: int) -> tuple[Canary, ...]:
    """The audit's canaries: client 0's only (one client suffices to measure leakage)."""
    if partition != 0 or not spec.canaries:
        return ()
    seed = derive_seed(spec.settings.seed, partition, 3)
    return make_canaries(spec.canaries, spec.labels, seed=seed)


def _write_report(spec: FDKTSpec, partition: int, part: str, values: dict[str, Any]) -> None:
    """Add ``values`` under ``part`` to the client's own report file (never sent); the
    synthesis part starts a run's file."""
    write_report(spec.reports_dir, partition, part, values, fresh=part == "synthesis")


def _client_models(spec: FDKTSpec) -> _ClientModels:
    """This process's generator and SLM, each with a LoRA adapter, built on first use."""
    key = (spec.generator, spec.slm, spec.lora, spec.dtype, spec.device, spec.settings.seed)
    if key not in _CLIENT_MODELS:
        generator, generator_tokenizer = load_model_and_tokenizer(
            spec.generator, dtype="float32", device=spec.device
        )
        slm, slm_tokenizer = load_model_and_tokenizer(
            spec.slm, dtype=spec.dtype, device=spec.device
        )
        torch.manual_seed(spec.settings.seed)
        peft_generator = add_lora(generator, spec.lora)
        peft_slm = add_lora(slm, spec.lora)
        _CLIENT_MODELS[key] = _ClientModels(
            generator=peft_generator,
            generator_tokenizer=generator_tokenizer,
            fresh_generator=adapter_state(peft_generator),
            slm=peft_slm,
            slm_tokenizer=slm_tokenizer,
            fresh_slm=adapter_state(peft_slm),
        )
    return _CLIENT_MODELS[key]


def _labelled(out: DPSynthesis) -> list[LabelledText]:
    return [LabelledText(label, text) for label, text in zip(out.labels, out.texts, strict=True)]


def _encode(samples: Sequence[Item], fmt: TaskFormat) -> ConfigRecord:
    """The wire form of ``samples``: TEXTS and LABELS for classification, ITEMS (one
    `format_item` line each) for a multiple-choice task."""
    if isinstance(fmt, ItemFormat):
        return ConfigRecord(
            {keys.ITEMS: [format_item(s) for s in samples if isinstance(s, McItem)]}
        )
    labelled = [s for s in samples if isinstance(s, LabelledText)]
    return ConfigRecord(
        {keys.TEXTS: [s.text for s in labelled], keys.LABELS: [s.label for s in labelled]}
    )


def _decode(record: ConfigRecord, fmt: TaskFormat) -> list[Item]:
    """The samples of a received SYNTHETIC or AUGMENTED record, for the task's kind."""
    if isinstance(fmt, ItemFormat):
        return list(items_from_record(record))
    if keys.ITEMS in record:
        raise FedktError("malformed FDKT message: multiple-choice ITEMS for a classification task")
    return list(_samples(record))


def _samples(record: ConfigRecord) -> list[LabelledText]:
    texts, labels = _strings(record, keys.TEXTS), _strings(record, keys.LABELS)
    if len(texts) != len(labels):
        raise FedktError(f"malformed FDKT message: {len(texts)} texts for {len(labels)} labels")
    return [LabelledText(label, text) for label, text in zip(labels, texts, strict=True)]


def items_from_record(record: ConfigRecord) -> list[McItem]:
    """The items of a multiple-choice FDKT record (`keys.ITEMS`, one `format_item` line
    each), parsed with `parse_item`. Refused with `FedktError`: a record without ITEMS or
    with TEXTS/LABELS (a classification message), a value that is not a list of strings,
    and any line that is not one well-formed item."""
    stray = sorted(key for key in (keys.TEXTS, keys.LABELS) if key in record)
    if stray:
        raise FedktError(
            f"malformed FDKT message: {stray} in a multiple-choice task's record (items "
            f"travel under {keys.ITEMS!r} only)"
        )
    if keys.ITEMS not in record:
        raise FedktError(f"malformed FDKT message: no {keys.ITEMS!r} in a multiple-choice record")
    items = []
    for index, line in enumerate(string_list(record, keys.ITEMS, algorithm="FDKT")):
        item = parse_item(line)
        if item is None:
            raise FedktError(
                f"malformed FDKT message: item {index} is not one well-formed item "
                f"('Question: ... | Choices: A) ... B) ... | Answer: <letter>'): {line[:80]!r}"
            )
        items.append(item)
    return items


def _strings(record: ConfigRecord, key: str) -> list[str]:
    return string_list(record, key, algorithm="FDKT", required=False)


# ---- server -------------------------------------------------------------------------------


def run_fdkt_server(
    grid: Grid, spec: FDKTSpec, backend: Backend | None, embedder: Any
) -> FDKTResult:
    """The server's side of the round trip, top to bottom."""
    start = time.perf_counter()
    nodes = wait_for_nodes(grid, spec.num_clients)
    config = ConfigRecord({keys.ROUND: 0})
    # steps 1-3 run on the clients: collect their DP synthetic samples
    query = [
        Message(RecordDict({keys.CONFIG: config}), dst_node_id=node, message_type=keys.QUERY)
        for node in nodes
    ]
    replies = _by_node(send_and_receive(grid, query), spec)
    bytes_up = {node: size for node, (_, size) in replies.items()}
    fmt = spec.format
    samples = {n: _decode(replies[n][0].content.config_records[keys.SYNTHETIC], fmt) for n in nodes}
    pooled = [item for node in nodes for item in samples[node]]
    # steps 4-5: curate the pool, augment it with the LLM (resumable store)
    store = ResponseStore(None if spec.response_store is None else Path(spec.response_store))
    if isinstance(fmt, ItemFormat):
        outcome = server_augment_items(
            backend,
            embedder,
            [item for item in pooled if isinstance(item, McItem)],
            spec.settings,
            store,
            n_choices=spec.n_choices,
        )
    else:
        labelled = [item for item in pooled if isinstance(item, LabelledText)]
        outcome = server_augment(
            backend,
            embedder,
            [item.text for item in labelled],
            [item.label for item in labelled],
            spec.labels,
            spec.settings,
            store,
        )
    # step 6 runs on the clients: send every client the augmented set
    record = _encode(outcome.items, fmt)
    train, bytes_down = [], {}
    for node in nodes:
        content = RecordDict({keys.AUGMENTED: record, keys.CONFIG: config})
        bytes_down[node] = keys.check_message_size(
            content, spec.max_message_bytes, what=f"augmented samples for node {node}"
        )
        train.append(Message(content, dst_node_id=node, message_type=keys.TRAIN))
    acks = _by_node(send_and_receive(grid, train), spec)
    for node, (_, size) in acks.items():
        bytes_up[node] += size
    received = {n: _count(acks[n][0]) for n in nodes}
    return FDKTResult(
        synthetic={node: len(samples[node]) for node in nodes},
        curation=outcome.curation.as_dict(),
        augmentation=outcome.report,
        sent=len(outcome.items),
        acks=received,
        bytes_up=bytes_up,
        bytes_down=bytes_down,
        seconds=time.perf_counter() - start,
        received_samples=tuple(pooled),
        sent_samples=outcome.items,
    )


def _count(ack: Message) -> int:
    value = ack.content.metric_records[keys.RECEIVED].get(keys.RECEIVED)
    if not isinstance(value, int | float):
        raise FedktError(f"malformed FDKT ack from node {ack.metadata.src_node_id}")
    return int(value)


def _by_node(replies: Any, spec: FDKTSpec) -> dict[int, tuple[Message, int]]:
    return replies_by_node(replies, spec.max_message_bytes, algorithm="FDKT")


# ---- simulation ---------------------------------------------------------------------------


def simulate_fdkt(
    spec: FDKTSpec,
    *,
    client_mods: Sequence[Mod] = (),
    embedder: Any = None,
    backend: Backend | None = None,
) -> FDKTResult:
    """Run ``spec`` with one simulated SuperNode per client partition; the server's LLM (only
    when the settings augment with it) and embedder live in this process. ``embedder`` and
    ``backend`` replace the ones ``spec`` names (tests; a server already holding them)."""

    def server_main(grid: Grid) -> FDKTResult:
        llm = backend
        if llm is None and spec.settings.uses_llm:
            model, tokenizer = load_model_and_tokenizer(
                spec.llm, dtype=spec.dtype, device=spec.device
            )
            llm = make_backend(model, tokenizer, prefer_vllm=True, model_path=None)
        sentence = embedder if embedder is not None else load_embedder(spec.embedder)
        return run_fdkt_server(grid, spec, llm, sentence)

    return simulate(
        server_main,
        make_fdkt_client_app(spec, client_mods),
        num_clients=spec.num_clients,
        client_cpus=spec.client_cpus,
        client_gpus=spec.client_gpus,
    )
