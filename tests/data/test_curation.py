"""FDKT server curation on hand-made embeddings: each rule on a case whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedkt.data.curation import (
    LABEL_MISMATCH,
    NEAR_DUPLICATE,
    OFF_DOMAIN,
    CurationSettings,
    cluster,
    curate,
    near_duplicates,
    pools_by_label,
    robust_z,
    sample_across_clusters,
    select_demonstrations,
)
from fedkt.errors import ConfigError, DataError


def at_angle(degrees: float, dim: int = 2) -> np.ndarray:
    """A unit vector in the plane of the first two axes."""
    vector = np.zeros(dim)
    vector[0], vector[1] = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return vector


def blob(axis: int, n: int, dim: int = 32, spread: float = 0.1, seed: int = 0) -> np.ndarray:
    """n unit-ish vectors around basis vector `axis` with varied, small offsets."""
    rng = np.random.default_rng(seed + axis)
    base = np.zeros((n, dim))
    base[:, axis] = 1.0
    noise = rng.normal(scale=spread, size=(n, dim))
    noise[:, axis] = 0.0
    return base + noise


def only(rule: str) -> CurationSettings:
    return CurationSettings(
        run_near_duplicate=rule == NEAR_DUPLICATE,
        run_off_domain=rule == OFF_DOMAIN,
        run_label_mismatch=rule == LABEL_MISMATCH,
    )


# ---- near-duplicates ---------------------------------------------------------------------------


def test_near_duplicate_keeps_the_first_and_compares_with_kept_samples_only() -> None:
    # 0°, 10°, 20°: cos 10° = 0.985 >= 0.95, cos 20° = 0.940 < 0.95. Sample 1 duplicates
    # sample 0 and is dropped; sample 2 is similar only to the dropped sample 1, so it stays.
    vectors = np.stack([at_angle(0), at_angle(10), at_angle(20), at_angle(90)])
    texts = ["a", "b", "c", "d"]
    assert near_duplicates(texts, vectors, 0.95).tolist() == [1]
    result = curate(texts, ["x"] * 4, vectors, only(NEAR_DUPLICATE))
    assert result.kept == (0, 2, 3)
    assert result.reasons == {1: NEAR_DUPLICATE}
    assert result.report.dropped == {NEAR_DUPLICATE: 1, OFF_DOMAIN: 0, LABEL_MISMATCH: 0}


def test_same_normalised_text_is_a_duplicate_whatever_the_embedding() -> None:
    vectors = np.stack([at_angle(0), at_angle(90), at_angle(45)])
    texts = ["Great  Food!", "great food!", "something else"]
    assert near_duplicates(texts, vectors, 0.99).tolist() == [1]


def test_duplicates_are_found_across_blocks() -> None:
    rng = np.random.default_rng(0)
    n = 2100  # more than one 1024-row block
    vectors = rng.normal(size=(n, 64))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[2000] = vectors[5]  # a copy far from its original, in a later block
    texts = [f"t{i}" for i in range(n)]
    assert near_duplicates(texts, vectors, 0.95).tolist() == [2000]


# ---- off-domain ----------------------------------------------------------------------------------


def test_robust_z_closed_form() -> None:
    # median 3, |deviations| 2 1 0 1 97 -> MAD 1
    z = robust_z(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
    assert z == pytest.approx([-2 / 1.4826, -1 / 1.4826, 0.0, 1 / 1.4826, 97 / 1.4826])
    # more than half equal: MAD 0, the mean absolute deviation scales instead
    z = robust_z(np.array([1.0, 1.0, 1.0, 5.0]))
    assert z == pytest.approx([0, 0, 0, 4 / (1.2533 * 1.0)])
    assert robust_z(np.array([2.0, 2.0])).tolist() == [0.0, 0.0]


def test_off_domain_drops_the_far_sample_of_a_label() -> None:
    vectors = np.vstack([blob(0, 12), np.eye(32)[3]])  # 12 near axis 0, one along axis 3
    result = curate([f"t{i}" for i in range(13)], ["x"] * 13, vectors, only(OFF_DOMAIN))
    assert result.reasons == {12: OFF_DOMAIN}
    assert len(result.kept) == 12


def test_off_domain_against_reference_embeddings_ignores_labels() -> None:
    vectors = np.vstack([blob(0, 10), np.eye(32)[4]])
    labels = ["a", "b"] * 5 + ["a"]
    reference = np.stack([np.eye(32)[0], np.eye(32)[0] + 0.05])
    result = curate(
        [f"t{i}" for i in range(11)], labels, vectors, only(OFF_DOMAIN), reference=reference
    )
    assert result.reasons == {10: OFF_DOMAIN}


def test_small_labels_are_not_judged_off_domain() -> None:
    vectors = np.vstack([blob(0, 3), np.eye(32)[3]])  # 4 samples < min_group 5
    result = curate(["a", "b", "c", "d"], ["x"] * 4, vectors, only(OFF_DOMAIN))
    assert result.reasons == {}


def test_reference_of_another_dimension_is_refused() -> None:
    with pytest.raises(DataError, match="dimension"):
        curate(["a"], ["x"], np.ones((1, 4)), reference=np.ones((2, 3)))


# ---- label mismatch ------------------------------------------------------------------------------


def test_label_mismatch_drops_a_sample_sitting_in_the_other_label() -> None:
    vectors = np.vstack([blob(0, 8), blob(1, 8), np.eye(32)[1]])
    labels = ["pos"] * 8 + ["neg"] * 8 + ["pos"]  # the last 'pos' sits among the 'neg's
    result = curate([f"t{i}" for i in range(17)], labels, vectors, only(LABEL_MISMATCH))
    assert result.reasons == {16: LABEL_MISMATCH}


def test_label_margin_spares_borderline_samples() -> None:
    # halfway between the two centroids: nearer 'neg' by a little, within a 0.3 margin
    between = np.eye(32)[0] * 0.9 + np.eye(32)[1] * 1.0
    vectors = np.vstack([blob(0, 8), blob(1, 8), between])
    labels = ["pos"] * 8 + ["neg"] * 8 + ["pos"]
    strict = CurationSettings(label_margin=0.0, run_near_duplicate=False, run_off_domain=False)
    loose = CurationSettings(label_margin=0.3, run_near_duplicate=False, run_off_domain=False)
    texts = [f"t{i}" for i in range(17)]
    assert curate(texts, labels, vectors, strict).reasons == {16: LABEL_MISMATCH}
    assert curate(texts, labels, vectors, loose).reasons == {}


def test_one_label_skips_the_label_rule() -> None:
    vectors = np.vstack([blob(0, 8), blob(1, 8)])
    result = curate([f"t{i}" for i in range(16)], ["A"] * 16, vectors, only(LABEL_MISMATCH))
    assert result.reasons == {}


# ---- the whole pass, clusters and demonstrations -------------------------------------------------


def test_curate_reports_each_rule_and_clusters_the_rest() -> None:
    spread = 0.15  # similarities ~0.6 within a blob: under the 0.95 duplicate threshold
    eye = np.eye(32)
    vectors = np.vstack(
        [blob(0, 10, spread=spread), blob(1, 10, spread=spread), eye[1] + 0.3 * eye[3], eye[5]]
    )
    vectors[5] = vectors[0]  # a copy
    labels = ["pos"] * 10 + ["neg"] * 10 + ["pos", "neg"]
    texts = [f"t{i}" for i in range(22)]
    # the domain spans both labels' axes; axis 5 lies outside it
    result = curate(texts, labels, vectors, reference=np.stack([eye[0], eye[1]]))
    assert result.reasons == {5: NEAR_DUPLICATE, 21: OFF_DOMAIN, 20: LABEL_MISMATCH}
    report = result.report
    assert report.total == 22
    assert report.dropped == {NEAR_DUPLICATE: 1, OFF_DOMAIN: 1, LABEL_MISMATCH: 1}
    assert report.kept == len(result.kept) == 19
    assert report.clusters == math.ceil(19 / 4) == len(set(result.clusters))
    assert len(result.clusters) == len(result.kept)
    assert report.as_dict()["dropped"][NEAR_DUPLICATE] == 1
    assert set(result.kept_by_label()) == {"pos", "neg"}


def test_off_domain_is_checked_per_label_without_reference() -> None:
    # without references a 'pos' sample inside 'neg' is far from the 'pos' centroid: the
    # off-domain rule, which runs first, takes it
    eye = np.eye(32)
    vectors = np.vstack([blob(0, 10, spread=0.15), blob(1, 10, spread=0.15), eye[1]])
    labels = ["pos"] * 10 + ["neg"] * 10 + ["pos"]
    result = curate([f"t{i}" for i in range(21)], labels, vectors)
    assert result.reasons == {20: OFF_DOMAIN}


def test_cluster_is_seeded_and_separates_blobs() -> None:
    vectors = np.vstack([blob(0, 10), blob(1, 10)])
    first = cluster(vectors, samples_per_cluster=10, seed=3)
    assert first.tolist() == cluster(vectors, samples_per_cluster=10, seed=3).tolist()
    assert len(set(first[:10])) == len(set(first[10:])) == 1 and first[0] != first[10]
    assert len(set(cluster(vectors, 4.0).tolist())) == 5  # k = ceil(20 / 4)
    assert cluster(np.ones((3, 4)), 1.0).tolist() == [0, 0, 0]  # one distinct row
    assert cluster(np.zeros((0, 4))).tolist() == []


def test_sample_across_clusters_covers_clusters_first() -> None:
    clusters = [0, 0, 0, 1, 1, 2]
    picked = sample_across_clusters(clusters, 3, np.random.default_rng(0))
    assert sorted(clusters[p] for p in picked) == [0, 1, 2]
    everything = sample_across_clusters(clusters, 10, np.random.default_rng(0))
    assert sorted(everything) == list(range(6))
    again = sample_across_clusters(clusters, 3, np.random.default_rng(0))
    assert again == picked


def test_select_demonstrations_per_label_from_distinct_clusters() -> None:
    vectors = np.vstack([blob(0, 8, spread=0.4), blob(1, 8, spread=0.4)])
    labels = ["pos"] * 8 + ["neg"] * 8
    result = curate([f"t{i}" for i in range(16)], labels, vectors, CurationSettings(seed=1))
    demos = select_demonstrations(result, k=2, seed=0)
    assert set(demos) == {"pos", "neg"}
    cluster_of = dict(zip(result.kept, result.clusters, strict=True))
    for label, indices in demos.items():
        assert len(indices) == 2
        assert all(labels[i] == label for i in indices)
        clusters_of_label = {cluster_of[i] for i in result.kept if labels[i] == label}
        if len(clusters_of_label) >= 2:
            assert len({cluster_of[i] for i in indices}) == 2
    assert demos == select_demonstrations(result, k=2, seed=0)
    pools, clusters = pools_by_label(result, [f"t{i}" for i in range(16)])
    assert {label: len(pool) for label, pool in pools.items()} == {
        label: len(ids) for label, ids in clusters.items()
    }


def test_inputs_are_checked() -> None:
    with pytest.raises(DataError, match="one label and one embedding"):
        curate(["a", "b"], ["x"], np.ones((2, 3)))
    with pytest.raises(DataError, match="NaN"):
        curate(["a"], ["x"], np.full((1, 3), np.nan))
    with pytest.raises(ConfigError, match="samples_per_cluster"):
        CurationSettings(samples_per_cluster=0.5)
    empty = curate([], [], np.zeros((0, 3)))
    assert empty.kept == () and empty.report.kept == 0
