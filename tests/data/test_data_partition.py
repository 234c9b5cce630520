"""Partitions are disjoint, complete, deterministic and sized as documented."""

from __future__ import annotations

from collections import Counter

import pytest

from fedkt.data import split_dev, split_dirichlet, split_fedcollm, split_iid
from fedkt.errors import ConfigError, DataError

ITEMS = [f"row{i}" for i in range(103)]


def assert_exact_cover(parts: list[list[str]], items: list[str]) -> None:
    flat = [item for part in parts for item in part]
    assert sorted(flat) == sorted(items)  # complete, and no item twice
    position = {item: index for index, item in enumerate(items)}
    assert all(part == sorted(part, key=position.__getitem__) for part in parts)  # order kept


def test_fedcollm_cuts_five_parts_and_keeps_the_last_public() -> None:
    clients, public = split_fedcollm(ITEMS)
    assert [len(c) for c in clients] == [21, 21, 21, 20]  # 103 = 5 * 20 + 3 extra to clients
    assert len(public) == 20
    assert_exact_cover([*clients, public], ITEMS)
    assert split_fedcollm(ITEMS) == (clients, public)
    assert split_fedcollm(ITEMS, seed=124) != (clients, public)


def test_iid_sizes_differ_by_at_most_one_and_depend_only_on_the_seed() -> None:
    parts = split_iid(ITEMS, 7, seed=3)
    assert [len(p) for p in parts] == [15, 15, 15, 15, 15, 14, 14]
    assert_exact_cover(parts, ITEMS)
    assert split_iid(list(ITEMS), 7, seed=3) == parts
    assert split_iid(ITEMS, 7, seed=4) != parts


def label_of(item: str) -> int:
    return int(item[3:]) % 4


def label_counts(parts: list[list[str]]) -> list[Counter[int]]:
    return [Counter(label_of(item) for item in part) for part in parts]


def test_dirichlet_large_alpha_is_close_to_balanced() -> None:
    items = [f"row{i}" for i in range(4000)]
    parts = split_dirichlet(items, 4, alpha=1000.0, label_of=label_of, seed=0)
    assert_exact_cover(parts, items)
    for counts in label_counts(parts):
        assert all(200 <= counts[label] <= 300 for label in range(4))  # 250 each if exact


def test_dirichlet_small_alpha_is_skewed_yet_leaves_no_client_empty() -> None:
    items = [f"row{i}" for i in range(4000)]
    parts = split_dirichlet(items, 10, alpha=0.01, label_of=label_of, seed=0)
    assert_exact_cover(parts, items)
    assert all(parts)
    # Each label lands (almost) whole on one client: the top client holds >= 95 % of it.
    for label in range(4):
        top = max(counts[label] for counts in label_counts(parts))
        assert top >= 950
    assert split_dirichlet(items, 10, alpha=0.01, label_of=label_of, seed=0) == parts


def test_bad_sizes_and_alpha_are_refused() -> None:
    with pytest.raises(DataError, match="cannot split 3 items into 4 non-empty parts"):
        split_iid(ITEMS[:3], 4, seed=0)
    with pytest.raises(ConfigError, match="n_parts=1"):
        split_fedcollm(ITEMS, n_parts=1)
    with pytest.raises(ConfigError, match="alpha=0"):
        split_dirichlet(ITEMS, 2, alpha=0, label_of=label_of, seed=0)


def test_dev_split_is_seeded_disjoint_and_keeps_the_rest_in_order() -> None:
    items = list(range(100))
    dev, rest = split_dev(items, 10, seed=3)
    assert len(dev) == 10 and sorted(dev + rest) == items
    assert rest == [i for i in items if i not in set(dev)]  # original order
    assert split_dev(items, 10, seed=3) == (dev, rest)
    assert split_dev(items, 10, seed=4)[0] != dev
    assert split_dev(items, 0) == ([], items)
    with pytest.raises(ConfigError, match=r"data\.dev_rows"):
        split_dev(items, 100)
