"""TransformersBackend on a tiny random Llama: batching, stopping, sampling, model state."""

from __future__ import annotations

import pytest
import torch

from fedkt.errors import DataError, ModelError
from fedkt.generation import GenerationSettings, TransformersBackend

# Deliberately not sorted by length, so the backend's length ordering must be undone.
PROMPTS = [
    "Question: Which gas do plants absorb?\nAnswer:",
    "Topic:",
    "Article: Shares rose after the bank reported record profits.\nTopic:",
    "Natalia sold 48 clips in April.",
    "oxygen nitrogen",
]


def test_batched_greedy_equals_one_prompt_at_a_time(tiny_llama, tiny_tokenizer):
    backend = TransformersBackend(tiny_llama, tiny_tokenizer)
    settings = GenerationSettings(max_new_tokens=8, batch_size=3)
    batched = backend.generate(PROMPTS, settings)
    alone = [backend.generate([prompt], settings)[0] for prompt in PROMPTS]
    assert batched == alone
    assert all(batched)  # the random model did generate something to compare
    assert len(set(batched)) > 1  # and not one text for all, which would hide a mix-up


def test_stop_string_cuts_the_text_and_stops_generating(tiny_llama, tiny_tokenizer, monkeypatch):
    backend = TransformersBackend(tiny_llama, tiny_tokenizer)
    full = backend.generate([PROMPTS[0]], GenerationSettings(max_new_tokens=12))[0]
    stop = full[3:5]  # some text the model writes early on
    new_tokens = []
    generate = tiny_llama.generate

    def counting_generate(**kwargs):
        output = generate(**kwargs)
        new_tokens.append(output.shape[1] - kwargs["input_ids"].shape[1])
        return output

    monkeypatch.setattr(tiny_llama, "generate", counting_generate)
    [cut] = backend.generate([PROMPTS[0]], GenerationSettings(max_new_tokens=12, stop=(stop,)))
    assert cut == full[: full.index(stop)]
    assert new_tokens[0] < 12  # generation stopped at the stop string, not at the limit


def test_a_stop_string_across_the_end_of_the_prompt_does_not_stop(tiny_llama, tiny_tokenizer):
    """Only the new text counts (as in vLLM); transformers' stop_strings would stop here."""
    backend = TransformersBackend(tiny_llama, tiny_tokenizer)
    prompt = "Shares rose"
    full = backend.generate([prompt], GenerationSettings(max_new_tokens=8))[0]
    straddling = prompt[-2:] + full[0]  # "se" + the first generated character
    assert straddling not in full
    settings = GenerationSettings(max_new_tokens=8, stop=(straddling,))
    assert backend.generate([prompt], settings) == [full]


def test_sampling_is_reproducible_for_a_seed_and_leaves_the_callers_rng_alone(
    tiny_llama, tiny_tokenizer
):
    backend = TransformersBackend(tiny_llama, tiny_tokenizer)

    def sample(seed: int) -> list[str]:
        settings = GenerationSettings(max_new_tokens=8, temperature=1.0, seed=seed)
        return backend.generate(PROMPTS, settings)

    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = sample(7)
    assert torch.equal(torch.get_rng_state(), state)
    assert sample(7) == first
    assert sample(8) != first
    greedy = backend.generate(PROMPTS, GenerationSettings(max_new_tokens=8))
    assert first != greedy  # temperature 1 on a random model does sample


def test_the_callers_train_mode_is_restored(tiny_llama, tiny_tokenizer):
    backend = TransformersBackend(tiny_llama.train(), tiny_tokenizer)
    backend.generate(["Topic:"], GenerationSettings(max_new_tokens=2))
    assert tiny_llama.training
    tiny_llama.eval()
    backend.generate(["Topic:"], GenerationSettings(max_new_tokens=2))
    assert not tiny_llama.training


def test_no_prompts_no_work(tiny_llama, tiny_tokenizer):
    assert TransformersBackend(tiny_llama, tiny_tokenizer).generate([], GenerationSettings()) == []


def test_an_empty_prompt_is_refused(tiny_llama, tiny_tokenizer):
    backend = TransformersBackend(tiny_llama, tiny_tokenizer)
    with pytest.raises(DataError, match=r"positions \[1\] encode to no tokens"):
        backend.generate(["Topic:", ""], GenerationSettings(max_new_tokens=2))


def test_a_tokenizer_without_pad_token_is_refused(tiny_llama, tiny_tokenizer):
    tokenizer = tiny_tokenizer.__class__(
        tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="<|endoftext|>"
    )
    with pytest.raises(ModelError, match="no pad token"):
        TransformersBackend(tiny_llama, tokenizer)
