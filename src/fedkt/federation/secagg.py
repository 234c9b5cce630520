"""Secure aggregation of FedCoLLM's adapter uploads with Flower's SecAgg+ (the server learns
only the sum of the clients' adapters, never one of them).

Bell, Bonawitz, Gascon, Lepoint, Raykova, "Secure Single-Server Aggregation with (Poly)
Logarithmic Overhead", CCS 2020 (SecAgg+); Bonawitz et al., CCS 2017 (SecAgg).

Which Flower pieces, and why:

- Client: Flower's own ``secaggplus_mod``, unchanged (`secure_aggregation_mod` only routes
  SecAgg messages to it and stamps the round). It does the cryptography: two key pairs per
  round, Shamir shares of the mask seed and of the masking key, encrypted to each neighbour,
  stochastic quantisation, the private mask plus one pairwise mask per neighbour, and the
  shares for unmasking. It reads the update from a legacy ``FitRes`` record, so the adapter
  goes to it as one (fp32 NumPy arrays; fedkt's bf16 codec has no NumPy form) and the mod
  clears those arrays before the reply leaves.
- Server: `secure_mean` runs the four stages of Flower's ``SecAggPlusWorkflow`` over
  `fedkt.federation.messaging.send_and_receive` with Flower's primitives (``combine_shares``,
  key agreement, ``pseudo_rand_gen``, ``dequantize``). The workflow itself needs a legacy
  Strategy context and weights by example counts; fedkt's loop is the Message API and
  FedCoLLM's mean is uniform. Here each stage also refuses replies of another round, and the
  unmasking only removes the pairwise masks of survivors that really added them (the
  workflow's loop runs over every neighbour of a dropped node, dropped ones included).

Uniform mean: each client gives the mod weight 1 (``max_weight`` 1), so the mod masks
quantise(theta_k) and the weight's own slot sums to the number of survivors; the server
divides by it. Weighted: weight n_k (over ``max_weight``), so the sum is sum n_k theta_k and
the weight slot sum n_k. Quantisation: values are clipped to [-clipping_range,
clipping_range] and rounded stochastically to quantization_range levels, an error of at most
2 clipping_range / quantization_range per entry (~4e-6 with Flower's defaults, below bf16's
resolution for LoRA weights); stochastic rounding draws from NumPy's global generator, so a
resumed run repeats an uninterrupted one within that error, not bit for bit.

Dropouts: a client that fails after sharing its keys is unmasked from its neighbours' shares
of its masking key, as long as every client kept at least ``threshold`` live neighbours.
Only partition ids and example counts travel in clear, as without secure aggregation.

No torch at the top: the mod runs in Flower's per-message ClientApp process, which forwards
the training to `fedkt client`'s worker and must not pay torch's import four times a round
(the adapter reaches SecAgg+ as NumPy, `record_to_float32`); only the server's `_like` needs it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, bytes_to_ndarray, ndarrays_to_parameters
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_extract,
    get_parameters_shape,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.compat.common import recorddict_compat as compat
from flwr.serverapp import Grid
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from fedkt.errors import ConfigError, FedktError
from fedkt.federation import keys
from fedkt.federation.boundary import partition_of
from fedkt.federation.codec import Adapter, payload_bytes, record_to_float32
from fedkt.federation.messaging import ShortRound, answered, send_and_receive

if TYPE_CHECKING:
    import torch

_LOG = logging.getLogger(__name__)

SECAGG = RECORD_KEY_CONFIGS
"""ConfigRecord of every SecAgg+ message: Flower's stage and its payload."""

