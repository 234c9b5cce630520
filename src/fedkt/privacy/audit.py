"""Leakage audit beside epsilon: what an attacker recovers from what the client sent.

Inversion attacker: holds the same public embeddings and candidate sets, knows eps and the
strategy, and guesses each perturbed token by MAP, under a uniform prior (maximum likelihood)
or a public prior π (e.g. the unigram model of public text, `public_unigram`):

    x_hat = argmax_x [ ln π(x) + e * u(x, y) / (2 Δu) - ln Z_e(x) ],
    Z_e(x) = Σ_{y'} exp(e * u(x, y') / (2 Δu)).

Prior-only baseline (`prior_only_recovery`): the same attacker without looking at the output,
guessing the most likely token of the position's candidate set under π. What it recovers is
what the public prior and the released pattern give away anyway; the MAP attacker's lift over
it is what the mechanism's output adds. Report the three side by side.

Plain nearest-neighbour inversion (argmax_x u(x, y)) always answers y itself; the ln Z_e(x) term
is what lets the MAP attacker undo the drift towards tokens in crowded embedding regions. Ties
(e.g. eps = 0, where every x is equally likely) are broken towards y, so at eps = 0 recovery is
1/k in expectation for any input. For AEM a real attacker does not see the per-token budgets
(they depend on the private tokens); by default it scores every token at the mean budget,
which is eps by construction (the prompt total is tokens x eps). With ``aem_oracle=True`` it is
given each token's realised budget instead: an upper bound, and much dearer on a CPU (one ln Z
pass per budget on the grid rather than one per eps). ln Z_e is computed exactly at up to
`budget_grid` budgets and interpolated linearly in e between them; ln Z_e is convex in e with
second derivative Var(u)/(2 Δu)^2 <= 1/16 (cosine), so the interpolation error is at most
h^2 / 128 nats for grid spacing h.
Cost: one (k x k) similarity pass per candidate set plus one (k x k) logsumexp per grid budget,
in row blocks of `chunk_elements`: trivial on a GPU (move the kit with `kit.to("cuda")`), but on
one CPU thread SmolLM2's 30k-word set takes ~35 s for EM and ~1-2 min for AEM.

Answer leak: the fraction of prompts whose gold answer string occurs in the perturbed private
text (only that: the public template around it, an instruction and a worked example, would
match some answers by chance).

Pattern uniqueness (`pattern_uniqueness`): what a prompt shows in clear beside its perturbed
tokens (fedkt.privacy.candidates), and how often that alone singles a prompt out among the
task's public questions.
"""

from __future__ import annotations

import math
import re
import weakref
from collections import Counter
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from fedkt.errors import ConfigError
from fedkt.privacy.candidates import CandidateSet, PerturbationKit
from fedkt.privacy.mechanisms import COSINE_SENSITIVITY, check_eps
from fedkt.privacy.perturb import DEFAULT_CHUNK_ELEMENTS, PerturbedText

AUDIT_STRATEGIES = ("em", "aem", "none")


def inversion_recovery(
    perturbed: Sequence[PerturbedText],
    kit: PerturbationKit,
    eps: float,
    strategy: str,
    *,
    sensitivity: float = COSINE_SENSITIVITY,
    budget_grid: int = 8,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    aem_oracle: bool = False,
    log_prior: torch.Tensor | None = None,
) -> dict[str, float]:
    """MAP-inversion recovery rates of a batch perturbed with `kit` at `eps` by `strategy`.

    ``log_prior``: the attacker's (vocab,) log prior over tokens (`public_unigram`); None:
    uniform (maximum likelihood). Returns {"protected_recovered": share of perturbed tokens
    with x_hat == x (1.0 when none was perturbed), "all_recovered": share of all tokens
    recovered (passed-through tokens count as recovered), "tokens_perturbed", "tokens_total"}.
    """
    eps = check_eps(eps, "eps")
    _check_strategy(perturbed, strategy)
    sources = _flat([p.source_ids for p in perturbed])
    outputs = _flat([p.output_ids for p in perturbed])
    if sources.shape != outputs.shape:
        raise ConfigError("inversion_recovery: source and output ids differ in length.")
    size = int(max(sources.max(), outputs.max())) + 1 if sources.numel() else 1
    set_of, row_of = kit.lookup(size)
    sources, outputs = sources.to(set_of.device), outputs.to(set_of.device)
    set_index = set_of[sources]
    _check_same_kit(perturbed, set_index, set_of[outputs])
    budgets = _attacker_budgets(perturbed, set_index >= 0, eps, strategy, aem_oracle)
    guesses = outputs.clone()
    for index, candidates in enumerate(kit.sets):
        positions = (set_index == index).nonzero().squeeze(1)
        if positions.numel():
            rows = map_inversion(
                candidates,
                row_of[outputs[positions]],
                budgets[positions],
                sensitivity=sensitivity,
                budget_grid=budget_grid,
                chunk_elements=chunk_elements,
                log_prior=_set_prior(log_prior, candidates),
            )
            guesses[positions] = candidates.token_ids[rows]
    recovered = guesses == sources
    protected = recovered[(set_index >= 0) & (strategy != "none")]
    return {
        "protected_recovered": float(protected.float().mean()) if protected.numel() else 1.0,
        "all_recovered": float(recovered.float().mean()) if recovered.numel() else 1.0,
        "tokens_perturbed": float(protected.numel()),
        "tokens_total": float(recovered.numel()),
    }


