"""Answer-only training sequences, tokenised exactly like lm-evaluation-harness scores them.

Training and evaluation must agree on where the answer starts: lm-eval's
`LM._encode_pair` moves the context's trailing whitespace into the continuation, encodes
`context` and `context + continuation` with the tokenizer's default special tokens (HFLM's
`add_bos_token=None` default: a BOS only if the tokenizer adds one itself) and takes the
continuation as `whole[len(context_ids):]`. We do the same, append EOS so the model learns
to stop, and label only the continuation (+ EOS).

Labels are aligned with `input_ids` (Hugging Face convention): `labels[i]` is `input_ids[i]`
on answer tokens and `IGNORE_INDEX` elsewhere; the logits at position `i` predict token
`i + 1`, and `fedkt.training.losses` does that shift.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from fedkt.data.tokenization import encode_pair
from fedkt.errors import DataError, ModelError

IGNORE_INDEX = -100  # torch's cross_entropy default ignore_index, also Hugging Face's


def encode_answer_only(
    tokenizer: PreTrainedTokenizerBase, context: str, continuation: str, max_length: int
) -> dict[str, list[int]]:
    """Token ids and labels of one (context, continuation) pair, EOS appended and learned.

    Returns `{"input_ids": context_ids + answer_ids + [eos], "labels": [-100] * len(context_ids)
    + answer_ids + [eos]}`.

    Truncation keeps the answer: when the sequence is longer than `max_length`, context tokens
    are cut from the left (as lm-eval does when it scores an over-long request), so a leading
    BOS is dropped too. At least one context token is kept, because the first answer token is
    predicted from the token before it; an answer (+ EOS) that does not fit in
    `max_length - 1` tokens raises `DataError`.
    """
    if not context:
        raise DataError(
            "encode_answer_only got an empty context: the first answer token needs a context "
            "token to be predicted from; give the example a prompt."
        )
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ModelError(
            f"tokenizer {tokenizer.name_or_path!r} has no EOS token, so answers cannot learn to "
            "stop; set tokenizer.eos_token before training."
        )
    context_ids, answer_ids = encode_pair(tokenizer, context, continuation)
    answer_ids = [*answer_ids, eos_id]
    room = max_length - len(answer_ids)
    if room < 1:
        raise DataError(
            f"the answer {continuation[:60]!r} is {len(answer_ids)} tokens with EOS, which leaves "
            f"no room for context in max_length={max_length}; raise max_length or shorten it."
        )
    context_ids = context_ids[-room:]
    return {
        "input_ids": context_ids + answer_ids,
        "labels": [IGNORE_INDEX] * len(context_ids) + answer_ids,
    }


def collate(batch: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded sequences into `input_ids`, `attention_mask` and `labels` (B, L) tensors.

    Padding is on the right so every sequence starts at position 0 and the answer-position
    mask stays aligned; pads get attention 0 and label -100, so they neither attend nor count.
    """
    if not batch:
        raise ValueError("collate got an empty batch; pass at least one encoded sequence.")
    width = max(len(item["input_ids"]) for item in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, item in enumerate(batch):
        n = len(item["input_ids"])
        input_ids[row, :n] = torch.tensor(item["input_ids"], dtype=torch.long)
        labels[row, :n] = torch.tensor(item["labels"], dtype=torch.long)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
