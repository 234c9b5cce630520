"""Token-level DP perturbation of a batch of prompts (FedCoT's encoding step).

What `eps` means:
- ``"em"``: eps is the budget of every perturbed token. Each token is eps-DP against replacing it
  by any other token of its candidate set, and a prompt of m perturbed tokens is (m * eps)-DP
  against replacing any of them (sequential composition); both are recorded.
- ``"aem"``: the same prompt total m * eps is redistributed over the prompt's m perturbed tokens
  by `allocate_budget` with a public importance score, so EM and AEM compare at equal
  prompt-level epsilon. The prompt stays (m * eps)-DP although the split depends on the private
  tokens (proof in fedkt.privacy.mechanisms); the per-token budgets reveal the tokens'
  importance and must stay on the client.
- ``"krr"``: k-ary randomized response over the token's whole candidate set
  (fedkt.privacy.krr): eps per token against any other token of the set, as EM, but the most
  tokens kept at a given eps (e^eps / (e^eps + k - 1)), replacements uniform.
- ``"custext"``: EM or k-RR (``inner``) within a fixed cluster of ``cluster_size`` public
  nearest neighbours (fedkt.privacy.custext): eps per token against tokens of the same
  cluster only; the cluster of every perturbed token is released.
- ``"metric"``: d_X-privacy with d = sqrt(2 - 2 cos) (fedkt.privacy.metric): eps is eps_d, the
  budget per unit of embedding distance; the record holds the worst case against any token
  of the set, 2 eps_d per token, so prompt_eps is m * 2 * eps_d.
- eps = math.inf: no perturbation; the original text is returned exactly, the strategy is still
  recorded and prompt_eps is inf. eps < 0 (or NaN) raises ConfigError.

`mechanism_guarantee` states each strategy's guarantee in words for a report (neighbours, what
is released in clear, per-token and per-prompt eps, the retention bound).

What is not protected: tokens outside every candidate set pass through unchanged and are counted
(`tokens_passed_through`), and the set of each position is revealed (fedkt.privacy.candidates).
The guarantee is over prompts sharing that public pattern. With the kit of
``build_kit(..., partition="vocabulary")`` every ordinary token is perturbed over one set, so
the pattern shrinks to the token count (`fedkt.privacy.audit.pattern_uniqueness` measures how
identifying the pattern is).

Where the noise comes from. Every draw takes a `torch.Generator`: seeded in tests and seeded
simulations (reproducible, so anyone who knows the seed can replay the noise and the output is
a function of the input: no guarantee at all), and from `secure_generator` everywhere else.

All tokens of all texts are sampled together, one draw per candidate set (a `torch.multinomial`
split into row blocks of at most `chunk_elements` probabilities so a 20k-word set stays in
memory; k-RR draws a keep coin and a uniform index instead).
The output for a seed depends on the batch it was drawn in, not only on the text. The same seed
at two budgets (or for EM and AEM) gives strongly coupled draws (torch.multinomial's noise is
shared), which is fine for paired comparisons; use different seeds for independent ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase

from fedkt.errors import ConfigError
from fedkt.privacy.candidates import CandidateSet, PerturbationKit
from fedkt.privacy.custext import (
    DEFAULT_CLUSTER_SIZE,
    INNERS,
    Inner,
    custext_guarantee,
    kit_clusters,
    sample_custext,
)
from fedkt.privacy.krr import krr_guarantee, sample_krr
from fedkt.privacy.mechanisms import (
    allocate_segments,
    check_eps,
    check_importance,
    em_guarantee,
    em_probabilities,
)
from fedkt.privacy.metric import METRIC_DIAMETER, metric_guarantee, sample_metric

Strategy = Literal["em", "aem", "krr", "custext", "metric"]
STRATEGIES: tuple[str, ...] = ("em", "aem", "krr", "custext", "metric")
DEFAULT_CHUNK_ELEMENTS = 1 << 24  # 64 MiB of float32 probabilities per block


@dataclass(frozen=True)
class PrivacyRecord:
    """The privacy accounting of one prompt."""

    strategy: str  # "em" | "aem" | "none"
    eps_per_token: tuple[float, ...]  # budget of each perturbed token, in order
    tokens_perturbed: int
    tokens_passed_through: int
    prompt_eps: float  # Σ eps_per_token; inf if any is inf (or strategy "none"); 0 tokens -> 0

    @classmethod
    def of(
        cls, strategy: str, eps_per_token: Sequence[float], tokens_passed_through: int
    ) -> PrivacyRecord:
        """A record with prompt_eps derived from the per-token budgets."""
        budgets = tuple(float(e) for e in eps_per_token)
        if strategy == "none" or any(math.isinf(e) for e in budgets):
            prompt = math.inf
        else:
            prompt = math.fsum(budgets)
        return cls(strategy, budgets, len(budgets), tokens_passed_through, prompt)

    def to_dict(self) -> dict[str, Any]:
        """Plain types; inf stays a float (json writes it as Infinity)."""
        return {
            "strategy": self.strategy,
            "eps_per_token": list(self.eps_per_token),
            "tokens_perturbed": self.tokens_perturbed,
            "tokens_passed_through": self.tokens_passed_through,
            "prompt_eps": self.prompt_eps,
        }


@dataclass(frozen=True)
class PerturbedText:
    """A perturbed prompt: `text` may be sent; the ids are client-local (for the audit only)."""

    text: str
    record: PrivacyRecord
    source_ids: tuple[int, ...]  # NEVER sent
    output_ids: tuple[int, ...]


def join_perturbed(parts: Sequence[PerturbedText], text: str) -> PerturbedText:
    """One prompt made of several separately perturbed fields (e.g. a question and its
    choices) rendered into ``text``: budgets and ids concatenated in field order, passed-through
    tokens summed. The template around the fields is public and counts for nothing."""
    strategies = {p.record.strategy for p in parts}
    if len(strategies) != 1:
        raise ConfigError(
            f"join_perturbed needs fields perturbed by one strategy, got {sorted(strategies)}."
        )
    record = PrivacyRecord.of(
        strategies.pop(),
        [e for p in parts for e in p.record.eps_per_token],
        sum(p.record.tokens_passed_through for p in parts),
    )
    return PerturbedText(
        text,
        record,
        tuple(t for p in parts for t in p.source_ids),
        tuple(t for p in parts for t in p.output_ids),
    )


def privacy_summary(records: Sequence[PrivacyRecord]) -> dict[str, Any]:
    """Per-token and per-prompt epsilon over a run, for printing and the run's report.

    Aggregates only; with AEM even these depend on the private tokens' importance, so the
    report belongs to the client (publish the eps setting and the mean prompt eps at most).
    """
    budgets = [e for r in records for e in r.eps_per_token]
    prompts = [r.prompt_eps for r in records]
    perturbed = sum(r.tokens_perturbed for r in records)
    passed = sum(r.tokens_passed_through for r in records)
    return {
        "strategies": sorted({r.strategy for r in records}),
        "prompts": len(records),
        "eps_per_token_mean": _mean(budgets),
        "eps_per_token_min": min(budgets, default=0.0),
        "eps_per_token_max": max(budgets, default=0.0),
        "prompt_eps_mean": _mean(prompts),
        "prompt_eps_max": max(prompts, default=0.0),
        "tokens_perturbed": perturbed,
        "tokens_passed_through": passed,
        "passed_through_fraction": passed / (perturbed + passed) if perturbed + passed else 0.0,
    }


def unperturbed(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[PerturbedText]:
    """Texts sent as they are (the non-private baseline), recorded as strategy "none"."""
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [
        PerturbedText(text, PrivacyRecord.of("none", (), len(ids)), tuple(ids), tuple(ids))
        for text, ids in zip(texts, encoded, strict=True)
    ]


def sample_em(
    candidates: CandidateSet,
    rows: torch.Tensor,
    eps: torch.Tensor | float,
    generator: torch.Generator,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """EM samples for n inputs of one set: (n,) rows of `candidates` (not token ids).

    rows: (n,) input rows; eps: scalar or (n,) budgets. One multinomial per block of
    max(1, chunk_elements // k) rows; the generator must live on the set's device.
    """
    device = candidates.unit_embeddings.device
    rows = rows.to(device)
    budgets = torch.as_tensor(eps, dtype=torch.float64, device=device).expand(rows.shape[0])
    _check_generator(generator, device)
    step = max(1, chunk_elements // candidates.size)
    picked = [
        torch.multinomial(
            em_probabilities(
                candidates.similarity(rows[start : start + step]), budgets[start : start + step]
            ),
            1,
            generator=generator,
        ).squeeze(1)
        for start in range(0, rows.shape[0], step)
    ]
    return torch.cat(picked) if picked else rows.new_empty(0)


def mechanism_guarantee(
    strategy: str,
    eps: float,
    kit: PerturbationKit,
    *,
    cluster_size: int = DEFAULT_CLUSTER_SIZE,
    inner: Inner = "em",
) -> dict[str, Any]:
    """The guarantee of ``strategy`` at ``eps`` over ``kit`` for a privacy report: a
    statement in words, which inputs are neighbours, what is released in clear, per-token and
    per-prompt eps and each candidate set's retention bound (the mechanisms' modules)."""
    if strategy in ("em", "aem"):
        return em_guarantee(kit, eps, adaptive=strategy == "aem")
    if strategy == "krr":
        return krr_guarantee(kit, eps)
    if strategy == "custext":
        return custext_guarantee(kit, eps, cluster_size, inner)
    if strategy == "metric":
        return metric_guarantee(kit, eps)
    raise ConfigError(f"strategy must be one of {STRATEGIES}, got {strategy!r}.")


class TextPerturber:
    """Perturbs prompts token by token with one of `STRATEGIES` over a PerturbationKit.

    ``cluster_size`` and ``inner`` configure "custext" (fedkt.privacy.custext); the clusters
    are built from the kit on first use and cached with it.

    ``pad_to`` > 1 pads every text with a public filler token (the single-space token where
    the kit holds it) up to a multiple of ``pad_to`` tokens before perturbing, and perturbs
    the pads like any token: the output's length then shows only the padded length, not the
    text's. The pads are perturbed positions, so they are spent budget (prompt eps counts
    them) and the audit counts them; the guarantee is over texts of the same padded length.
    Only useful when the filler is in a candidate set (``partition="vocabulary"``).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        kit: PerturbationKit,
        strategy: Strategy,
        importance: torch.Tensor | None = None,
        *,
        floor: float = 0.1,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
        pad_to: int = 1,
        cluster_size: int = DEFAULT_CLUSTER_SIZE,
        inner: Inner = "em",
    ) -> None:
        if strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {STRATEGIES}, got {strategy!r}.")
        if cluster_size < 2 or inner not in INNERS:
            raise ConfigError(
                f"custext needs cluster_size >= 2 and inner in {list(INNERS)}, got "
                f"{cluster_size} and {inner!r}."
            )
        if not 0.0 <= floor <= 1.0:
            raise ConfigError(f"floor must be in [0, 1], got {floor}.")
        if pad_to < 1:
            raise ConfigError(f"pad_to must be >= 1, got {pad_to}.")
        self.tokenizer = tokenizer
        self.kit = kit
        self.strategy: Strategy = strategy
        self.floor = floor
        self.chunk_elements = chunk_elements
        self.pad_to = pad_to
        self.cluster_size = cluster_size
        self.inner: Inner = inner
        self._set_of, self._row_of = kit.lookup(len(tokenizer))
        self.pad_id = self._filler() if pad_to > 1 else None
        self._importance = self._check_importance(importance)

    def _filler(self) -> int:
        """The padding token: the single-space token when it is a candidate, else the first
        token of the first set (a public constant either way)."""
        space = self.tokenizer(" ", add_special_tokens=False)["input_ids"]
        if len(space) == 1 and int(self._set_of[space[0]]) >= 0:
            return int(space[0])
        if not self.kit.sets:
            raise ConfigError("pad_to > 1 needs a kit with a candidate set to pad with.")
        return int(self.kit.sets[0].token_ids[0])

    def guarantee(self, eps: float) -> dict[str, Any]:
        """`mechanism_guarantee` of this perturber's strategy and kit at ``eps``."""
        return mechanism_guarantee(
            self.strategy, eps, self.kit, cluster_size=self.cluster_size, inner=self.inner
        )

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids as perturbed: tokenized, then padded to ``pad_to``."""
        rows: list[list[int]] = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        if self.pad_id is None:
            return rows
        return [row + [self.pad_id] * (-len(row) % self.pad_to) for row in rows]

    def _check_importance(self, importance: torch.Tensor | None) -> torch.Tensor | None:
        if self.strategy != "aem":
            return None
        if importance is None:
            raise ConfigError(
                "strategy 'aem' needs an importance table; pass "
                "importance=public_importance(tokenizer, public_texts)."
            )
        weights = check_importance(importance, "importance")
        if weights.shape[0] < self._set_of.shape[0]:
            raise ConfigError(
                f"importance has {weights.shape[0]} entries but the vocabulary has "
                f"{self._set_of.shape[0]}; build it with public_importance(tokenizer, ...)."
            )
        return weights.to(self._set_of.device)

    def perturb(
        self, texts: Sequence[str], eps: float, generator: torch.Generator
    ) -> list[PerturbedText]:
        """Perturb every text at budget `eps` (module docstring); one result per text, in order."""
        eps = check_eps(eps, "eps")
        texts = list(texts)
        encoded = self.encode(texts)
        device = self._set_of.device
        ids = torch.tensor([t for row in encoded for t in row], dtype=torch.long, device=device)
        text_of = torch.repeat_interleave(
            torch.arange(len(texts), device=device),
            torch.tensor([len(row) for row in encoded], dtype=torch.long, device=device),
        )
        set_index = self._set_of[ids]
        perturbed = set_index >= 0
        if math.isinf(eps):
            budgets = torch.full((int(perturbed.sum()),), math.inf, dtype=torch.float64)
            outputs = ids
        else:
            budgets = self._budgets(ids[perturbed], text_of[perturbed], len(texts), eps)
            outputs = self._sample(ids, set_index, perturbed, budgets, generator)
        return self._assemble(texts, encoded, outputs, perturbed, budgets, text_of, eps)

    def _budgets(
        self, ids: torch.Tensor, text_of: torch.Tensor, n_texts: int, eps: float
    ) -> torch.Tensor:
        """(m_total,) float64 budgets of the perturbed tokens, in order."""
        if self._importance is None:
            return torch.full(ids.shape, eps, dtype=torch.float64, device=ids.device)
        counts = torch.bincount(text_of, minlength=n_texts).to(torch.float64)
        return allocate_segments(self._importance[ids], text_of, counts * eps, floor=self.floor)

    def _sample(
        self,
        ids: torch.Tensor,
        set_index: torch.Tensor,
        perturbed: torch.Tensor,
        budgets: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Output ids: every perturbed token of set s drawn in one call per set."""
        outputs = ids.clone()
        budget_at = torch.zeros(ids.shape, dtype=torch.float64, device=ids.device)
        budget_at[perturbed] = budgets
        for index, candidates in enumerate(self.kit.sets):
            positions = (set_index == index).nonzero().squeeze(1)
            if positions.numel() == 0:
                continue
            rows = self._sample_set(
                index, candidates, self._row_of[ids[positions]], budget_at[positions], generator
            )
            outputs[positions] = candidates.token_ids[rows]
        return outputs

    def _sample_set(
        self,
        index: int,
        candidates: CandidateSet,
        rows: torch.Tensor,
        budgets: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """The strategy's draw for input rows of the kit's ``index``-th set."""
        if self.strategy == "krr":
            _check_generator(generator, rows.device)
            return sample_krr(candidates.size, rows, budgets, generator)
        if self.strategy == "custext":
            _check_generator(generator, rows.device)
            clusters = kit_clusters(self.kit, self.cluster_size)[index]
            return sample_custext(candidates, clusters, rows, budgets, generator, self.inner)
        if self.strategy == "metric":
            _check_generator(generator, rows.device)
            return sample_metric(
                candidates, rows, budgets, generator, chunk_elements=self.chunk_elements
            )
        return sample_em(candidates, rows, budgets, generator, chunk_elements=self.chunk_elements)

    def _assemble(
        self,
        texts: list[str],
        encoded: list[list[int]],
        outputs: torch.Tensor,
        perturbed: torch.Tensor,
        budgets: torch.Tensor,
        text_of: torch.Tensor,
        eps: float,
    ) -> list[PerturbedText]:
        """Split the flat tensors back into texts, decode, and attach the records."""
        lengths = [len(row) for row in encoded]
        output_rows = [row.tolist() for row in outputs.cpu().split(lengths)]
        m_per_text = torch.bincount(text_of[perturbed], minlength=len(texts)).tolist()
        if self.strategy == "metric":  # the worst case against any token of the set
            budgets = budgets * METRIC_DIAMETER
        budget_rows = [row.tolist() for row in budgets.cpu().split(m_per_text)]
        if math.isinf(eps):
            sent = texts  # exact, even where the tokenizer's round trip is not
        else:
            sent = self.tokenizer.batch_decode(
                output_rows, skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
        return [
            PerturbedText(
                text=str(sent[i]),
                record=PrivacyRecord.of(self.strategy, budget_rows[i], lengths[i] - m_per_text[i]),
                source_ids=tuple(encoded[i]),
                output_ids=tuple(output_rows[i]),
            )
            for i in range(len(texts))
        ]


def _check_generator(generator: torch.Generator, device: torch.device) -> None:
    if generator.device.type != device.type:
        raise ConfigError(
            f"the generator is on {generator.device} but the kit is on {device}; create it with "
            f"torch.Generator(device={device.type!r}).manual_seed(seed)."
        )


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0
