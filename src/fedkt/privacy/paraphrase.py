"""DP-Prompt: a client-local LM paraphrases each private text, every new token an EM draw.

Utpala, Hooker, Chen, "Locally Differentially Private Document Generation Using Zero Shot
Prompting", Findings of EMNLP 2023, arXiv 2310.16111.

Mechanism. The client renders the public template around a private text x (``"Document:
{text}\\nParaphrase of the document:"``) and lets its own causal LM write exactly n =
``new_tokens`` tokens. At step t the LM gives logits l_t(v) for every token v of the output
vocabulary V (a public constant: the ids both the model and the tokenizer have); they are
clipped to [b_min, b_max] and token y_t is drawn from

    P(y_t = v | x, y_<t) = exp(u_t(v) / T) / Σ_{v'} exp(u_t(v') / T),
    u_t(v) = clip(l_t(v), b_min, b_max),   Δ = b_max - b_min,   T = 2Δ / eps_tok,

no top-k, no top-p, no repetition penalty (each would make the support depend on x).

Why each token is eps_tok-DP against ANY other input. u_t is a utility with range Δ whatever
the input (clipping is what bounds it; a NaN logit counts as b_min, ±inf as the bound), so this
is the exponential mechanism exp(eps_tok u / (2Δ)): for any two inputs x, x' (any texts, of
any lengths) and any output token v, with the same prefix y_<t,

    P(v | x, y_<t) / P(v | x', y_<t) = e^{(u(v) - u'(v)) / T} · Z(x') / Z(x) <= e^{Δ/T} e^{Δ/T}
                                     = e^{eps_tok}.

The sequence probability is the product of the step probabilities, so the whole paraphrase is
(n · eps_tok)-LDP (adaptive sequential composition): the neighbour relation is "any two private
texts", not "texts of the same pattern", because nothing of the input reaches the output except
through the sampled tokens. No step probability exceeds e^{eps/2} / (e^{eps/2} + |V| - 1)
(`max_token_probability`): one token at b_max, all others at b_min; e.g. with |V| = 49k a
token that the LM is sure of is still kept with probability < 1/2 below eps_tok ≈ 21.6.

Fixed length, and EOS. Exactly n tokens are drawn for every text, so the number of draws is a
public constant. EOS is an ordinary token of V and may be drawn; from then on the row emits the
tokenizer's pad id without drawing from the LM (the generator is still advanced, so a row's
draws do not depend on when another row stopped). What follows an EOS is a fixed function of
the output before it (post-processing), so the realised loss is (number of tokens up to the
EOS) · eps_tok <= n · eps_tok; the record still counts n tokens, a bound that does not depend on
the draw. The text sent is the decoded tokens before the first EOS (special tokens skipped,
whitespace stripped): a function of the sampled tokens only, so it is covered by the same
bound; its length varies with the draws, never with the input's own length or token pattern.
Released in clear: nothing (`RELEASED_IN_CLEAR`).

eps_tok = 0 draws every token uniformly from V (0-DP, pure noise); eps_tok = inf is the greedy
paraphrase (argmax of the raw logits): no guarantee, recorded with prompt eps inf, the
mechanism's non-private end.

Batches. Prompts are tokenised with the tokenizer's special tokens, ordered longest first,
left-padded and run ``batch_size`` at a time with a KV cache; positions and attention masks
follow each row's own tokens, so a row's logits depend on its own text only, up to
floating-point rounding of batched kernels (``batch_size=1`` removes even that). As in
`fedkt.privacy.perturb`, a seeded output depends on the batch a text was drawn in; outside a
seeded simulation the generator comes from `secure_generator`. The generator may live on
another device than the model (the probabilities are moved to it for the draw), so the CPU
generator of `secure_generator` serves a GPU model.

What a caller keeps. `PerturbedText.source_ids` (the private text's ids) and the record stay
on the client; only ``text`` may be sent. The token-alignment audits of EM (inversion by
candidate set) do not apply: output position i has no input position i.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedkt.errors import ConfigError, ModelError
from fedkt.generation.transformers_backend import eval_mode
from fedkt.privacy.perturb import PerturbedText, PrivacyRecord

STRATEGY = "paraphrase"
PLACEHOLDER = "{text}"
DEFAULT_TEMPLATE = "Document: {text}\nParaphrase of the document:"
RELEASED_IN_CLEAR = (
    "nothing: every output token is sampled; the number of tokens drawn is the public "
    "constant new_tokens (the text ends at a sampled EOS, itself an output of the mechanism)"
)


@dataclass(frozen=True)
class ParaphraseSettings:
    """DP-Prompt's parameters (module docstring for the guarantee).

    Args:
        eps_per_token: budget of every generated token, >= 0; the temperature is
            T = 2 (logit_max - logit_min) / eps_per_token. inf: greedy, no guarantee.
        new_tokens: tokens drawn for every text (the paraphrase's fixed length); the
            prompt's budget is new_tokens x eps_per_token.
        logit_min, logit_max: the clipping range of the LM's logits, public constants with
            logit_min < logit_max; choose them on public text (e.g. a low and a high quantile
            of the model's next-token logits). A narrow range at the same eps spends less of
            the budget on the bulk of unlikely tokens but flattens the likely ones.
        prompt_template: public text around the private one, holding ``{text}`` exactly once
            (replaced literally, so braces in the private text are safe) and some instruction.
        batch_size: prompts per forward pass.
    """

    eps_per_token: float
    new_tokens: int = 64
    logit_min: float = -10.0
    logit_max: float = 10.0
    prompt_template: str = DEFAULT_TEMPLATE
    batch_size: int = 8

    def __post_init__(self) -> None:
        eps = self.eps_per_token
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps >= 0:
            raise ConfigError(
                f"paraphrase eps_per_token must be a number >= 0 (0: uniform noise; inf: the "
                f"greedy paraphrase, no guarantee), got {eps!r}."
            )
        for name in ("new_tokens", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"paraphrase {name} must be an integer >= 1, got {value!r}.")
        bounds = (self.logit_min, self.logit_max)
        if not all(math.isfinite(b) for b in bounds) or self.logit_min >= self.logit_max:
            raise ConfigError(
                f"paraphrase logit_min={self.logit_min} and logit_max={self.logit_max} must be "
                "finite with logit_min < logit_max (the clipping range bounds the sensitivity)."
            )
        template = self.prompt_template
        if template.count(PLACEHOLDER) != 1 or not template.replace(PLACEHOLDER, "").strip():
            raise ConfigError(
                f"paraphrase prompt_template must hold {PLACEHOLDER} exactly once and some "
                f"public instruction around it, got {template!r}."
            )

    @property
    def sensitivity(self) -> float:
        """Δ = logit_max - logit_min, the range of the clipped-logit utility."""
        return self.logit_max - self.logit_min

    @property
    def temperature(self) -> float:
        """T = 2Δ / eps_per_token (inf at eps 0, 0 at eps inf)."""
        if self.eps_per_token == 0:
            return math.inf
        return 2.0 * self.sensitivity / self.eps_per_token

    @property
    def prompt_eps(self) -> float:
        """new_tokens x eps_per_token: the budget of one paraphrase (inf for greedy)."""
        return self.new_tokens * self.eps_per_token

    def render(self, text: str) -> str:
        """The prompt the local LM continues (the template is public, ``text`` private)."""
        head, tail = self.prompt_template.split(PLACEHOLDER)
        return head + text + tail


def step_probabilities(logits: torch.Tensor, settings: ParaphraseSettings) -> torch.Tensor:
    """The exact distribution of one generated token: (..., V) float64, rows summing to 1.

    softmax(clip(logits, logit_min, logit_max) / T) with T = 2Δ / eps (computed as
    u * eps / (2Δ) so eps = 0 gives the uniform distribution); NaN logits count as
    logit_min, ±inf as the bound they exceed, so the guarantee holds for ANY logit vector.
    eps = inf: one-hot on the argmax of the raw logits (NaN ignored; greedy, no guarantee).
    """
    if logits.dim() == 0 or logits.shape[-1] == 0:
        raise ValueError(f"logits must be (..., V) with V >= 1, got {tuple(logits.shape)}.")
    raw = logits.to(torch.float64)
    if math.isinf(settings.eps_per_token):
        best = raw.nan_to_num(nan=-math.inf).argmax(dim=-1, keepdim=True)
        return torch.zeros_like(raw).scatter_(-1, best, 1.0)
    low, high = settings.logit_min, settings.logit_max
    utility = raw.nan_to_num(nan=low, posinf=high, neginf=low).clamp(low, high)
    scale = settings.eps_per_token / (2.0 * settings.sensitivity)
    return torch.softmax(utility * scale, dim=-1)


def sample_step(
    logits: torch.Tensor, settings: ParaphraseSettings, generator: torch.Generator
) -> torch.Tensor:
    """One token per row of (B, V) ``logits``: (B,) long on the logits' device, drawn from
    `step_probabilities` with ``generator`` (on any device)."""
    probs = step_probabilities(logits, settings).to(generator.device)
    drawn = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return drawn.to(logits.device)


def max_token_probability(settings: ParaphraseSettings, vocab_size: int) -> float:
    """The largest probability any step gives any token, over all inputs: one token at
    logit_max and the other V - 1 at logit_min, e^{eps/2} / (e^{eps/2} + V - 1). It bounds how
    often the LM's own best guess (e.g. copying a word of x) survives; 1 at eps inf."""
    if vocab_size < 1:
        raise ConfigError(f"vocab_size must be >= 1, got {vocab_size}.")
    half = settings.eps_per_token / 2.0
    return 1.0 / (1.0 + (vocab_size - 1) * math.exp(-half)) if math.isfinite(half) else 1.0


def guarantee(settings: ParaphraseSettings, vocab_size: int) -> dict[str, Any]:
    """The guarantee in words and numbers, for a client's report (all public: settings only)."""
    return {
        "mechanism": "paraphrase (DP-Prompt): exponential mechanism over the vocabulary per "
        "generated token, utility = clipped logit",
        "neighbours": "any two private texts (local DP)",
        "released_in_clear": RELEASED_IN_CLEAR,
        "eps_per_token": settings.eps_per_token,
        "new_tokens": settings.new_tokens,
        "prompt_eps": settings.prompt_eps,
        "temperature": settings.temperature,
        "logit_range": [settings.logit_min, settings.logit_max],
        "max_token_probability": max_token_probability(settings, vocab_size),
    }


def paraphrase(
    texts: Sequence[str],
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    settings: ParaphraseSettings,
    generator: torch.Generator,
) -> list[PerturbedText]:
    """Paraphrase every private text with ``model`` under ``settings``; one result per text,
    in order. ``text`` may be sent; ``source_ids`` (the private text's ids, for a local audit)
    and ``record`` (n tokens at eps_per_token each, none passed through) stay on the client;
    ``output_ids`` are the n drawn ids, the pad id after an EOS."""
    texts = list(texts)
    if not texts:
        return []
    pad_id = _pad_id(tokenizer)
    eos = torch.tensor(_eos_ids(model, tokenizer), dtype=torch.long)
    prompts: list[list[int]] = tokenizer([settings.render(t) for t in texts])["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: -len(prompts[i]))
    outputs: list[list[int]] = [[] for _ in texts]
    with torch.inference_mode(), eval_mode(model):
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            drawn = _sample_batch(
                model, [prompts[i] for i in batch], settings, generator, eos, pad_id, len(tokenizer)
            )
            for index, row in zip(batch, drawn.tolist(), strict=True):
                outputs[index] = row
    sources: list[list[int]] = tokenizer(texts, add_special_tokens=False)["input_ids"]
    record = PrivacyRecord.of(STRATEGY, [settings.eps_per_token] * settings.new_tokens, 0)
    eos_set = set(eos.tolist())
    return [
        PerturbedText(
            text=_decode(tokenizer, row, eos_set),
            record=record,
            source_ids=tuple(source),
            output_ids=tuple(row),
        )
        for row, source in zip(outputs, sources, strict=True)
    ]


class Paraphraser:
    """`paraphrase` behind `TextPerturber`'s interface (``tokenizer``, ``perturb(texts, eps,
    generator)``), so a caller written for EM can hand it the private fields unchanged."""

    def __init__(
        self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, settings: ParaphraseSettings
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.strategy = STRATEGY

    def perturb(
        self, texts: Sequence[str], eps: float, generator: torch.Generator
    ) -> list[PerturbedText]:
        """Paraphrase at ``eps`` per generated token (the other settings as given)."""
        settings = replace(self.settings, eps_per_token=eps)
        return paraphrase(texts, self.model, self.tokenizer, settings, generator)


# ---- the sampling loop ---------------------------------------------------------------------


def _sample_batch(
    model: nn.Module,
    prompts: list[list[int]],
    settings: ParaphraseSettings,
    generator: torch.Generator,
    eos: torch.Tensor,
    pad_id: int,
    tokenizer_size: int,
) -> torch.Tensor:
    """(B, new_tokens) drawn ids of one batch: left-padded prompts, a KV cache, one
    `sample_step` per position for every row (finished rows then get ``pad_id``)."""
    device = next(model.parameters()).device
    width = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[row, width - len(ids) :] = 1
    input_ids, mask, eos = input_ids.to(device), mask.to(device), eos.to(device)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)  # each row counts its own tokens from 0
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
    drawn = torch.full((len(prompts), settings.new_tokens), pad_id, dtype=torch.long)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    for step in range(settings.new_tokens):
        logits = out.logits[:, -1, : min(out.logits.shape[-1], tokenizer_size)]
        token = sample_step(logits, settings, generator)  # drawn for every row: fixed use
        token = torch.where(done, torch.full_like(token, pad_id), token)
        drawn[:, step] = token.cpu()
        done |= torch.isin(token, eos)
        if step + 1 == settings.new_tokens or bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=positions,
            past_key_values=out.past_key_values,
            use_cache=True,
        )
    return drawn


def _decode(tokenizer: PreTrainedTokenizerBase, ids: list[int], eos: set[int]) -> str:
    """The text sent: the tokens before the first EOS, special tokens skipped, stripped."""
    end = next((i for i, t in enumerate(ids) if t in eos), len(ids))
    text = tokenizer.decode(ids[:end], skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return str(text).strip()


def _eos_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The model's EOS ids (chat models often have several) and the tokenizer's."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    return sorted(i for i in ids if i is not None)


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ModelError(
            f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an EOS token, needed "
            "to pad batched prompts; load it with fedkt.models.load_tokenizer"
        )
    return int(pad)
