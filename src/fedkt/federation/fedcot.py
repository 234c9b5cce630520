"""FedCoT over Flower's Message API: the client and server apps, and their simulation.

One round trip per run (see `fedkt.algorithms.fedcot` and the wire format in `keys`):
the server sends QUERY, each client answers with its perturbed requests and nothing else;
the server's LLM writes a rationale per request; the server sends them back in a TRAIN
message; each client recovers rationales for its real questions, trains its SLM, scores it
and acknowledges with the number of rationales it received (which the server knows). Its
privacy report (epsilon accounting, leakage audit, noise source, pattern uniqueness), its
rationales' accuracy against its gold labels, its losses, counts and scores are derived from
its private rows: they go to its own report file (``reports_dir``: parts "privacy",
"utility", "train") and log, never into a message. Between the two messages the client keeps
the perturbed questions and choices it sent in ``context.state`` (Flower's per-node state).

The server LLM answers in its chat template where its tokenizer has one
(``settings.chat_template``); the clients' SLMs are scored explain-then-answer on generative
tasks, with the predict prefix on multiple choice (`fedkt.data.cot.evaluation_example`).

Server-side request ids are content hashes of the prompts: a crashed run restarted with the
same response store skips every prompt already answered, and identical prompts from several
clients are generated once.
"""

from __future__ import annotations

import hashlib
import json
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
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedkt.algorithms.fedcot import (
    FedCoTSettings,
    Perturber,
    Recovery,
    client_encode,
    client_recover,
    client_train,
    make_perturber,
    noise_generator,
    privacy_report,
    request_id,
    server_rationales,
)
from fedkt.data import Example
from fedkt.data.cot import evaluation_example, private_fields
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
from fedkt.generation import (
    Backend,
    Request,
    Response,
    ResponseStore,
    TransformersBackend,
    make_backend,
    match_responses,
)
from fedkt.models import (
    LoraSettings,
    adapter_state,
    add_lora,
    load_adapter_state,
    load_model_and_tokenizer,
    scoring_copy,
)
from fedkt.privacy import (
    PerturbationKit,
    build_kit,
    public_importance,
    public_unigram,
)
from fedkt.report import write_jsonl
from fedkt.training import derive_seed

_LOG = logging.getLogger(__name__)
_PENDING = "fedcot-pending"
"""context.state key (client-local): the perturbed questions sent, in request order, and
(under `_CHOICES`, one JSON list per question) their choices as the server saw them."""
_CHOICES = "choices"


@dataclass(frozen=True, kw_only=True)
class FedCoTSpec(ClientRunSpec):
    """One FedCoT run: models by name, the data, the settings.

    Args:
        llm: the server LLM (any tokenizer: only text crosses the boundary).
        slm: the clients' task model, trained with LoRA.
        decoder: the clients' frozen local LM that recovers rationales; its input embeddings
            and tokenizer also make the perturbation kit.
        client_data: the private labelled questions D_k, one tuple per client.
        eval_data: public evaluation rows every client scores its SLM on (predict prefix;
            explain-then-answer for generative tasks: `fedkt.data.cot.evaluation_example`).
        public_texts: public text for the adaptive mechanism's token importance and the
            audit attacker's unigram prior.
        settings: the protocol's settings (strategy, eps, alpha, candidates, noise seed,
            generation, training).
        lora: the SLM's adapter.
        dtype, device: for every model (None: fedkt.models picks).
        client_cpus, client_gpus: Ray resources per simulated client.
        eval_batch_size, eval_max_new_tokens: client-side scoring.
        response_store: JSONL file of the server's answers (resumable); None: in memory.
        predictions_dir: where each client writes its SLM's per-row predictions on the
            evaluation rows (``slm-client<k>.jsonl``, on the client's own disk); None: not
            written.
        artefacts_dir: where each client saves its trained SLM adapter, in peft's format
            (``clients/<partition-id>/slm``, on the client's own disk); None: not saved.
        reports_dir: where each client writes its own report (``client<k>.json``: "privacy",
            "utility" and "train" parts, never sent); None: only logged on the client.
        label_names: a classification task's label names (public): rows whose choices are
            exactly these send them in clear (`fedkt.data.cot.private_fields`); () for
            multiple choice and generative tasks.
        pattern_reference: the task's public questions (e.g. its whole train split), against
            which each client measures how unique the pattern it releases in clear is.
        max_message_bytes: larger messages are refused, in both directions.
        train_slm: False stops each client after step 4 (a utility sweep): it recovers and
            grades the rationales and writes its report, but trains and scores no SLM (no
            predictions, no adapter).
        deployed: a deployment's spec, holding only the rows of the process it runs in: a
            client's own partition at its index (every other part empty), the server's none
            (and it needs no ``eval_data``); `num_clients` still counts every client. False
            (a simulation): every part holds its client's rows.
    """

    llm: str
    slm: str
    decoder: str
    client_data: tuple[tuple[Example, ...], ...]
    eval_data: tuple[Example, ...]
    public_texts: tuple[str, ...]
    settings: FedCoTSettings
    lora: LoraSettings
    label_names: tuple[str, ...] = ()
    pattern_reference: tuple[Example, ...] = ()
    train_slm: bool = True
    deployed: bool = False

    def __post_init__(self) -> None:
        held = check_client_partitions("FedCoTSpec", self.client_data, deployed=self.deployed)
        if not self.eval_data and held:
            raise ConfigError("FedCoTSpec.eval_data is empty: give the clients rows to score")

    @property
    def num_clients(self) -> int:
        return len(self.client_data)