# ---- settings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SecAggSettings:
    """SecAgg+ parameters (Flower's ``SecAggPlusWorkflow`` names and defaults).

    Args:
        num_shares: shares of each client's secrets, one per neighbour including itself
            (0: every client, i.e. SecAgg); more tolerate more dropouts at more cost.
        threshold: shares needed to rebuild a secret (0: a majority of ``num_shares``, at
            least 2). Fewer than ``threshold`` colluding neighbours learn nothing; a client
            must keep ``threshold`` live neighbours for the round to unmask.
        clipping_range: adapter entries are clipped to [-c, c] before quantisation.
        quantization_range: quantisation levels over [-c, c].
        modulus_range: masks are drawn mod this power of two; must exceed clients x levels.
        max_weight: the largest example count under "weighted" aggregation (unused for
            uniform, where every weight is 1).
    """

    num_shares: int = 0
    threshold: int = 0
    clipping_range: float = 8.0
    quantization_range: int = 2**22
    modulus_range: int = 2**32
    max_weight: float = 1000.0

    def __post_init__(self) -> None:
        ok = (
            self.num_shares >= 0
            and self.threshold >= 0
            and self.clipping_range > 0
            and 0 < self.quantization_range < self.modulus_range <= 2**32
            and bin(self.modulus_range).count("1") == 1
            and self.max_weight > 0
        )
        if not ok:
            raise ConfigError(
                f"SecAggSettings: out of range: {self}. Need num_shares, threshold >= 0 (0: "
                "automatic), clipping_range, max_weight > 0, 0 < quantization_range < "
                "modulus_range <= 2**32 and modulus_range a power of two."
            )

    def shares_and_threshold(self, clients: int) -> tuple[int, int]:
        """(shares, threshold) for ``clients`` live clients, as Flower's workflow settles
        them: an odd share count below the client count, a threshold below the shares."""
        shares = min(self.num_shares or clients, clients)
        if shares < clients and shares % 2 == 0:
            shares += 1  # a ring neighbourhood is symmetric: self plus k on each side
        threshold = self.threshold or max(2, shares // 2 + 1)
        if not 2 <= threshold <= shares:
            raise ConfigError(
                f"secure aggregation: threshold {threshold} must be in [2, {shares}] (the "
                f"shares for {clients} clients); lower secagg_threshold or add clients."
            )
        return shares, threshold


# ---- client -------------------------------------------------------------------------------


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A client mod: SecAgg+ messages go through Flower's ``secaggplus_mod`` (the handler
    runs in its third stage, its adapter handed over as a legacy FitRes), every other message
    passes untouched. Replies are stamped with the round and partition; a failure becomes an
    error reply that quotes nothing (the details stay in this client's log)."""
    if SECAGG not in msg.content.config_records:
        return call_next(msg, context)
    partition = partition_of(context)
    config = msg.content.config_records[keys.CONFIG]
    try:
        reply = secaggplus_mod(msg, context, partial(_as_fitres, call_next, config))
    except Exception:  # the client's boundary, as in `boundary.answer_privately`
        _LOG.exception("secure aggregation failed in the client of partition %d", partition)
        reason = f"secure aggregation failed in the client of partition {partition}"
        error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason)
        return Message(error, reply_to=msg)
    counts = reply.content.metric_records.get(keys.COUNTS) or MetricRecord()
    counts[keys.PARTITION], counts[keys.ROUND] = partition, int(cast(int, config[keys.ROUND]))
    reply.content.metric_records[keys.COUNTS] = counts
    return reply


def _as_fitres(
    call_next: ClientAppCallable, config: ConfigRecord, msg: Message, context: Context
) -> Message:
    """The handler's reply as the legacy FitRes ``secaggplus_mod`` masks: the adapter in fp32
    and the weight (1, or n_k when weighted); the fedkt COUNTS ride along."""
    reply = call_next(msg, context)
    if reply.has_error():
        raise FedktError(reply.error.reason)  # already free of data (`answer_privately`)
    arrays = record_to_float32(reply.content.array_records[keys.ADAPTER])
    counts = reply.content.metric_records[keys.COUNTS]
    weight = int(cast(int, counts[keys.N_EXAMPLES])) if config.get(keys.WEIGHTED) else 1
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), weight, {})
    content = compat.fitres_to_recorddict(fitres, keep_input=False)
    content.metric_records[keys.COUNTS] = counts
    return Message(content, reply_to=msg)


# ---- server -------------------------------------------------------------------------------


