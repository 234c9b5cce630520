"""Summed log-likelihood of each choice's continuation, as lm-evaluation-harness computes it.

lm-eval runs every (context, continuation) pair as its own right-padded row. Here the context
is run once per batch of examples and every continuation is scored from its KV cache, which
pays off where contexts are long and choices short. Measured on the embedded SmolLM2-135M
(fp32, CPU, one thread, batch 16, other jobs sharing the two cores): ARC-Easy validation
(570 rows) 169 s against lm-eval's 246 s, and 16.5 s against 31.9 s for this module's own
one-row-per-pair variant on 60 rows; OpenBookQA (short stems, longer choices) 96 s for both.
Log-likelihoods equal lm-eval's to 7e-5 (bench/results/lm_eval_crosscheck.json).

Trick that keeps it exact for any batch: contexts are right-padded, and each continuation row
re-feeds its context's *last* token (with that token's cache slot masked out) ahead of the
continuation, so the log-probability of the first continuation token comes out of the same
forward pass as the others and every query row attends to at least one real key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import Cache, PreTrainedTokenizerBase

from fedkt.data import TARGET_DELIMITER, Example
from fedkt.errors import DataError
from fedkt.evaluation.encoding import Request, encode_request, resolve_max_length
from fedkt.evaluation.runtime import CausalLM, eval_mode

# Padding positions are masked out, so any valid token id will do (0 exists in every vocab).
_PAD_ID = 0


@dataclass(frozen=True)
class _Group:
    """Requests sharing one context: one prefill, one continuation row per request."""

    context: tuple[int, ...]
    members: tuple[int, ...]  # indices into the flat request list


def score_choices(
    model: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> list[list[float]]:
    """Sum of log P(TARGET_DELIMITER + choice | context) for every choice of every example.

    `batch_size` counts continuation rows (choices) per forward pass, as lm-eval's does.
    """
    max_length = resolve_max_length(model.config, tokenizer)
    per_example = [_encode_example(tokenizer, example, max_length) for example in examples]
    flat = [request for requests in per_example for request in requests]
    scores = score_requests(model, flat, batch_size=batch_size, progress=progress)
    out: list[list[float]] = []
    for requests in per_example:
        out.append(scores[: len(requests)])
        scores = scores[len(requests) :]
    return out


def _encode_example(
    tokenizer: PreTrainedTokenizerBase, example: Example, max_length: int
) -> list[Request]:
    if example.is_generative:
        raise DataError(
            f"example {example.id!r} is generative (no choices): score it with "
            "evaluate_exact_match, or use evaluate() to dispatch by kind"
        )
    return [
        encode_request(
            tokenizer,
            example.context,
            TARGET_DELIMITER + choice,
            max_length,
            name=f"example {example.id!r} choice {i}",
        )
        for i, choice in enumerate(example.choices)
    ]


@torch.inference_mode()
def score_requests(
    model: CausalLM, requests: Sequence[Request], *, batch_size: int = 16, progress: bool = False
) -> list[float]:
    """Summed continuation log-likelihood of each request, in the order given."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    scores = [0.0] * len(requests)
    bar = tqdm(total=len(requests), disable=not progress, desc="log-likelihood")
    with eval_mode(model), bar:
        for batch in _batches(_groups(requests), batch_size):
            for index, score in _score_batch(model, batch, requests):
                scores[index] = score
            bar.update(sum(len(group.members) for group in batch))
    return scores


def _groups(requests: Sequence[Request]) -> list[_Group]:
    """Requests grouped by identical context, longest context first (least padding, OOM early)."""
    members: dict[tuple[int, ...], list[int]] = {}
    for index, request in enumerate(requests):
        members.setdefault(request.context, []).append(index)
    groups = [_Group(context, tuple(indices)) for context, indices in members.items()]
    return sorted(groups, key=lambda group: -len(group.context))


def _batches(groups: list[_Group], batch_size: int) -> list[list[_Group]]:
    """Whole groups packed until `batch_size` rows; a group larger than that goes alone."""
    batches: list[list[_Group]] = []
    rows = 0
    for group in groups:
        if not batches or rows + len(group.members) > batch_size:
            batches.append([])
            rows = 0
        batches[-1].append(group)
        rows += len(group.members)
    return batches


def _right_pad(
    seqs: Sequence[Sequence[int]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of shape (len(seqs), longest), padded on the right."""
    width = max(len(seq) for seq in seqs)
    ids = torch.full((len(seqs), width), _PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids.to(device), mask.to(device)


def _score_batch(
    model: CausalLM, batch: list[_Group], requests: Sequence[Request]
) -> list[tuple[int, float]]:
    """(request index, score) for every request of the groups in `batch`."""
    device = model.device
    indices = [index for group in batch for index in group.members]
    row_group = [g for g, group in enumerate(batch) for _ in group.members]
    cache, past_mask, ctx_lens = _prefill(model, [group.context for group in batch], row_group)
    # Row input: last context token, then the continuation minus its last token; position i
    # predicts continuation token i.
    conts = [requests[i].continuation for i in indices]
    ids, mask = _right_pad(
        [(requests[i].context[-1], *requests[i].continuation[:-1]) for i in indices], device
    )
    positions = (ctx_lens - 1)[:, None] + torch.arange(ids.shape[1], device=device)[None, :]
    logits = model(
        input_ids=ids,
        attention_mask=torch.cat([past_mask, mask], dim=1),
        position_ids=positions,
        past_key_values=cache,
    ).logits
    targets, _ = _right_pad(conts, device)
    token_logprobs = logits.float().log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    sums = torch.where(mask.bool(), token_logprobs, 0.0).sum(-1).tolist()
    return list(zip(indices, sums, strict=True))


def _prefill(
    model: CausalLM, contexts: list[tuple[int, ...]], row_group: list[int]
) -> tuple[Cache, torch.Tensor, torch.Tensor]:
    """Run the contexts once; return their KV cache expanded to one copy per row.

    Also returns the rows' attention mask over the cache, with each row's last context slot
    masked (that token is fed again with the continuation), and each row's context length.
    """
    device = model.device
    ctx_ids, ctx_mask = _right_pad(contexts, device)
    out = model(input_ids=ctx_ids, attention_mask=ctx_mask, use_cache=True, logits_to_keep=1)
    cache: Cache = out.past_key_values
    rows = torch.tensor(row_group, device=device)
    cache.batch_select_indices(rows)
    ctx_lens = ctx_mask.sum(-1)[rows]
    past_mask = ctx_mask[rows].clone()
    past_mask[torch.arange(len(row_group), device=device), ctx_lens - 1] = 0
    return cache, past_mask, ctx_lens
