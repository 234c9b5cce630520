"""Cut a dataset into client shards: FedCoLLM's equal parts, IID, and label-skewed Dirichlet.

All three work on any item type, are deterministic for a given seed, and return disjoint parts
that together hold every item exactly once. Each part keeps the items' original order, so a
part is a plain subset of the split and easy to inspect.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from itertools import accumulate, pairwise
from typing import TypeVar

import numpy as np

from fedkt.errors import ConfigError, DataError

T = TypeVar("T")


def split_fedcollm(
    items: Sequence[T], n_parts: int = 5, seed: int = 123
) -> tuple[list[list[T]], list[T]]:
    """FedCoLLM's split (arXiv 2411.11707): `n_parts` equal random parts, the last one public.

    Returns ``(client_parts, public_part)`` with ``n_parts - 1`` client parts. When the size is
    not divisible by `n_parts`, the first ``len(items) % n_parts`` client parts hold one extra
    item each, so the public part is never the larger one.
    """
    if n_parts < 2:
        raise ConfigError(f"n_parts={n_parts}: FedCoLLM needs at least 2 (clients + public)")
    parts = split_iid(items, n_parts, seed)
    return parts[:-1], parts[-1]


def split_iid(items: Sequence[T], n_clients: int, seed: int) -> list[list[T]]:
    """Shuffle with ``random.Random(seed)`` and cut into `n_clients` parts whose sizes differ
    by at most one (the first ``len(items) % n_clients`` parts get the extra item)."""
    _check_sizes(len(items), n_clients)
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    base, extra = divmod(len(items), n_clients)
    bounds = accumulate((base + (c < extra) for c in range(n_clients)), initial=0)
    return [_pick(items, order[lo:hi]) for lo, hi in pairwise(bounds)]


def split_dirichlet(
    items: Sequence[T],
    n_clients: int,
    alpha: float,
    label_of: Callable[[T], Hashable],
    seed: int,
) -> list[list[T]]:
    """Label skew: each label's items are spread over clients by a Dirichlet(alpha) draw.

    The usual non-IID benchmark split (Hsu et al. 2019, arXiv 1909.06335): for every label, in
    order of first appearance, shuffle its items and cut them at the cumulative proportions of
    ``p ~ Dirichlet(alpha * 1)``, all drawn from ``numpy.random.default_rng(seed)``. Large
    alpha gives near-equal label mixes; small alpha gives each client few labels. With a tiny
    alpha each label lands almost whole on one client, so some clients would get nothing:
    every empty client then takes one item from the largest client, so all clients can train
    and the skew is otherwise kept. Fewer items than clients raises `DataError`.
    """
    if not alpha > 0:
        raise ConfigError(f"alpha={alpha}: the Dirichlet concentration must be > 0")
    _check_sizes(len(items), n_clients)
    rng = np.random.default_rng(seed)
    by_label: dict[Hashable, list[int]] = {}
    for index, item in enumerate(items):
        by_label.setdefault(label_of(item), []).append(index)
    shards: list[list[int]] = [[] for _ in range(n_clients)]
    for indices in by_label.values():
        shuffled = rng.permutation(indices)
        shares = rng.dirichlet(np.full(n_clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(shuffled)).astype(int)
        for shard, piece in zip(shards, np.split(shuffled, cuts), strict=True):
            shard.extend(piece.tolist())
    _fill_empty(shards)
    return [_pick(items, shard) for shard in shards]


def _check_sizes(n_items: int, n_parts: int) -> None:
    if n_parts < 1:
        raise ConfigError(f"n_clients={n_parts}: need at least one client")
    if n_items < n_parts:
        raise DataError(
            f"cannot split {n_items} items into {n_parts} non-empty parts; "
            "use fewer clients or more data"
        )


def _fill_empty(shards: list[list[int]]) -> None:
    """Give each empty shard one index from the currently largest shard (which keeps >= 1:
    with at least as many items as shards and one shard empty, the largest holds >= 2)."""
    for shard in shards:
        if not shard:
            shard.append(max(shards, key=len).pop())


def _pick(items: Sequence[T], indices: Sequence[int]) -> list[T]:
    return [items[i] for i in sorted(indices)]


def split_dev(items: Sequence[T], size: int, seed: int = 0) -> tuple[list[T], list[T]]:
    """``(dev, rest)``: `size` items drawn at random (``random.Random(seed)``) as a dev split
    for tuning, and every other item in its original order.

    Carve it from the whole train split before anything else is cut from it: the dev rows are
    then the same whatever the train limit, and disjoint from every client's and the public
    part, so settings chosen on them leave validation for reporting.
    """
    if not 0 <= size < len(items):
        raise ConfigError(
            f"a dev split of {size} rows needs 0 <= size < {len(items)} (the train rows); "
            "lower data.dev_rows."
        )
    chosen = set(random.Random(seed).sample(range(len(items)), size))
    dev = [items[i] for i in sorted(chosen)]
    return dev, [item for i, item in enumerate(items) if i not in chosen]