@dataclass
class SecureRound:
    """What one secure round leaves on the server: the mean, who is in it, the traffic."""

    mean: Adapter
    counts: dict[int, tuple[int, int]]
    """node id -> (partition, n_examples) of every client inside the sum."""
    missing: dict[int, str]
    """node id -> why it is not in the sum."""
    bytes_down: dict[int, int] = field(default_factory=dict)
    bytes_up: dict[int, int] = field(default_factory=dict)


@dataclass
class _Run:
    """One round's protocol state: a SecAggPlusWorkflow's, less the legacy strategy."""

    grid: Grid
    round_index: int
    config: ConfigRecord
    timeout: float | None
    sink: Callable[[RecordDict], None] | None = None
    neighbours: dict[int, set[int]] = field(default_factory=dict)
    public_keys: dict[int, list[bytes]] = field(default_factory=dict)
    missing: dict[int, str] = field(default_factory=dict)
    bytes_down: dict[int, int] = field(default_factory=dict)
    bytes_up: dict[int, int] = field(default_factory=dict)

    def exchange(self, contents: dict[int, RecordDict]) -> dict[int, Message]:
        """One stage: a message per node; the replies of this round, by node."""
        messages = []
        for node, content in contents.items():
            content[keys.CONFIG] = self.config
            self.bytes_down[node] = self.bytes_down.get(node, 0) + payload_bytes(content)
            messages.append(
                Message(
                    content,
                    dst_node_id=node,
                    message_type=keys.TRAIN,
                    group_id=str(self.round_index),
                )
            )
        replies = list(send_and_receive(self.grid, messages, timeout=self.timeout))
        kept, dropped = answered(replies, self.round_index, algorithm="FedCoLLM SecAgg+")
        for reply in kept:
            node = reply.metadata.src_node_id
            self.bytes_up[node] = self.bytes_up.get(node, 0) + payload_bytes(reply.content)
            if self.sink is not None:
                self.sink(reply.content)
        by_node = {
            reply.metadata.src_node_id: reply
            for reply in kept
            if reply.metadata.src_node_id in contents
        }
        for node in contents.keys() - by_node.keys():
            self.missing.setdefault(node, dropped.get(node, "no reply before the timeout"))
        return by_node


def secure_mean(
    grid: Grid,
    nodes: list[int],
    broadcast: RecordDict,
    round_index: int,
    settings: SecAggSettings,
    *,
    layout: Adapter,
    weighted: bool,
    min_clients: int,
    timeout: float | None = None,
    sink: Callable[[RecordDict], None] | None = None,
) -> SecureRound:
    """One round of SecAgg+ with ``nodes``: the clients train on ``broadcast`` in the third
    stage and the server gets back only the (uniform or weighted) mean of their adapters, in
    ``layout``'s keys, shapes and dtypes. ``sink`` sees every reply's content as the server
    receives it (audits). Raises `ShortRound` when fewer than ``min_clients`` (at least 2:
    one client's "sum" would be its update) end up in the sum or the masks cannot be removed.
    """
    shares, threshold = settings.shares_and_threshold(len(nodes))
    config = ConfigRecord({keys.ROUND: round_index, keys.WEIGHTED: weighted})
    run = _Run(grid, round_index, config, timeout, sink)
    need = max(min_clients, threshold, 2)
    run.neighbours = _ring(nodes, shares)
    live = _setup(run, nodes, settings, shares, threshold)
    _check_live(run, live, threshold, need, "key setup")
    sharing, forwards = _share_keys(run, live)
    _check_live(run, sharing, threshold, need, "key sharing")
    masked, counts = _collect(run, sharing, forwards, broadcast)
    _check_live(run, set(masked), threshold, need, "masked upload")
    total = parameters_mod(_sum(list(masked.values())), settings.modulus_range)
    unmasked = _unmask(run, sharing, set(masked), total, settings, threshold)
    mean = _dequantized_mean(unmasked, len(masked), settings)
    pairs = zip(layout.items(), mean, strict=True)
    adapter = {key: _like(array, reference) for (key, reference), array in pairs}
    return SecureRound(adapter, counts, run.missing, run.bytes_down, run.bytes_up)


