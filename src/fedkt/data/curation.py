"""FDKT step 5: curate the clients' DP synthetic samples on the server, from their embeddings.

Pure numpy / scikit-learn on precomputed sentence embeddings (`fedkt.models.embeddings.embed`);
nothing here loads a model. `curate` applies three filters in order, each to the survivors of
the one before, and then clusters what is left:

1. **near-duplicates** — a sample whose normalised text equals an earlier one, or whose cosine
   similarity to an earlier *kept* sample reaches ``duplicate_threshold``, is dropped (the first
   occurrence is kept; duplicates are looked for across labels too, since the same text under
   two labels is noise either way).
2. **off-domain** — the cosine distance of each sample to a domain centroid, turned into a
   robust z-score ``(d - median) / (1.4826 * MAD)``; a sample with ``z > off_domain_z`` is
   dropped (one-sided: only "too far" is off-domain). The centroid is that of the sample's own
   label, leaving the sample itself out, with z-scores per label; or, when ``reference``
   embeddings are given (e.g. embedded public descriptions of the domain), the centroid of the
   references, with z-scores over all samples. A label with fewer than ``min_group`` samples
   is not judged (too few to estimate a spread).
3. **label mismatch** — a sample is dropped when some other label's centroid is more similar to
   it than its own label's centroid (itself left out) by more than ``label_margin`` in cosine
   similarity. Skipped with a single label (e.g. multiple-choice items, whose "label" is an
   answer letter with no meaning of its own: pass one label for all of them).

Then k-means (k = ceil(kept / samples_per_cluster), so k ≈ N/4 by default as in the FDKT
reference code, seeded) groups the kept samples; `select_demonstrations` and
`sample_across_clusters` draw demonstrations per label from as many different clusters as
possible, for diverse augmentation prompts. An LLM judge over the clusters (the reference
code's filter) can be added on top of these rules; it is not part of this module.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedkt.errors import ConfigError, DataError

NEAR_DUPLICATE = "near_duplicate"
OFF_DOMAIN = "off_domain"
LABEL_MISMATCH = "label_mismatch"
RULES = (NEAR_DUPLICATE, OFF_DOMAIN, LABEL_MISMATCH)
"""The filters in the order `curate` applies them (the keys of `CurationReport.dropped`)."""

_MAD_TO_SIGMA = 1.4826  # MAD * this estimates the standard deviation of normal data
_MEAN_AD_TO_SIGMA = 1.2533  # the same for the mean absolute deviation
_BLOCK = 1024  # rows per similarity block (1024 x N float32 at a time)
_MINIBATCH_FROM = 20_000  # samples from which k-means runs mini-batch (full Lloyd is too slow)


@dataclass(frozen=True)
class CurationSettings:
    """The thresholds of `curate`; defaults suit all-MiniLM-L6-v2 embeddings.

    Args:
        samples_per_cluster: k-means uses ceil(kept / this) clusters (FDKT: ~4).
        duplicate_threshold: cosine similarity at or above which a later sample duplicates an
            earlier kept one (paraphrases of one review typically score 0.8-0.9 with MiniLM,
            copies with a word changed 0.95+).
        off_domain_z: robust z-score of the distance to the domain centroid above which a
            sample is off-domain (3.5 is the usual modified-z outlier cutoff).
        label_margin: how much more similar (cosine) another label's centroid must be than the
            sample's own for a label mismatch; 0 drops every sample nearer another centroid.
        min_group: labels with fewer samples are not judged by the off-domain and label rules.
        seed: seeds k-means.
        run_off_domain, run_label_mismatch, run_near_duplicate: switch a rule off.
    """

    samples_per_cluster: float = 4.0
    duplicate_threshold: float = 0.95
    off_domain_z: float = 3.5
    label_margin: float = 0.05
    min_group: int = 5
    seed: int = 0
    run_near_duplicate: bool = True
    run_off_domain: bool = True
    run_label_mismatch: bool = True

    def __post_init__(self) -> None:
        problems = []
        if not self.samples_per_cluster >= 1:
            problems.append(f"samples_per_cluster={self.samples_per_cluster} (need >= 1)")
        if not -1 <= self.duplicate_threshold <= 1:
            problems.append(f"duplicate_threshold={self.duplicate_threshold} (need in [-1, 1])")
        if not self.off_domain_z > 0:
            problems.append(f"off_domain_z={self.off_domain_z} (need > 0)")
        if not self.label_margin >= 0:
            problems.append(f"label_margin={self.label_margin} (need >= 0)")
        if not (isinstance(self.min_group, int) and self.min_group >= 2):
            problems.append(f"min_group={self.min_group} (need an integer >= 2)")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            problems.append(f"seed={self.seed} (need an integer >= 0)")
        if problems:
            raise ConfigError(f"CurationSettings: {'; '.join(problems)}")


@dataclass(frozen=True)
class CurationReport:
    """How many samples came in, how many each rule dropped, how many are kept."""

    total: int
    dropped: dict[str, int]
    kept: int
    clusters: int

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "total": self.total,
            "kept": self.kept,
            "clusters": self.clusters,
            "dropped": dict(self.dropped),
        }


@dataclass(frozen=True)
class Curated:
    """What `curate` kept, clustered, and why the rest went.

    ``kept`` are indices into the input, ascending; ``clusters[i]`` is the k-means cluster of
    sample ``kept[i]``; ``reasons`` maps every dropped index to the rule that dropped it.
    """

    kept: tuple[int, ...]
    clusters: tuple[int, ...]
    reasons: dict[int, str]
    report: CurationReport
    labels: tuple[Hashable, ...] = field(repr=False, default=())

    def kept_by_label(self) -> dict[Hashable, list[int]]:
        """label -> kept input indices with that label (ascending), labels in first-seen order."""
        grouped: dict[Hashable, list[int]] = {}
        for index in self.kept:
            grouped.setdefault(self.labels[index], []).append(index)
        return grouped


def curate(
    texts: Sequence[str],
    labels: Sequence[Hashable],
    embeddings: np.ndarray,
    settings: CurationSettings | None = None,
    *,
    reference: np.ndarray | None = None,
) -> Curated:
    """Filter synthetic samples (near-duplicates, off-domain, label mismatch) and cluster them.

    ``texts[i]`` with label ``labels[i]`` has embedding ``embeddings[i]`` (any scale: rows are
    normalised here). See the module docstring for the rules, applied in that order.
    """
    settings = settings or CurationSettings()
    vectors = _check_inputs(texts, labels, embeddings)
    alive = np.ones(len(texts), dtype=bool)
    reasons: dict[int, str] = {}

    def drop(indices: np.ndarray, rule: str) -> None:
        for index in indices.tolist():
            alive[index] = False
            reasons[index] = rule

    label_array = _label_codes(labels)
    if settings.run_near_duplicate:
        drop(near_duplicates(texts, vectors, settings.duplicate_threshold), NEAR_DUPLICATE)
    if settings.run_off_domain:
        found = off_domain(vectors, label_array, alive, settings, reference=reference)
        drop(found, OFF_DOMAIN)
    if settings.run_label_mismatch:
        drop(label_mismatches(vectors, label_array, alive, settings), LABEL_MISMATCH)
    kept = np.flatnonzero(alive)
    clusters = cluster(vectors[kept], settings.samples_per_cluster, settings.seed)
    counts = {rule: sum(1 for r in reasons.values() if r == rule) for rule in RULES}
    report = CurationReport(len(texts), counts, len(kept), len(set(clusters.tolist())))
    return Curated(tuple(kept.tolist()), tuple(clusters.tolist()), reasons, report, tuple(labels))


# ---- the rules -------------------------------------------------------------------------------


def near_duplicates(texts: Sequence[str], vectors: np.ndarray, threshold: float) -> np.ndarray:
    """Indices (ascending) that repeat an earlier kept sample: same normalised text, or cosine
    similarity >= ``threshold`` to an earlier sample that is itself kept. ``vectors`` must have
    unit rows. Blockwise, so memory stays O(block x N)."""
    n = len(texts)
    duplicate = np.zeros(n, dtype=bool)
    first_text: dict[str, int] = {}
    for index, text in enumerate(texts):
        key = _normalise_text(text)
        if key in first_text:
            duplicate[index] = True
        else:
            first_text[key] = index
    earlier: dict[int, list[int]] = {}  # index -> earlier indices similar to it
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        similarity = vectors[start:stop] @ vectors[:stop].T
        rows, cols = np.nonzero(similarity >= threshold)
        below = cols < rows + start  # strictly earlier samples only
        for row, col in zip(rows[below].tolist(), cols[below].tolist(), strict=True):
            earlier.setdefault(row + start, []).append(col)
    for index in sorted(earlier):
        if duplicate[index]:
            continue
        neighbours = np.asarray(earlier[index])
        if (~duplicate[neighbours]).any():  # similar to an earlier sample that is kept
            duplicate[index] = True
    return np.flatnonzero(duplicate)


def off_domain(
    vectors: np.ndarray,
    labels: np.ndarray,
    alive: np.ndarray,
    settings: CurationSettings,
    *,
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """Indices (ascending, among ``alive``) whose distance to the domain centroid has a robust
    z-score above ``settings.off_domain_z`` (see the module docstring)."""
    found: list[np.ndarray] = []
    if reference is not None:
        reference = _unit_rows(np.asarray(reference, dtype=np.float32), "reference")
        if reference.shape[1] != vectors.shape[1]:
            raise DataError(
                f"reference embeddings have dimension {reference.shape[1]}, the samples "
                f"{vectors.shape[1]}: embed both with the same model"
            )
        members = np.flatnonzero(alive)
        centroid = _unit(reference.mean(axis=0))
        distance = 1.0 - vectors[members] @ centroid
        found.append(members[robust_z(distance) > settings.off_domain_z])
    else:
        for code in np.unique(labels[alive]):
            members = np.flatnonzero(alive & (labels == code))
            if len(members) < settings.min_group:
                continue
            distance = 1.0 - _leave_one_out_similarity(vectors[members])
            found.append(members[robust_z(distance) > settings.off_domain_z])
    return np.sort(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)


def label_mismatches(
    vectors: np.ndarray, labels: np.ndarray, alive: np.ndarray, settings: CurationSettings
) -> np.ndarray:
    """Indices (ascending, among ``alive``) nearer another label's centroid than their own by
    more than ``settings.label_margin`` (own centroid leaves the sample out)."""
    codes = np.unique(labels[alive]).tolist()
    if len(codes) < 2:
        return np.zeros(0, dtype=np.int64)
    sums = np.stack([vectors[alive & (labels == c)].sum(axis=0) for c in codes])
    sizes = np.array([int((alive & (labels == c)).sum()) for c in codes])
    centroids = np.stack([_unit(s) for s in sums])
    found = []
    for position, code in enumerate(codes):
        if sizes[position] < settings.min_group:
            continue
        members = np.flatnonzero(alive & (labels == code))
        own = _leave_one_out_similarity(vectors[members])
        others = vectors[members] @ np.delete(centroids, position, axis=0).T
        best_other = others.max(axis=1)
        found.append(members[best_other - own > settings.label_margin])
    return np.sort(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)


def robust_z(values: np.ndarray) -> np.ndarray:
    """(v - median) / (1.4826 * MAD), the modified z-score.

    When more than half the values are equal the MAD is 0; the mean absolute deviation from
    the median (x 1.2533, its normal-consistency factor) takes its place, so a lone outlier
    among identical values still stands out. All zeros when every value is equal.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values
    median = np.median(values)
    deviation = np.abs(values - median)
    scale = _MAD_TO_SIGMA * float(np.median(deviation))
    if scale <= 1e-12:
        scale = _MEAN_AD_TO_SIGMA * float(deviation.mean())
    if scale <= 1e-12:
        return np.zeros_like(values)
    return (values - median) / scale


