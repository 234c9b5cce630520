"""Answer id-keyed requests with a backend, resumably; match a server's answers to requests.

Answers are keyed by request id end to end. FedCoT's reference code assumed the server's
answers come back in request order and paired them by position; fedkt never does.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from tqdm.auto import tqdm

from fedkt.errors import DataError, ModelError
from fedkt.generation.backends import Backend
from fedkt.generation.settings import GenerationSettings, Request, Response
from fedkt.generation.store import ResponseStore

log = logging.getLogger(__name__)


def generate_responses(
    backend: Backend,
    requests: Sequence[Request],
    settings: GenerationSettings,
    store: ResponseStore | None = None,
    *,
    progress: bool = False,
) -> dict[str, str]:
    """id -> text for every request, generating only the ids `store` has not answered yet.

    The pending requests are ordered longest prompt first and answered `settings.batch_size`
    at a time; each batch is added to `store` (durably, if it has a path) before the next
    starts. Each batch is sampled with a seed derived from `settings.seed` and its ids, so
    a resumed run writes the same texts as an uninterrupted one. The result follows the
    order of `requests`; answers in the store for other ids are ignored.
    """
    _refuse_duplicates(requests)
    store = store if store is not None else ResponseStore(None)
    answered = store.answered()
    pending = [r for r in requests if r.id not in answered]
    pending.sort(key=lambda r: -len(r.prompt))
    with tqdm(total=len(pending), disable=not progress, desc="generate") as bar:
        for start in range(0, len(pending), settings.batch_size):
            batch = pending[start : start + settings.batch_size]
            responses = _answer(backend, batch, settings)
            store.add(responses)
            answered.update((r.id, r.text) for r in responses)
            bar.update(len(batch))
    return {r.id: answered[r.id] for r in requests}


def _refuse_duplicates(requests: Sequence[Request]) -> None:
    counts = Counter(r.id for r in requests)
    repeated = [id_ for id_, n in counts.items() if n > 1]
    if repeated:
        raise DataError(
            f"request ids {repeated[:10]} occur more than once ({len(repeated)} ids in all): "
            "answers are keyed by id, so every request needs its own id"
        )


def _answer(backend: Backend, batch: list[Request], settings: GenerationSettings) -> list[Response]:
    seeded = replace(settings, seed=_batch_seed(settings.seed, [r.id for r in batch]))
    texts = backend.generate([r.prompt for r in batch], seeded)
    if len(texts) != len(batch):
        raise ModelError(
            f"{type(backend).__name__}.generate returned {len(texts)} texts for {len(batch)} "
            "prompts; a backend must return one text per prompt, in order"
        )
    return [Response(r.id, text) for r, text in zip(batch, texts, strict=True)]


def _batch_seed(seed: int, ids: Sequence[str]) -> int:
    """A seed that depends only on `seed` and the batch's ids (not on the run or process),
    so batches draw different randomness and a resumed batch draws the same."""
    digest = hashlib.sha256(repr((seed, list(ids))).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def match_responses(
    requests: Sequence[Request], responses: Sequence[Response]
) -> tuple[dict[str, str], list[str]]:
    """(id -> text of the usable answers, ids that got no usable answer), never raising.

    For a client receiving a server's answers, which may be incomplete or malformed. Every
    request id lands in exactly one of the two; the second also lists, after them, answer
    ids that match no request. An answer is unusable when its text is empty, whitespace or
    not a string. An id answered twice keeps its usable answer when all usable copies agree
    and is unusable when they conflict (there is no telling which is right). Problems are
    logged as one warning; they never cost the usable answers.
    """
    ids = list(dict.fromkeys(r.id for r in requests))
    known = set(ids)
    usable: dict[str, set[str]] = {}
    copies: Counter[str] = Counter()
    unknown: dict[str, None] = {}  # ordered set
    for response in responses:
        id_ = response.id if isinstance(response.id, str) else repr(response.id)
        if id_ not in known:
            unknown[id_] = None
            continue
        copies[id_] += 1
        if isinstance(response.text, str) and response.text.strip():
            usable.setdefault(id_, set()).add(response.text)
    good = {i: next(iter(usable[i])) for i in ids if len(usable.get(i, ())) == 1}
    bad = [i for i in ids if i not in good]
    problems = {
        "missing": [i for i in bad if copies[i] == 0],
        "empty or not text": [i for i in bad if copies[i] > 0 and i not in usable],
        "conflicting duplicates": [i for i in bad if len(usable.get(i, ())) > 1],
        "unknown": list(unknown),
        "duplicated (kept)": [i for i in good if copies[i] > 1],
    }
    _warn(problems, len(bad), len(ids))
    return good, bad + list(unknown)


def _warn(problems: dict[str, list[str]], n_bad: int, n_requests: int) -> None:
    found = {kind: ids for kind, ids in problems.items() if ids}
    if found:
        detail = "; ".join(f"{kind}: {ids[:5]} ({len(ids)})" for kind, ids in found.items())
        log.warning("%d of %d requests got no usable answer. %s", n_bad, n_requests, detail)