def _like(array: Any, reference: torch.Tensor) -> torch.Tensor:
    """``array`` as a tensor of ``reference``'s shape and dtype."""
    import torch

    tensor = torch.from_numpy(np.asarray(array, dtype=np.float32))
    return tensor.reshape(reference.shape).to(reference.dtype)


def _ring(nodes: list[int], shares: int) -> dict[int, set[int]]:
    """SecAgg+'s neighbourhoods: a random ring, each node with ``shares // 2`` on each side
    (and itself); the order is drawn from a secure source, as no one may pick neighbours."""
    order = list(nodes)
    secrets.SystemRandom().shuffle(order)
    half = shares // 2
    return {
        node: {order[(i + offset) % len(order)] for offset in range(-half, half + 1)}
        for i, node in enumerate(order)
    }


def _check_live(run: _Run, live: set[int], threshold: int, need: int, stage: str) -> None:
    """Refuse to go on when too few clients are left, or one has too few live neighbours."""
    short = [node for node in live if len(run.neighbours[node] & live) < threshold]
    if len(live) < need or short:
        lost = "; ".join(f"node {n}: {why}" for n, why in sorted(run.missing.items()))
        raise ShortRound(
            f"secure aggregation of round {run.round_index} stopped at the {stage}: "
            f"{len(live)} clients left, need {need} and {threshold} live neighbours each "
            f"(lost: {lost or 'none'})"
        )


def _setup(
    run: _Run, nodes: list[int], settings: SecAggSettings, shares: int, threshold: int
) -> set[int]:
    """Stage 0: send the parameters, collect every client's two public keys."""
    params = {
        Key.STAGE: Stage.SETUP,
        Key.SAMPLE_NUMBER: len(nodes),
        Key.SHARE_NUMBER: shares,
        Key.THRESHOLD: threshold,
        Key.CLIPPING_RANGE: float(settings.clipping_range),
        Key.TARGET_RANGE: settings.quantization_range,
        Key.MOD_RANGE: settings.modulus_range,
        Key.MAX_WEIGHT: float(settings.max_weight) if run.config[keys.WEIGHTED] else 1.0,
    }
    replies = run.exchange({n: RecordDict({SECAGG: ConfigRecord(params)}) for n in nodes})  # type: ignore[arg-type]
    for node, reply in replies.items():
        record = reply.content.config_records[SECAGG]
        run.public_keys[node] = [
            cast(bytes, record[Key.PUBLIC_KEY_1]),
            cast(bytes, record[Key.PUBLIC_KEY_2]),
        ]
    return set(replies)


def _share_keys(
    run: _Run, live: set[int]
) -> tuple[set[int], dict[int, tuple[list[int], list[bytes]]]]:
    """Stage 1: give each client its live neighbours' public keys; collect the encrypted
    shares and route each to its recipient (sources and ciphertexts per destination)."""
    contents = {}
    for node in live:
        record = ConfigRecord({str(n): run.public_keys[n] for n in run.neighbours[node] & live})
        record[Key.STAGE] = Stage.SHARE_KEYS
        contents[node] = RecordDict({SECAGG: record})
    replies = run.exchange(contents)
    sharing = set(replies)
    forwards: dict[int, tuple[list[int], list[bytes]]] = {n: ([], []) for n in sharing}
    for src, reply in replies.items():
        record = reply.content.config_records[SECAGG]
        for dst, ciphertext in zip(
            cast(list[int], record[Key.DESTINATION_LIST]),
            cast(list[bytes], record[Key.CIPHERTEXT_LIST]),
            strict=True,
        ):
            if dst in forwards:
                forwards[dst][0].append(src)
                forwards[dst][1].append(ciphertext)
    return sharing, forwards