# ---- clustering and demonstrations ------------------------------------------------------------


def cluster(vectors: np.ndarray, samples_per_cluster: float = 4.0, seed: int = 0) -> np.ndarray:
    """k-means cluster id per row, k = ceil(n / samples_per_cluster) (at most n), seeded.

    Centres start at k random rows: k-means++ seeding costs O(n·k·d·log k), 3-6 min for
    n = 10 000, k = 2 500 on this CPU, against ~1-2 s for the random start (the clusters only
    serve to spread demonstrations, so seeding quality matters little). Mini-batch k-means from
    20 000 rows on (each full Lloyd iteration grows as n² with k ≈ n/4). Fewer than two
    distinct rows give one cluster.
    """
    n = len(vectors)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    k = min(n, max(1, math.ceil(n / samples_per_cluster)))
    distinct = len(np.unique(np.round(vectors, 6), axis=0))
    k = min(k, distinct)
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    from sklearn.cluster import KMeans, MiniBatchKMeans  # 1-2 s to import: only when used

    model: KMeans | MiniBatchKMeans
    if n >= _MINIBATCH_FROM:
        model = MiniBatchKMeans(
            n_clusters=k, init="random", random_state=seed, n_init=1, batch_size=4096
        )
    else:
        model = KMeans(n_clusters=k, init="random", random_state=seed, n_init=1, max_iter=100)
    return np.asarray(model.fit_predict(vectors), dtype=np.int64)