def map_inversion(
    candidates: CandidateSet,
    output_rows: torch.Tensor,
    budgets: torch.Tensor,
    *,
    sensitivity: float = COSINE_SENSITIVITY,
    budget_grid: int = 8,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    log_prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """(n,) MAP input rows for n observed output rows of one set (module docstring).

    ``log_prior``: (k,) log prior of the set's rows (None: uniform). Ties go to the output.
    """
    device = candidates.unit_embeddings.device
    output_rows = output_rows.to(device)
    budgets = budgets.to(device=device, dtype=torch.float64)
    guesses = output_rows.clone()
    finite = torch.isfinite(budgets).nonzero().squeeze(1)  # inf budget: the output is the input
    if finite.numel() == 0:
        return guesses
    grid = _budget_grid(budgets[finite], budget_grid)
    log_z = _log_partition(candidates, grid, sensitivity, chunk_elements)  # (G, k)
    step = max(1, chunk_elements // candidates.size)
    for start in range(0, finite.numel(), step):
        chunk = finite[start : start + step]
        rows, e = output_rows[chunk], budgets[chunk]
        score = candidates.similarity(rows) * (e / (2.0 * sensitivity)).float()[:, None]
        score -= _interpolate(log_z, grid, e)
        if log_prior is not None:
            score += log_prior.to(device=device, dtype=score.dtype)[None, :]
        best = score.max(dim=-1)
        own = score.gather(1, rows[:, None]).squeeze(1)
        tied = own >= best.values - 1e-5 * (1.0 + best.values.abs())
        guesses[chunk] = torch.where(tied, rows, best.indices)
    return guesses


def prior_only_recovery(
    perturbed: Sequence[PerturbedText], kit: PerturbationKit, log_prior: torch.Tensor
) -> dict[str, float]:
    """The prior-only baseline: share of perturbed tokens equal to the most likely token of
    their candidate set under ``log_prior`` ((vocab,), e.g. `public_unigram`), a guess made
    without looking at the output (1.0 when nothing was perturbed)."""
    sources = _flat([p.source_ids for p in perturbed])
    strategies = {p.record.strategy for p in perturbed}
    size = int(sources.max()) + 1 if sources.numel() else 1
    set_of, _ = kit.lookup(size)
    set_index = set_of[sources.to(set_of.device)]
    guess_of_set = torch.tensor(
        [int(s.token_ids[_prior_rows(log_prior, s).argmax()]) for s in kit.sets] or [-1],
        dtype=torch.long,
        device=set_of.device,
    )
    mask = set_index >= 0
    if strategies == {"none"} or not bool(mask.any()):
        return {"prior_only_recovered": 1.0}
    hits = guess_of_set[set_index[mask]] == sources.to(set_of.device)[mask]
    return {"prior_only_recovered": float(hits.float().mean())}


Pattern = tuple[tuple[int, ...], ...]
"""What a prompt shows in clear, per private field: each token's id where it passes through,
``-1 - s`` where it is perturbed within candidate set s (only its set is visible)."""


def pattern_uniqueness(
    tokenizer: PreTrainedTokenizerBase,
    kit: PerturbationKit | None,
    prompts: Sequence[Sequence[str]],
    reference: Sequence[Sequence[str]],
    *,
    pad_to: int = 1,
    pad_id: int | None = None,
) -> dict[str, float]:
    """How identifying the pattern a prompt releases in clear is, against public prompts.

    ``prompts`` and ``reference`` hold each prompt's private fields (e.g. question and
    choices); ``kit`` None means nothing is perturbed (the text itself is the pattern);
    ``pad_to`` and ``pad_id`` pad each field as `TextPerturber` does (its ``pad_to`` and
    ``pad_id``), so only the padded length shows. Over
    the distinct field tuples of ``reference`` and ``prompts`` together (a prompt that is also
    a reference row counts once), returns {"pattern_unique_rate": share of ``prompts`` whose
    pattern no other text shares, "pattern_unique_public": the same share among the reference
    rows alone (a property of the task and the kit, from public data only),
    "pattern_reference_rows": distinct reference rows}. 0.0 for an empty side.
    """
    set_of = None if kit is None else kit.lookup(len(tokenizer))[0].cpu()
    pad = (pad_to, pad_id) if pad_to > 1 and pad_id is not None else None
    own = _patterns(tokenizer, set_of, prompts, pad)
    public = _patterns(tokenizer, set_of, reference, pad)
    together = Counter({**public, **own}.values())
    alone = Counter(public.values())
    keys = [tuple(p) for p in prompts]
    unique = sum(together[own[key]] == 1 for key in keys)
    unique_public = sum(alone[pattern] == 1 for pattern in public.values())
    return {
        "pattern_unique_rate": unique / len(keys) if keys else 0.0,
        "pattern_unique_public": unique_public / len(public) if public else 0.0,
        "pattern_reference_rows": float(len(public)),
    }


def _patterns(
    tokenizer: PreTrainedTokenizerBase,
    set_of: torch.Tensor | None,
    rows: Sequence[Sequence[str]],
    pad: tuple[int, int] | None,
) -> dict[tuple[str, ...], Pattern]:
    """{distinct field tuple: its released pattern}."""
    distinct = list(dict.fromkeys(tuple(row) for row in rows))
    flat = [field for row in distinct for field in row]
    encoded = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    fields: list[tuple[int, ...]] = []
    for ids in encoded:
        if pad is not None:
            ids = ids + [pad[1]] * (-len(ids) % pad[0])
        tokens = torch.tensor(ids, dtype=torch.long)
        if set_of is not None and tokens.numel():
            inside = tokens < set_of.shape[0]
            sets = torch.full_like(tokens, -1)
            sets[inside] = set_of[tokens[inside]]
            tokens = torch.where(sets >= 0, -1 - sets, tokens)
        fields.append(tuple(tokens.tolist()))
    out, at = {}, 0
    for row in distinct:
        out[row] = tuple(fields[at : at + len(row)])
        at += len(row)
    return out


def answer_leak_rate(sent_texts: Sequence[str], gold_answers: Sequence[str]) -> float:
    """Share of prompts whose gold answer occurs in ``sent_texts``: pass the perturbed private
    text of each prompt only, not the public template around it (module docstring).

    Case-insensitive, whole words only (no word character right before or after, so "4" does
    not match "14" and "$5" still matches), any whitespace run in the answer matching any
    whitespace run. Prompts with an empty answer are skipped; none left gives 0.0.
    """
    if len(sent_texts) != len(gold_answers):
        raise ValueError(
            f"answer_leak_rate: {len(sent_texts)} texts but {len(gold_answers)} answers."
        )
    hits, counted = 0, 0
    for text, answer in zip(sent_texts, gold_answers, strict=True):
        words = answer.split()
        if not words:
            continue
        counted += 1
        pattern = r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)"
        hits += re.search(pattern, text, flags=re.IGNORECASE) is not None
    return hits / counted if counted else 0.0


_LATTICE_STEPS_PER_DOUBLING = 4


def _budget_grid(budgets: torch.Tensor, points: int) -> torch.Tensor:
    """The distinct budgets when there are at most `points`, else the points of a fixed
    geometric lattice (ratio 2^(1/4)) spanning them.

    A fixed lattice, not one spread over this batch's own range, means that the batches of
    several clients at one eps share grid points, so `_log_partition`'s cache serves them all.
    Linear interpolation over a ratio-1.19 spacing errs by well under 0.01 nats.
    """
    distinct = torch.unique(budgets)
    if distinct.numel() <= max(points, 1):
        return distinct
    low, high = float(distinct[0]), float(distinct[-1])
    if low <= 0.0:  # budgets of zero make every input equally likely: keep the exact point
        return torch.linspace(low, high, points, dtype=torch.float64, device=budgets.device)
    steps = _LATTICE_STEPS_PER_DOUBLING
    first, last = math.floor(math.log2(low) * steps), math.ceil(math.log2(high) * steps)
    lattice = [2.0 ** (j / steps) for j in range(first, last + 1)]
    return torch.tensor(lattice, dtype=torch.float64, device=budgets.device)


_LOG_Z_CACHE: dict[tuple[int, float, float], tuple[weakref.ref[torch.Tensor], torch.Tensor]] = {}
"""ln Z rows already computed, per (embedding tensor, budget, sensitivity): the audit of every
client at one eps needs the same ones. Entries whose embeddings were freed are never served."""


def _log_partition(
    candidates: CandidateSet, grid: torch.Tensor, sensitivity: float, chunk_elements: int
) -> torch.Tensor:
    """(G, k) ln Z_e(x) for every budget e of the grid and every input x of the set."""
    device = candidates.unit_embeddings.device
    k = candidates.size
    step = max(1, chunk_elements // k)
    budgets = grid.tolist()
    log_z = torch.empty(len(budgets), k, dtype=torch.float32, device=device)
    missing = []
    for g, budget in enumerate(budgets):
        cached = _cached_log_z(candidates, budget, sensitivity)
        if cached is None:
            missing.append(g)
        else:
            log_z[g] = cached
    if not missing:
        return log_z
    scales = [budgets[g] / (2.0 * sensitivity) for g in missing]
    for start in range(0, k, step):
        sim = candidates.similarity(torch.arange(start, min(start + step, k), device=device))
        for g, scale in zip(missing, scales, strict=True):
            log_z[g, start : start + sim.shape[0]] = torch.logsumexp(sim * scale, dim=-1)
    embeddings = candidates.unit_embeddings
    for g in missing:
        key = (id(embeddings), budgets[g], sensitivity)
        _LOG_Z_CACHE[key] = (weakref.ref(embeddings), log_z[g].clone())
    return log_z


def _cached_log_z(
    candidates: CandidateSet, budget: float, sensitivity: float
) -> torch.Tensor | None:
    entry = _LOG_Z_CACHE.get((id(candidates.unit_embeddings), budget, sensitivity))
    if entry is None or entry[0]() is not candidates.unit_embeddings:
        return None
    return entry[1]


def _interpolate(log_z: torch.Tensor, grid: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """(n, k) ln Z at budgets e, linear between the grid points around each (exact on them)."""
    if grid.numel() == 1:
        return log_z[0].expand(e.shape[0], -1)
    high = torch.searchsorted(grid, e).clamp(1, grid.numel() - 1)
    low = high - 1
    weight = ((e - grid[low]) / (grid[high] - grid[low])).clamp(0.0, 1.0).float()[:, None]
    return (1.0 - weight) * log_z[low] + weight * log_z[high]


def _attacker_budgets(
    perturbed: Sequence[PerturbedText],
    mask: torch.Tensor,
    eps: float,
    strategy: str,
    aem_oracle: bool,
) -> torch.Tensor:
    """Per-token budget the attacker scores with: eps (EM, and AEM's mean budget), the
    realised one (AEM with the oracle), inf (none)."""
    budgets = torch.full(mask.shape, math.inf, dtype=torch.float64, device=mask.device)
    if strategy == "em" or (strategy == "aem" and not aem_oracle):
        budgets[mask] = eps
    elif strategy == "aem":
        realised = [e for p in perturbed for e in p.record.eps_per_token]
        budgets[mask] = torch.tensor(realised, dtype=torch.float64, device=mask.device)
    return budgets


def _check_strategy(perturbed: Sequence[PerturbedText], strategy: str) -> None:
    if strategy not in AUDIT_STRATEGIES:
        raise ConfigError(f"strategy must be one of {AUDIT_STRATEGIES}, got {strategy!r}.")
    found = sorted({p.record.strategy for p in perturbed} - {strategy})
    if found:
        raise ConfigError(
            f"inversion_recovery was told strategy {strategy!r} but records say {found}; "
            "audit each strategy's texts separately."
        )


def _check_same_kit(
    perturbed: Sequence[PerturbedText], source_sets: torch.Tensor, output_sets: torch.Tensor
) -> None:
    recorded = sum(p.record.tokens_perturbed for p in perturbed)
    strategies = {p.record.strategy for p in perturbed}
    consistent = bool((source_sets == output_sets).all())
    if strategies != {"none"} and (not consistent or recorded != int((source_sets >= 0).sum())):
        raise ConfigError(
            "inversion_recovery: the texts were not perturbed with this kit (token classes or "
            "perturbed-token counts differ); pass the kit the TextPerturber used."
        )


def _set_prior(log_prior: torch.Tensor | None, candidates: CandidateSet) -> torch.Tensor | None:
    """(k,) the prior's log-probabilities of a set's tokens (None stays None)."""
    return None if log_prior is None else _prior_rows(log_prior, candidates)


def _prior_rows(log_prior: torch.Tensor, candidates: CandidateSet) -> torch.Tensor:
    if log_prior.dim() != 1 or log_prior.shape[0] <= int(candidates.token_ids.max()):
        raise ConfigError(
            "log_prior must be a (vocab,) tensor covering every candidate token; build it with "
            "public_unigram(tokenizer, public_texts)."
        )
    return log_prior.to(candidates.token_ids.device)[candidates.token_ids]


def _flat(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    return torch.tensor([t for row in rows for t in row], dtype=torch.long)
