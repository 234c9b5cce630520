"""Chat templates: an instruction-tuned model reads a prompt as the user's turn of a chat.

An instruct model (SmolLM2-135M-Instruct, the FedCoT server's LLM) was trained on its chat
format; fed a raw prompt it continues text instead of answering, and it never says its
end-of-turn token. `chat_text` wraps one prompt as a single user message and opens the
assistant's turn (``add_generation_prompt``), with the template the tokenizer ships
(``tokenizer.chat_template``); a tokenizer without one keeps the prompt as it is. The
rendered text already holds whatever special tokens the template puts first (Gemma's
``<bos>``), so it is encoded with ``add_special_tokens=False`` (`encode_prompts`).
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the tokenizer ships a chat template (``tokenizer.chat_template``)."""
    return bool(getattr(tokenizer, "chat_template", None))


def chat_text(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """``prompt`` as the user's message of a one-turn chat, ending where the assistant's
    answer starts; unchanged when the tokenizer has no chat template."""
    if not has_chat_template(tokenizer):
        return prompt
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return str(text)


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *, chat_template: bool
) -> list[list[int]]:
    """The token ids of each prompt: through `chat_text` (no further special tokens: the
    template placed its own) when ``chat_template`` and the tokenizer has one, else as the
    tokenizer encodes plain text."""
    if chat_template and has_chat_template(tokenizer):
        texts = [chat_text(tokenizer, prompt) for prompt in prompts]
        ids: list[list[int]] = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return ids
    plain: list[list[int]] = tokenizer(list(prompts))["input_ids"]
    return plain