def sample_across_clusters(clusters: Sequence[int], k: int, rng: np.random.Generator) -> list[int]:
    """``k`` distinct positions into ``clusters`` (all of them when fewer), drawn to cover as
    many clusters as possible: clusters are visited in a random order, one random unused member
    each, round after round. The order of the result is the drawing order."""
    if k < 0:
        raise ValueError(f"k={k} must be >= 0")
    groups: dict[int, list[int]] = {}
    for position, cluster_id in enumerate(clusters):
        groups.setdefault(int(cluster_id), []).append(position)
    pools = [list(rng.permutation(members).tolist()) for members in groups.values()]
    order = rng.permutation(len(pools)).tolist()
    chosen: list[int] = []
    while len(chosen) < k and any(pools):
        for group in order:
            if pools[group] and len(chosen) < k:
                chosen.append(pools[group].pop())
    return chosen


def select_demonstrations(curated: Curated, k: int, seed: int = 0) -> dict[Hashable, list[int]]:
    """label -> up to ``k`` kept input indices, from different clusters where possible, seeded."""
    rng = np.random.default_rng(seed)
    cluster_of = dict(zip(curated.kept, curated.clusters, strict=True))
    chosen: dict[Hashable, list[int]] = {}
    for label, indices in curated.kept_by_label().items():
        positions = sample_across_clusters([cluster_of[i] for i in indices], k, rng)
        chosen[label] = [indices[p] for p in positions]
    return chosen


