"""The leakage audit's MAP attacker for k-RR, CusText and metric DP (EM and AEM: `audit`).

The attacker of `fedkt.privacy.audit` (same public embeddings and candidate sets, knows eps
and the strategy) guesses each perturbed token by x_hat = argmax_x ln π(x) + ln P(y | x), with
the mechanism's own likelihood:

- ``krr``: flat over every input but y, so x_hat = y unless the prior's favourite beats it
  by more than ln(P(keep) / P(other)) (`fedkt.privacy.krr.krr_inversion`);
- ``custext``: only the members of y's cluster (released) can be the input; EM or k-RR
  likelihood inside it (`fedkt.privacy.custext.custext_inversion`);
- ``metric``: -eps_d d(x, y) / 2 - ln Z(x) over the whole set, ln Z from one k x k pass
  (`fedkt.privacy.metric.metric_inversion`).

``log_prior`` None is the uniform prior (maximum likelihood). The prior-only baseline is
`fedkt.privacy.audit.prior_only_recovery`; for custext pass it `cluster_kit(kit, size)`, so
that the baseline, like the attacker, knows each token's cluster.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedkt.errors import ConfigError
from fedkt.privacy.candidates import PerturbationKit
from fedkt.privacy.custext import DEFAULT_CLUSTER_SIZE, Inner, custext_inversion, kit_clusters
from fedkt.privacy.krr import krr_inversion
from fedkt.privacy.mechanisms import check_eps
from fedkt.privacy.metric import metric_inversion
from fedkt.privacy.perturb import DEFAULT_CHUNK_ELEMENTS, PerturbedText

INVERTED_STRATEGIES = ("krr", "custext", "metric")


def mechanism_recovery(
    perturbed: Sequence[PerturbedText],
    kit: PerturbationKit,
    strategy: str,
    eps: float,
    *,
    cluster_size: int = DEFAULT_CLUSTER_SIZE,
    inner: Inner = "em",
    log_prior: torch.Tensor | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> dict[str, float]:
    """MAP-inversion recovery rates of a batch perturbed by ``strategy`` (one of
    `INVERTED_STRATEGIES`) at ``eps`` over ``kit``, with the keys and meaning of
    `fedkt.privacy.audit.inversion_recovery`: {"protected_recovered", "all_recovered",
    "tokens_perturbed", "tokens_total"}."""
    eps = check_eps(eps, "eps")
    if strategy not in INVERTED_STRATEGIES:
        raise ConfigError(
            f"mechanism_recovery inverts {INVERTED_STRATEGIES}; use inversion_recovery for "
            f"{strategy!r}."
        )
    found = sorted({p.record.strategy for p in perturbed} - {strategy})
    if found:
        raise ConfigError(f"mechanism_recovery was told {strategy!r} but records say {found}.")
    sources = _flat([p.source_ids for p in perturbed])
    outputs = _flat([p.output_ids for p in perturbed])
    size = int(max(sources.max(), outputs.max())) + 1 if sources.numel() else 1
    if log_prior is not None and (log_prior.dim() != 1 or log_prior.shape[0] <= kit.max_token_id):
        raise ConfigError(
            "log_prior must be a (vocab,) tensor covering every candidate token; build it with "
            "public_unigram(tokenizer, public_texts)."
        )
    set_of, row_of = kit.lookup(size)
    sources, outputs = sources.to(set_of.device), outputs.to(set_of.device)
    set_index = set_of[sources]
    if sources.shape != outputs.shape or not bool((set_index == set_of[outputs]).all()):
        raise ConfigError(
            "mechanism_recovery: the texts were not perturbed with this kit (lengths or token "
            "classes differ); pass the kit the TextPerturber used."
        )
    guesses = outputs.clone()
    for index, candidates in enumerate(kit.sets):
        positions = (set_index == index).nonzero().squeeze(1)
        if positions.numel() == 0:
            continue
        rows = row_of[outputs[positions]]
        prior = None if log_prior is None else log_prior.to(set_of.device)[candidates.token_ids]
        if strategy == "krr":
            guess = krr_inversion(candidates.size, rows, eps, prior)
        elif strategy == "custext":
            clusters = kit_clusters(kit, cluster_size)[index]
            guess = custext_inversion(candidates, clusters, rows, eps, inner, prior)
        else:
            guess = metric_inversion(candidates, rows, eps, prior, chunk_elements=chunk_elements)
        guesses[positions] = candidates.token_ids[guess.to(set_of.device)]
    recovered = guesses == sources
    protected = recovered[set_index >= 0]
    return {
        "protected_recovered": float(protected.float().mean()) if protected.numel() else 1.0,
        "all_recovered": float(recovered.float().mean()) if recovered.numel() else 1.0,
        "tokens_perturbed": float(protected.numel()),
        "tokens_total": float(recovered.numel()),
    }


def _flat(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    return torch.tensor([t for row in rows for t in row], dtype=torch.long)