@dataclass(frozen=True)
class FedCoTResult:
    """What the server sees, per client in node order: the number of prompts it sent and the
    number of rationales it acknowledged; bytes each way. The clients' privacy reports,
    counts and scores are in their own report files (``FedCoTSpec.reports_dir``)."""

    requests: tuple[int, ...]
    acknowledged: tuple[int, ...]
    bytes_up: dict[int, int]
    bytes_down: dict[int, int]
    seconds: float


# ---- client -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ClientModels:
    slm: PeftModel
    slm_tokenizer: PreTrainedTokenizerBase
    fresh_adapter: dict[str, torch.Tensor]
    decoder: Backend
    decoder_model: nn.Module
    decoder_tokenizer: PreTrainedTokenizerBase
    kit: PerturbationKit
    importance: torch.Tensor
    log_prior: torch.Tensor

    @property
    def kit_device(self) -> torch.device:
        """Where the kit lives: the noise generator must be on the same device."""
        return self.kit.sets[0].token_ids.device if self.kit.sets else torch.device("cpu")

    def perturber(self, settings: FedCoTSettings) -> Perturber:
        """The mechanism of ``settings`` ("none" still needs the tokenizer: it is recorded;
        "paraphrase" writes with the local decoder LM, the one that recovers rationales)."""
        return make_perturber(
            self.decoder_tokenizer, self.kit, settings, self.importance, model=self.decoder_model
        )


_CLIENT_MODELS: dict[tuple[Any, ...], _ClientModels] = {}


def make_fedcot_client_app(spec: FedCoTSpec, mods: Sequence[Mod] = ()) -> ClientApp:
    """A ClientApp answering FedCoT's QUERY and TRAIN messages; ``mods`` wrap both handlers."""
    return query_train_app("FedCoT", spec, _answer_query, _answer_train, mods)


def _answer_query(spec: FedCoTSpec, msg: Message, context: Context, partition: int) -> Message:
    """Steps 1-2: perturb and wrap this client's questions and send them, nothing else; keep
    the perturbed text and write the privacy report locally."""
    models = _client_models(spec)
    settings = spec.settings
    generator, noise = noise_generator(settings, partition, models.kit_device)
    perturber = models.perturber(settings)
    queries = client_encode(
        spec.client_data[partition], perturber, settings, generator, label_names=spec.label_names
    )
    context.state[_PENDING] = ConfigRecord(
        {
            keys.PROMPTS: list(queries.sent_questions),
            _CHOICES: [json.dumps(list(choices)) for choices in queries.sent_choices],
        }
    )  # local state, never sent
    report = privacy_report(
        queries,
        models.kit,
        settings,
        perturber=perturber,
        log_prior=models.log_prior,
        reference=[private_fields(e, spec.label_names) for e in spec.pattern_reference],
        noise=noise,
    )
    _write_report(spec, partition, "privacy", report)
    record = ConfigRecord(
        {
            keys.IDS: [r.id for r in queries.requests],
            keys.PROMPTS: [r.prompt for r in queries.requests],
        }
    )
    content = RecordDict({keys.REQUESTS: record})
    keys.check_message_size(content, spec.max_message_bytes, what=f"requests of {partition}")
    return Message(content, reply_to=msg)