def pools_by_label(
    curated: Curated, items: Sequence[Any]
) -> tuple[dict[Hashable, list[Any]], dict[Hashable, list[int]]]:
    """(label -> kept items, label -> their clusters), aligned, for `build_prompts`."""
    cluster_of = dict(zip(curated.kept, curated.clusters, strict=True))
    grouped = curated.kept_by_label()
    return (
        {label: [items[i] for i in indices] for label, indices in grouped.items()},
        {label: [cluster_of[i] for i in indices] for label, indices in grouped.items()},
    )


# ---- helpers -----------------------------------------------------------------------------------


def _check_inputs(
    texts: Sequence[str], labels: Sequence[Hashable], embeddings: np.ndarray
) -> np.ndarray:
    if isinstance(texts, str):
        raise DataError("curate takes a sequence of texts, not one string")
    array = np.asarray(embeddings, dtype=np.float32)
    if array.ndim != 2 or len(array) != len(texts) or len(labels) != len(texts):
        raise DataError(
            f"curate needs one label and one embedding row per text: {len(texts)} texts, "
            f"{len(labels)} labels, embeddings of shape {array.shape}"
        )
    if not np.isfinite(array).all():
        raise DataError("embeddings contain NaN or infinite values")
    return _unit_rows(array, "embeddings")


def _unit_rows(array: np.ndarray, what: str) -> np.ndarray:
    if array.ndim != 2 or (len(array) == 0 and what == "reference"):
        raise DataError(f"{what} must be a non-empty 2-D array (n, dim), got {array.shape}")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.divide(array, norms, out=np.zeros_like(array), where=norms > 0)


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _leave_one_out_similarity(members: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row to the mean of the other rows (unit rows in)."""
    total = members.sum(axis=0)
    others = total[None, :] - members
    norms = np.linalg.norm(others, axis=1)
    dots = np.einsum("ij,ij->i", members, others)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def _label_codes(labels: Sequence[Hashable]) -> np.ndarray:
    codes: dict[Hashable, int] = {}
    return np.array([codes.setdefault(label, len(codes)) for label in labels], dtype=np.int64)


def _normalise_text(text: str) -> str:
    return " ".join(text.casefold().split())
