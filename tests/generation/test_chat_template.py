"""Chat templates: an instruction-tuned model gets each prompt as the user's turn of its own
template (where its tokenizer has one), in both the text and the token ids it reads."""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import build_tiny_tokenizer
from fedkt.generation import (
    GenerationSettings,
    TransformersBackend,
    applies_chat_template,
    chat_text,
    encode_prompts,
    has_chat_template,
    make_backend,
)

TEMPLATE = (
    "{% for m in messages %}<|endoftext|>user: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def _chat_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def test_a_prompt_becomes_the_users_turn_where_there_is_a_template(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    chat = _chat_tokenizer()
    assert has_chat_template(chat) and not has_chat_template(tiny_tokenizer)
    assert chat_text(chat, "Which gas?") == "<|endoftext|>user: Which gas?\nassistant:"
    assert chat_text(tiny_tokenizer, "Which gas?") == "Which gas?"
    (ids,) = encode_prompts(chat, ["Which gas?"], chat_template=True)
    assert chat.decode(ids) == "<|endoftext|>user: Which gas?\nassistant:"
    assert ids[0] == chat.eos_token_id and ids.count(chat.eos_token_id) == 1  # its own only
    plain = encode_prompts(chat, ["Which gas?"], chat_template=False)
    assert plain == [chat("Which gas?")["input_ids"]]
    assert encode_prompts(tiny_tokenizer, ["Which gas?"], chat_template=True) == [
        tiny_tokenizer("Which gas?")["input_ids"]
    ]  # no template: the raw prompt


def test_the_backend_generates_after_the_template_only_when_asked(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, monkeypatch
) -> None:
    chat = _chat_tokenizer()
    seen: list[str] = []
    generate = tiny_llama.generate

    def recording_generate(**kwargs: torch.Tensor) -> torch.Tensor:
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        seen.extend(chat.decode(row[m.bool()]) for row, m in zip(ids, mask, strict=True))
        return generate(**kwargs)

    monkeypatch.setattr(tiny_llama, "generate", recording_generate)
    settings = GenerationSettings(max_new_tokens=2)
    with_chat = TransformersBackend(tiny_llama, chat, chat_template=True)
    with_chat.generate(["Which gas?"], settings)
    TransformersBackend(tiny_llama, chat).generate(["Which gas?"], settings)
    assert seen == ["<|endoftext|>user: Which gas?\nassistant:", "Which gas?"]
    assert applies_chat_template(with_chat)
    assert not applies_chat_template(
        TransformersBackend(tiny_llama, tiny_tokenizer, chat_template=True)
    )
    made = make_backend(tiny_llama, chat, prefer_vllm=False, chat_template=True)
    assert applies_chat_template(made)
    assert not applies_chat_template(make_backend(tiny_llama, chat, prefer_vllm=False))