def _answer_train(spec: FedCoTSpec, msg: Message, context: Context, partition: int) -> Message:
    """Steps 4-5: recover rationales, train the SLM multi-task, score it (step 5 not in a
    utility sweep, ``spec.train_slm`` False); write the outcome (with how often the server's
    and the recovered rationales reach the gold answers) to the client's own report and
    acknowledge with the number of rationales received."""
    models = _client_models(spec)
    examples = spec.client_data[partition]
    pending = context.state.config_records[_PENDING]
    sent = _strings(pending, keys.PROMPTS)
    choices = [tuple(json.loads(c)) for c in _strings(pending, _CHOICES)]
    record = msg.content.config_records[keys.RATIONALES]
    ids, texts = _strings(record, keys.IDS), _strings(record, keys.TEXTS)
    if len(ids) != len(texts):  # malformed: keep what pairs up, match_responses reports the rest
        ids, texts = ids[: len(texts)], texts[: len(ids)]
    received = [Response(i, t) for i, t in zip(ids, texts, strict=True)]
    requests = [Request(request_id(i), "") for i in range(len(examples))]
    responses, bad = match_responses(requests, received)
    recovery = client_recover(
        models.decoder,
        examples,
        sent,
        responses,
        spec.settings,
        choices,
        label_names=spec.label_names,
    )
    _write_report(spec, partition, "utility", recovery.utility())
    if spec.train_slm:
        _train_and_score(spec, models, partition, recovery, malformed=len(bad))
    content = RecordDict({keys.RECEIVED: MetricRecord({keys.RECEIVED: len(received)})})
    return Message(content, reply_to=msg)


def _train_and_score(
    spec: FedCoTSpec, models: _ClientModels, partition: int, recovery: Recovery, malformed: int
) -> None:
    """Step 5 and the client's own scoring: train the SLM multi-task from the fresh adapter,
    score it on the evaluation rows, save it and its predictions, write the "train" report."""
    examples = spec.client_data[partition]
    load_adapter_state(models.slm, models.fresh_adapter)  # every run starts from one adapter
    settings = spec.settings
    train = replace(settings.train, seed=derive_seed(settings.train.seed, partition))
    report = client_train(
        models.slm, models.slm_tokenizer, examples, recovery, replace(settings, train=train)
    )
    evaluation = evaluate_rows(
        scoring_copy(models.slm),
        models.slm_tokenizer,
        [evaluation_example(example) for example in spec.eval_data],
        batch_size=spec.eval_batch_size,
        max_new_tokens=spec.eval_max_new_tokens,
    )
    if spec.artefacts_dir is not None:
        target = Path(spec.artefacts_dir) / "clients" / str(partition) / "slm"
        models.slm.save_pretrained(str(target))
    if spec.predictions_dir is not None:
        write_jsonl(Path(spec.predictions_dir) / f"slm-client{partition}.jsonl", evaluation.rows)
    outcome = {
        **evaluation.scores,
        "rationales": len(recovery.rationales),
        "missing": recovery.missing,
        "rejected": recovery.rejected,
        "malformed": malformed,
        "train_steps": report.steps,
        "train_seconds": report.seconds,
        "first_loss": report.first_loss,
        "last_loss": report.last_loss,
    }
    _write_report(spec, partition, "train", outcome)


def _write_report(spec: FedCoTSpec, partition: int, part: str, values: dict[str, Any]) -> None:
    """Log ``values`` and add them under ``part`` to the client's own report file (never
    sent); the "privacy" part starts a run's file afresh, "utility" and "train" follow."""
    _LOG.info("FedCoT client %d %s: %s", partition, part, values)
    write_report(spec.reports_dir, partition, part, values, fresh=part == "privacy")


def _client_models(spec: FedCoTSpec) -> _ClientModels:
    """This process's SLM (with LoRA), decoder and perturbation kit, built on first use."""
    min_letters, candidates = spec.settings.min_letters, spec.settings.candidates
    key = (
        spec.slm,
        spec.decoder,
        spec.lora,
        spec.dtype,
        spec.device,
        spec.public_texts,
        min_letters,
        candidates,
    )
    if key not in _CLIENT_MODELS:
        slm, slm_tokenizer = load_model_and_tokenizer(
            spec.slm, dtype=spec.dtype, device=spec.device
        )
        decoder, decoder_tokenizer = load_model_and_tokenizer(
            spec.decoder, dtype=spec.dtype, device=spec.device
        )
        embeddings = decoder.get_input_embeddings().weight.detach().float().cpu()  # type: ignore[operator]
        torch.manual_seed(spec.settings.seed)
        peft_slm = add_lora(slm, spec.lora)
        _CLIENT_MODELS[key] = _ClientModels(
            slm=peft_slm,
            slm_tokenizer=slm_tokenizer,
            fresh_adapter=adapter_state(peft_slm),
            decoder=TransformersBackend(decoder, decoder_tokenizer),
            decoder_model=decoder,
            decoder_tokenizer=decoder_tokenizer,
            kit=build_kit(
                decoder_tokenizer, embeddings, min_letters=min_letters, partition=candidates
            ),
            importance=public_importance(decoder_tokenizer, spec.public_texts),
            log_prior=public_unigram(decoder_tokenizer, spec.public_texts),
        )
    return _CLIENT_MODELS[key]


# ---- server -------------------------------------------------------------------------------


