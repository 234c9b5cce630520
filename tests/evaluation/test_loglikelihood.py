"""score_choices against a hand-written loop and against lm-eval's own HFLM."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from fedkt.data import Example
from fedkt.errors import DataError
from fedkt.evaluation import score_choices

EXAMPLES = [
    Example(
        "gas",
        "Question: Which gas do plants absorb from the air?\nAnswer:",
        ("carbon dioxide", "oxygen", "helium", "water"),
        0,
    ),
    Example("boil", "Question: What is the boiling point of water?\nAnswer:", ("100", "0"), 0),
    Example(
        "topic",
        "Article: The team won the final match.\nTopic:",
        ("Sports", "World", "Business"),
        0,
    ),
    # Same context as "gas" with other choices: requests from two examples share one prefill.
    Example(
        "gas-again",
        "Question: Which gas do plants absorb from the air?\nAnswer:",
        ("nitrogen", "sunlight energy", "rock", "soil", "food"),
        2,
    ),
]


def hand_scores(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, ex: Example) -> list[float]:
    """One full-sequence forward per choice; sum log-softmax over the continuation tokens."""
    scores = []
    context_ids = tok.encode(ex.context)
    for choice in ex.choices:
        full = tok.encode(ex.context + " " + choice)
        with torch.no_grad():
            logits = model(torch.tensor([full])).logits[0]
        total = 0.0
        for pos in range(len(context_ids), len(full)):
            total += torch.log_softmax(logits[pos - 1].double(), -1)[full[pos]].item()
        scores.append(total)
    return scores


def test_matches_a_hand_computed_loop(tiny_llama, tiny_tokenizer):
    got = score_choices(tiny_llama, tiny_tokenizer, EXAMPLES, batch_size=5)
    for ex, scores in zip(EXAMPLES, got, strict=True):
        assert scores == pytest.approx(hand_scores(tiny_llama, tiny_tokenizer, ex), abs=1e-4)


def test_does_not_depend_on_batch_size(tiny_llama, tiny_tokenizer):
    reference = score_choices(tiny_llama, tiny_tokenizer, EXAMPLES, batch_size=1)
    for batch_size in (2, 7, 64):
        got = score_choices(tiny_llama, tiny_tokenizer, EXAMPLES, batch_size=batch_size)
        for row, ref in zip(got, reference, strict=True):
            assert row == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("max_length", [None, 20])
def test_matches_lm_eval_hflm(tiny_llama, tiny_tokenizer, max_length):
    """Same numbers as lm-eval, including its left truncation of long pairs (max_length=20)."""
    huggingface = pytest.importorskip("lm_eval.models.huggingface")
    from lm_eval.api.instance import Instance

    if max_length is not None:
        tiny_llama.config.max_position_embeddings = max_length  # what both sides read
    lm = huggingface.HFLM(pretrained=tiny_llama, tokenizer=tiny_tokenizer, batch_size=3)
    requests = [
        Instance("loglikelihood", doc={}, arguments=(ex.context, " " + choice), idx=i)
        for ex in EXAMPLES
        for i, choice in enumerate(ex.choices)
    ]
    expected = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    got = [s for row in score_choices(tiny_llama, tiny_tokenizer, EXAMPLES) for s in row]
    assert got == pytest.approx(expected, abs=1e-4)


def test_refuses_generative_examples(tiny_llama, tiny_tokenizer):
    gsm = Example("g", "Question: 1+1?\nAnswer:", (), -1, target="2 #### 2", answer="2")
    with pytest.raises(DataError, match="'g' is generative"):
        score_choices(tiny_llama, tiny_tokenizer, [EXAMPLES[0], gsm])


def test_scores_in_eval_mode_and_restores_training_mode(tiny_llama, tiny_tokenizer):
    seen: list[bool] = []
    layer = tiny_llama.model.layers[0]
    layer.register_forward_hook(lambda module, _args, _out: seen.append(module.training))
    tiny_llama.train()
    score_choices(tiny_llama, tiny_tokenizer, EXAMPLES[:1])
    assert seen and not any(seen)
    assert tiny_llama.training


def test_scores_a_peft_model(tiny_llama, tiny_tokenizer):
    """A fresh LoRA adapter (B = 0) leaves the function unchanged, so the scores too."""
    from peft import LoraConfig, get_peft_model

    expected = score_choices(tiny_llama, tiny_tokenizer, EXAMPLES)
    peft_model = get_peft_model(tiny_llama, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    got = score_choices(peft_model, tiny_tokenizer, EXAMPLES)
    for row, ref in zip(got, expected, strict=True):
        assert row == pytest.approx(ref, abs=1e-5)