def _collect(
    run: _Run,
    sharing: set[int],
    forwards: dict[int, tuple[list[int], list[bytes]]],
    broadcast: RecordDict,
) -> tuple[dict[int, list[Any]], dict[int, tuple[int, int]]]:
    """Stage 2: the clients train on ``broadcast`` and upload masked, quantised vectors."""
    contents = {}
    for node in sharing:
        srcs, ciphertexts = forwards[node]
        stage = {
            Key.STAGE: Stage.COLLECT_MASKED_VECTORS,
            Key.SOURCE_LIST: srcs,
            Key.CIPHERTEXT_LIST: ciphertexts,
        }
        contents[node] = RecordDict({**broadcast, SECAGG: ConfigRecord(stage)})  # type: ignore[arg-type]
    masked, counts = {}, {}
    for node, reply in run.exchange(contents).items():
        record = reply.content.config_records[SECAGG]
        masked[node] = [
            bytes_to_ndarray(b) for b in cast(list[bytes], record[Key.MASKED_PARAMETERS])
        ]
        numbers = reply.content.metric_records[keys.COUNTS]
        counts[node] = (
            int(cast(int, numbers[keys.PARTITION])),
            int(cast(int, numbers[keys.N_EXAMPLES])),
        )
    return masked, counts


def _unmask(
    run: _Run,
    sharing: set[int],
    survivors: set[int],
    total: list[Any],
    settings: SecAggSettings,
    threshold: int,
) -> list[Any]:
    """Stage 3: collect the shares of each survivor's mask seed and each dropped client's
    masking key, and remove those masks from ``total``."""
    dead = sharing - survivors
    contents = {}
    for node in survivors:
        stage = {
            Key.STAGE: Stage.UNMASK,
            Key.ACTIVE_NODE_ID_LIST: sorted(run.neighbours[node] & survivors),
            Key.DEAD_NODE_ID_LIST: sorted(run.neighbours[node] & dead),
        }
        contents[node] = RecordDict({SECAGG: ConfigRecord(stage)})  # type: ignore[arg-type]
    collected: dict[int, list[bytes]] = {node: [] for node in sharing}
    for reply in run.exchange(contents).values():
        record = reply.content.config_records[SECAGG]
        owners, shares = (
            cast(list[int], record[Key.NODE_ID_LIST]),
            cast(list[bytes], record[Key.SHARE_LIST]),
        )
        for owner, share in zip(owners, shares, strict=True):
            collected[owner].append(share)
    shapes = get_parameters_shape(total)
    for owner, owner_shares in sorted(collected.items()):
        if len(owner_shares) < threshold:
            raise ShortRound(
                f"secure aggregation of round {run.round_index}: {len(owner_shares)} shares "
                f"of node {owner}'s secret came back, {threshold} are needed to unmask"
            )
        secret = combine_shares(owner_shares)
        if owner in survivors:  # its private mask
            total = parameters_subtraction(
                total, pseudo_rand_gen(secret, settings.modulus_range, shapes)
            )
            continue
        for other in sorted(
            run.neighbours[owner] & survivors
        ):  # only survivors added its pair masks
            key = generate_shared_key(
                bytes_to_private_key(secret), bytes_to_public_key(run.public_keys[other][0])
            )
            pair = pseudo_rand_gen(key, settings.modulus_range, shapes)
            combine = parameters_addition if owner > other else parameters_subtraction
            total = combine(total, pair)
    return parameters_mod(total, settings.modulus_range)


def _dequantized_mean(total: list[Any], survivors: int, settings: SecAggSettings) -> list[Any]:
    """The sum of the quantised vectors back in floats, divided by the summed weights (the
    first slot, ``factor_combine``'s): each client's clip offset is removed once."""
    q_total, arrays = factor_extract(total)
    summed = dequantize(arrays, settings.clipping_range, settings.quantization_range)
    offset = -(survivors - 1) * settings.clipping_range
    return [(array + offset) * (settings.quantization_range / q_total) for array in summed]


def _sum(vectors: Iterable[list[Any]]) -> list[Any]:
    vectors = list(vectors)
    total = vectors[0]
    for vector in vectors[1:]:
        total = parameters_addition(total, vector)
    return total