def run_fedcot_server(grid: Grid, spec: FedCoTSpec, backend: Backend) -> FedCoTResult:
    """The server's side of the round trip, top to bottom."""
    start = time.perf_counter()
    nodes = wait_for_nodes(grid, spec.num_clients)
    config = ConfigRecord({keys.ROUND: 0})
    # steps 1-2 run on the clients: collect their perturbed requests (nothing else comes up)
    query = [
        Message(RecordDict({keys.CONFIG: config}), dst_node_id=node, message_type=keys.QUERY)
        for node in nodes
    ]
    replies = _by_node(send_and_receive(grid, query), spec)
    bytes_up = {node: size for node, (_, size) in replies.items()}
    requests = {node: _requests(reply) for node, (reply, _) in replies.items()}
    # step 3: one rationale per distinct prompt, keyed by its hash (resumable, deduplicated)
    answers = _rationales(backend, requests, spec)
    # steps 4-5 run on the clients: send each its rationales, collect its acknowledgement
    train, bytes_down = [], {}
    for node in nodes:
        ids = [r.id for r in requests[node]]
        texts = [answers[_prompt_key(r.prompt)] for r in requests[node]]
        content = RecordDict(
            {
                keys.RATIONALES: ConfigRecord({keys.IDS: ids, keys.TEXTS: texts}),
                keys.CONFIG: config,
            }
        )
        bytes_down[node] = keys.check_message_size(
            content, spec.max_message_bytes, what=f"rationales for node {node}"
        )
        train.append(Message(content, dst_node_id=node, message_type=keys.TRAIN))
    results = _by_node(send_and_receive(grid, train), spec)
    for node, (_, size) in results.items():
        bytes_up[node] += size
    return FedCoTResult(
        requests=tuple(len(requests[n]) for n in nodes),
        acknowledged=tuple(_acknowledged(results[n][0]) for n in nodes),
        bytes_up=bytes_up,
        bytes_down=bytes_down,
        seconds=time.perf_counter() - start,
    )


def _acknowledged(reply: Message) -> int:
    """The number of rationales a client says it received (its TRAIN reply's only content)."""
    record = reply.content.metric_records.get(keys.RECEIVED)
    value = None if record is None else record.get(keys.RECEIVED)
    if not isinstance(value, int | float):
        raise FedktError(
            f"node {reply.metadata.src_node_id} acknowledged its rationales without a "
            f"{keys.RECEIVED!r} count; its client must run this fedkt version"
        )
    return int(value)


def _by_node(replies: Any, spec: FedCoTSpec) -> dict[int, tuple[Message, int]]:
    return replies_by_node(replies, spec.max_message_bytes, algorithm="FedCoT")


def _requests(reply: Message) -> list[Request]:
    record = reply.content.config_records[keys.REQUESTS]
    ids, prompts = _strings(record, keys.IDS), _strings(record, keys.PROMPTS)
    if len(ids) != len(prompts):
        raise FedktError(
            f"node {reply.metadata.src_node_id} sent {len(ids)} request ids for "
            f"{len(prompts)} prompts; its client must send parallel lists"
        )
    return [Request(i, p) for i, p in zip(ids, prompts, strict=True)]


def _strings(record: ConfigRecord, key: str) -> list[str]:
    return string_list(record, key, algorithm="FedCoT", required=True)


def _rationales(
    backend: Backend, requests: dict[int, list[Request]], spec: FedCoTSpec
) -> dict[str, str]:
    unique = {_prompt_key(r.prompt): r.prompt for rs in requests.values() for r in rs}
    store = ResponseStore(None if spec.response_store is None else Path(spec.response_store))
    batch = [Request(key, prompt) for key, prompt in unique.items()]
    return server_rationales(backend, batch, spec.settings, store)


def _prompt_key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:24]


# ---- simulation ---------------------------------------------------------------------------


def simulate_fedcot(spec: FedCoTSpec, *, client_mods: Sequence[Mod] = ()) -> FedCoTResult:
    """Run ``spec`` with one simulated SuperNode per client partition; the server LLM lives in
    this process (vLLM when installed and a GPU is present, else transformers), answering in
    its chat template where it has one and ``settings.chat_template`` asks for it."""

    def server_main(grid: Grid) -> FedCoTResult:
        model, tokenizer = load_model_and_tokenizer(spec.llm, dtype=spec.dtype, device=spec.device)
        backend = make_backend(
            model,
            tokenizer,
            prefer_vllm=True,
            model_path=None,
            chat_template=spec.settings.chat_template,
        )
        return run_fedcot_server(grid, spec, backend)

    return simulate(
        server_main,
        make_fedcot_client_app(spec, client_mods),
        num_clients=spec.num_clients,
        client_cpus=spec.client_cpus,
        client_gpus=spec.client_gpus,
    )
