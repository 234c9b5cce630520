"""DP-Prompt paraphrasing: the per-token distribution against its closed form, the eps bound
checked exhaustively on a small vocabulary, the sampler by chi-square, and the loop on a tiny
random Llama (fixed length, seeds, the naive definition, batch independence)."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import build_tiny_llama
from fedkt.errors import ConfigError
from fedkt.privacy import join_perturbed, privacy_summary, secure_generator
from fedkt.privacy.paraphrase import (
    DEFAULT_TEMPLATE,
    RELEASED_IN_CLEAR,
    Paraphraser,
    ParaphraseSettings,
    guarantee,
    max_token_probability,
    paraphrase,
    sample_step,
    step_probabilities,
)

TEXTS = [
    "Which gas do plants absorb from the air?",
    "",
    "Natalia sold 48 clips in April and half as many in May. How many clips did she sell?",
    "{text} braces {0} stay literal",
    "odd   spacing\tand unicode café ☀",
]
# The tiny random Llama's logits have a spread of ~0.1: clip around that, with a budget that
# makes the distribution far from uniform.
MODEL_SETTINGS = ParaphraseSettings(
    eps_per_token=20.0, new_tokens=6, logit_min=-0.3, logit_max=0.3, batch_size=2
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def chi2_critical(df: int, z: float = 3.09) -> float:
    """Wilson-Hilferty upper quantile of chi-square(df); z = 3.09 is the 0.999 quantile."""
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + z * math.sqrt(h)) ** 3


def chi2_statistic(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """The statistic and its degrees of freedom, cells with expected count < 5 pooled."""
    expected = probs.double() * counts.sum()
    small = expected < 5
    obs = torch.cat([counts.double()[~small], counts.double()[small].sum().reshape(1)])
    exp = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    return float(((obs - exp) ** 2 / exp).sum()), int(keep.sum()) - 1


def worst_log_ratio(logits: torch.Tensor, settings: ParaphraseSettings) -> float:
    """max over output y and inputs x, x' (rows of ``logits``) of ln P(y|x) - ln P(y|x')."""
    log_p = step_probabilities(logits, settings).log()
    return float((log_p.max(dim=0).values - log_p.min(dim=0).values).max())


def adversarial_loss(eps: float, vocab: int) -> float:
    """The exact worst privacy loss of one step over a vocabulary of ``vocab`` tokens: y at
    logit_max for x and at logit_min for x', every other token the opposite. With a = eps/2,
    a + ln((1 + (V-1) e^a) / (e^a + V - 1)), which is < eps and -> eps as V grows."""
    a = eps / 2.0
    return a + math.log((1.0 + (vocab - 1) * math.exp(a)) / (math.exp(a) + vocab - 1))


# ---- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"eps_per_token": -1.0}, "eps_per_token"),
        ({"eps_per_token": math.nan}, "eps_per_token"),
        ({"eps_per_token": "3"}, "eps_per_token"),
        ({"eps_per_token": True}, "eps_per_token"),
        ({"new_tokens": 0}, "new_tokens"),
        ({"new_tokens": 2.5}, "new_tokens"),
        ({"new_tokens": True}, "new_tokens"),
        ({"batch_size": 0}, "batch_size"),
        ({"logit_min": 1.0, "logit_max": 1.0}, "logit_min"),
        ({"logit_min": 2.0, "logit_max": 1.0}, "logit_min"),
        ({"logit_min": -math.inf}, "logit_min"),
        ({"logit_max": math.nan}, "logit_max"),
        ({"prompt_template": "Paraphrase:"}, "prompt_template"),
        ({"prompt_template": "{text} and {text}"}, "prompt_template"),
        ({"prompt_template": " {text}\n"}, "prompt_template"),
    ],
)
def test_settings_are_validated(changes: dict[str, Any], match: str) -> None:
    arguments: dict[str, Any] = {"eps_per_token": 1.0, **changes}
    with pytest.raises(ConfigError, match=match):
        ParaphraseSettings(**arguments)


def test_settings_derive_temperature_and_prompt_budget() -> None:
    settings = ParaphraseSettings(eps_per_token=4.0, new_tokens=10, logit_min=-3, logit_max=5)
    assert settings.sensitivity == 8.0
    assert settings.temperature == 2 * 8.0 / 4.0
    assert settings.prompt_eps == 40.0
    assert ParaphraseSettings(eps_per_token=0.0).temperature == math.inf
    assert ParaphraseSettings(eps_per_token=math.inf).temperature == 0.0
    assert ParaphraseSettings(eps_per_token=math.inf).prompt_eps == math.inf
    rendered = settings.render("a {text} {0} b")  # replaced literally, not str.format
    assert rendered == DEFAULT_TEMPLATE.replace("{text}", "a {text} {0} b")


# ---- the per-token distribution in closed form ---------------------------------------------


def test_step_probabilities_closed_form() -> None:
    settings = ParaphraseSettings(eps_per_token=3.0, logit_min=-1.0, logit_max=2.0)
    logits = torch.tensor([[0.5, -7.0, 9.0, math.nan, math.inf, -math.inf, 1.25]])
    clipped = [0.5, -1.0, 2.0, -1.0, 2.0, -1.0, 1.25]  # NaN -> min, ±inf -> the bound
    temperature = 2 * 3.0 / 3.0
    weights = [math.exp(u / temperature) for u in clipped]
    probs = step_probabilities(logits, settings)
    assert probs.dtype == torch.float64 and probs.shape == (1, 7)
    assert probs[0].tolist() == pytest.approx([w / sum(weights) for w in weights], rel=1e-12)


def test_step_probabilities_limits() -> None:
    logits = torch.tensor([[0.3, 5.0, math.nan, 5.0, -2.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    uniform = step_probabilities(logits, ParaphraseSettings(eps_per_token=0.0))
    assert uniform.tolist() == [[0.2] * 5] * 2
    greedy = step_probabilities(logits, ParaphraseSettings(eps_per_token=math.inf))
    assert greedy.tolist() == [[0, 1, 0, 0, 0], [1, 0, 0, 0, 0]]  # raw argmax, first of ties
    huge = step_probabilities(logits * 1e30, ParaphraseSettings(eps_per_token=1e12))
    assert not bool(huge.isnan().any()) and huge.sum(-1).tolist() == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("eps", [0.5, 2.0, 8.0, 30.0])
def test_eps_bound_holds_exhaustively_on_a_small_vocabulary(eps: float) -> None:
    """Every logit vector over 4 tokens from a grid that holds both clipping bounds, values
    inside and far outside the range, ±inf and NaN (9^4 inputs, all ordered pairs): the worst
    ln P(y|x) - ln P(y|x') is exactly the adversarial closed form, and below eps."""
    low, high = -2.0, 1.0
    settings = ParaphraseSettings(eps_per_token=eps, logit_min=low, logit_max=high)
    grid = [-1e9, -math.inf, low, -1.2, -0.5, high, 1e9, math.inf, math.nan]
    inputs = torch.tensor(list(itertools.product(grid, repeat=4)), dtype=torch.float64)
    worst = worst_log_ratio(inputs, settings)
    assert worst == pytest.approx(adversarial_loss(eps, 4), rel=1e-9, abs=1e-12)
    assert worst <= eps
    largest = float(step_probabilities(inputs, settings).max())
    assert largest == pytest.approx(max_token_probability(settings, 4), rel=1e-12)


def test_eps_bound_holds_for_random_and_adversarial_logits() -> None:
    """20k random logit vectors over 6 tokens (most far outside the range) plus every vector
    with each token at one bound (2^6): all ordered pairs stay within eps."""
    settings = ParaphraseSettings(eps_per_token=2.5, logit_min=-4.0, logit_max=6.0)
    random = torch.randn(20_000, 6, generator=gen(1), dtype=torch.float64) * 20
    corners = torch.tensor(list(itertools.product([-4.0, 6.0], repeat=6)), dtype=torch.float64)
    assert worst_log_ratio(torch.cat([random, corners]), settings) <= 2.5 + 1e-12
    assert worst_log_ratio(corners, settings) == pytest.approx(adversarial_loss(2.5, 6))


def test_the_bound_is_tight_as_the_vocabulary_grows() -> None:
    """Clipping is what the guarantee rests on: over a GPT-2-sized vocabulary the worst pair
    (one token at each end, swapped) spends almost all of eps, and never more."""
    eps, vocab = 2.0, 50_257
    settings = ParaphraseSettings(eps_per_token=eps, logit_min=0.0, logit_max=4.0)
    x = torch.zeros(vocab, dtype=torch.float64)
    x[0] = 4.0
    pair = torch.stack([x, 4.0 - x])
    assert worst_log_ratio(pair, settings) == pytest.approx(adversarial_loss(eps, vocab))
    assert eps - 1e-3 < adversarial_loss(eps, vocab) <= eps


def test_max_token_probability_closed_form() -> None:
    settings = ParaphraseSettings(eps_per_token=10.0)
    assert max_token_probability(settings, 1) == 1.0
    expected = math.exp(5.0) / (math.exp(5.0) + 49_151)
    assert max_token_probability(settings, 49_152) == pytest.approx(expected)
    assert max_token_probability(ParaphraseSettings(eps_per_token=0.0), 8) == 0.125
    assert max_token_probability(ParaphraseSettings(eps_per_token=math.inf), 8) == 1.0
    with pytest.raises(ConfigError, match="vocab_size"):
        max_token_probability(settings, 0)


def test_sampler_matches_the_closed_form_by_chi_square() -> None:
    settings = ParaphraseSettings(eps_per_token=3.0, logit_min=-1.0, logit_max=1.0)
    logits = torch.tensor([0.9, -5.0, 0.1, math.nan, 0.5, 3.0, -0.2, -0.95])
    draws = 60_000
    tokens = sample_step(logits.expand(draws, -1), settings, gen(7))
    counts = torch.bincount(tokens, minlength=8)
    statistic, df = chi2_statistic(counts, step_probabilities(logits, settings))
    assert df == 7
    assert statistic < chi2_critical(df)


# ---- the loop on a tiny random Llama ------------------------------------------------------


def run(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    texts: list[str] | None = None,
    settings: ParaphraseSettings = MODEL_SETTINGS,
    seed: int | None = 0,
) -> list[Any]:
    generator = secure_generator() if seed is None else gen(seed)
    return paraphrase(TEXTS if texts is None else texts, model, tokenizer, settings, generator)


def test_every_paraphrase_draws_exactly_new_tokens(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    out = run(tiny_llama, tiny_tokenizer)
    assert len(out) == len(TEXTS)
    n, eps = MODEL_SETTINGS.new_tokens, MODEL_SETTINGS.eps_per_token
    for result, text in zip(out, TEXTS, strict=True):
        assert len(result.output_ids) == n
        assert result.source_ids == tuple(
            tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        )
        record = result.record
        assert record.strategy == "paraphrase" and record.eps_per_token == (eps,) * n
        assert record.tokens_perturbed == n and record.tokens_passed_through == 0
        assert record.prompt_eps == n * eps
    assert paraphrase([], tiny_llama, tiny_tokenizer, MODEL_SETTINGS, gen()) == []


def test_the_same_seed_reproduces_and_other_seeds_differ(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    first, again = run(tiny_llama, tiny_tokenizer), run(tiny_llama, tiny_tokenizer)
    assert [p.output_ids for p in first] == [p.output_ids for p in again]
    assert [p.text for p in first] == [p.text for p in again]
    other = run(tiny_llama, tiny_tokenizer, seed=1)
    secure = [run(tiny_llama, tiny_tokenizer, seed=None) for _ in range(2)]
    draws = [first, other, *secure]
    ids = [tuple(p.output_ids for p in d) for d in draws]
    assert len(set(ids)) == len(ids)  # 5 x 6 draws over ~300 tokens: a collision is ~1e-60


def test_the_loop_is_the_naive_definition(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    """Batch of one: the cached loop draws what a full forward pass per step, sampled with
    `step_probabilities` and the same generator, draws."""
    settings = ParaphraseSettings(
        eps_per_token=20.0, new_tokens=8, logit_min=-0.3, logit_max=0.3, batch_size=1
    )
    text = TEXTS[2]
    (result,) = run(tiny_llama, tiny_tokenizer, [text], settings, seed=3)
    generator = gen(3)
    ids = tiny_tokenizer(settings.render(text))["input_ids"]
    expected: list[int] = []
    with torch.no_grad():
        for _ in range(settings.new_tokens):
            logits = tiny_llama(torch.tensor([ids + expected])).logits[:, -1]
            expected.append(int(sample_step(logits, settings, generator)))
            if expected[-1] == tiny_tokenizer.eos_token_id:
                break
    pad = tiny_tokenizer.pad_token_id
    assert list(result.output_ids) == expected + [pad] * (settings.new_tokens - len(expected))


def test_a_row_does_not_depend_on_its_batch(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    """Greedy (eps inf): left padding, positions and the cache give each text the same
    paraphrase alone as beside texts of other lengths."""
    greedy = ParaphraseSettings(
        eps_per_token=math.inf, new_tokens=6, logit_min=-0.3, logit_max=0.3, batch_size=5
    )
    together = run(tiny_llama, tiny_tokenizer, settings=greedy)
    alone = [run(tiny_llama, tiny_tokenizer, [t], greedy)[0] for t in TEXTS]
    assert [p.output_ids for p in together] == [p.output_ids for p in alone]
    assert all(p.record.prompt_eps == math.inf for p in together)


class Recording(nn.Module):
    """A model that keeps the last-position logits of every forward call."""

    def __init__(self, inner: LlamaForCausalLM) -> None:
        super().__init__()
        self.inner, self.seen = inner, []
        self.generation_config = inner.generation_config

    def forward(self, **kwargs: Any) -> Any:
        out = self.inner(**kwargs)
        self.seen.append(out.logits[:, -1].clone())
        return out


def test_each_row_sees_its_own_logits_in_a_padded_batch(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    """The logits the cached, left-padded loop samples from at every step are those of a full
    forward pass over that row's prompt and its drawn tokens alone (positions, masks, cache)."""
    settings = replace(MODEL_SETTINGS, batch_size=len(TEXTS))
    model = Recording(tiny_llama)
    out = run(model, tiny_tokenizer, settings=settings, seed=2)
    prompts = [tiny_tokenizer(settings.render(t))["input_ids"] for t in TEXTS]
    order = sorted(range(len(TEXTS)), key=lambda i: -len(prompts[i]))  # the loop's batch order
    eos = tiny_tokenizer.eos_token_id
    checked = 0
    for row, index in enumerate(order):
        drawn = list(out[index].output_ids)
        steps = drawn.index(eos) + 1 if eos in drawn else len(drawn)
        with torch.no_grad():
            full = tiny_llama(torch.tensor([prompts[index] + drawn[: steps - 1]])).logits[0]
        expected = full[len(prompts[index]) - 1 :]
        seen = torch.stack([model.seen[t][row] for t in range(steps)])
        torch.testing.assert_close(seen, expected, atol=1e-5, rtol=1e-4)
        checked += steps
    assert checked > len(TEXTS)


def teacher_forced_log_prob(
    model: nn.Module, prompt: list[int], output: list[int], settings: ParaphraseSettings
) -> float:
    """ln P(output | prompt) under the mechanism, by one full forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + output])).logits[0, len(prompt) - 1 : -1]
    log_p = step_probabilities(logits, settings).log()
    return float(log_p[torch.arange(len(output)), torch.tensor(output)].sum())


def test_the_whole_paraphrase_is_n_eps_ldp_for_any_two_texts(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    """For sampled outputs and every pair of inputs (different lengths, the empty text), the
    sequence log-likelihood ratio stays within new_tokens x eps_tok."""
    settings = MODEL_SETTINGS
    prompts = [tiny_tokenizer(settings.render(t))["input_ids"] for t in TEXTS]
    eos = tiny_tokenizer.eos_token_id
    for result in run(tiny_llama, tiny_tokenizer, seed=5):
        output = list(result.output_ids)
        output = output[: output.index(eos) + 1] if eos in output else output
        scores = [teacher_forced_log_prob(tiny_llama, p, output, settings) for p in prompts]
        assert max(scores) - min(scores) <= settings.prompt_eps
        assert max(scores) - min(scores) > 0  # the inputs do move the output distribution


def test_the_first_token_matches_the_model_s_closed_form_by_chi_square(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    settings = ParaphraseSettings(
        eps_per_token=20.0, new_tokens=1, logit_min=-0.3, logit_max=0.3, batch_size=4000
    )
    text = TEXTS[0]
    out = run(tiny_llama, tiny_tokenizer, [text] * 4000, settings, seed=11)
    counts = torch.bincount(torch.tensor([p.output_ids[0] for p in out]), minlength=300)
    prompt = torch.tensor([tiny_tokenizer(settings.render(text))["input_ids"]])
    with torch.no_grad():
        probs = step_probabilities(tiny_llama(prompt).logits[0, -1], settings)
    assert float(probs.max()) > 5 / 300  # far from uniform: the test can see a wrong T
    statistic, df = chi2_statistic(counts, probs)
    assert statistic < chi2_critical(df)


class ForceEos(nn.Module):
    """A model whose EOS logit is pushed to the top at one step (counting forward calls)."""

    def __init__(self, inner: LlamaForCausalLM, eos: int, at_step: int) -> None:
        super().__init__()
        self.inner, self.eos, self.at_step, self.calls = inner, eos, at_step, 0
        self.generation_config = inner.generation_config

    def forward(self, **kwargs: Any) -> Any:
        out = self.inner(**kwargs)
        if self.calls == self.at_step:
            out.logits[:, -1, self.eos] = 1e4
        self.calls += 1
        return out


def test_after_an_eos_the_row_is_padded_and_the_text_ends(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    greedy = ParaphraseSettings(eps_per_token=math.inf, new_tokens=6, batch_size=1)
    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    (plain,) = run(tiny_llama, tiny_tokenizer, [TEXTS[0]], greedy)
    model = ForceEos(tiny_llama, eos, at_step=2)
    (stopped,) = run(model, tiny_tokenizer, [TEXTS[0]], greedy)
    assert stopped.output_ids == (*plain.output_ids[:2], eos, pad, pad, pad)
    assert model.calls == 3  # nothing left to draw after the only row stopped
    assert stopped.text == tiny_tokenizer.decode(plain.output_ids[:2]).strip()
    assert stopped.record.tokens_perturbed == 6  # the budget counts the fixed length


def test_only_tokens_the_tokenizer_knows_are_drawn(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    """A model with 20 spare output rows (padded embeddings) never emits them: the output
    vocabulary is the public min(model, tokenizer). Uniform draws would hit one ~w.p. 1."""
    model = build_tiny_llama(len(tiny_tokenizer) + 20)
    uniform = ParaphraseSettings(eps_per_token=0.0, new_tokens=20, batch_size=10)
    out = run(model, tiny_tokenizer, ["a question"] * 10, uniform)
    assert max(t for p in out for t in p.output_ids) < len(tiny_tokenizer)


def test_the_model_s_mode_is_restored(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    tiny_llama.train()
    run(tiny_llama, tiny_tokenizer, [TEXTS[0]])
    assert tiny_llama.training


# ---- what FedCoT's client would use ---------------------------------------------------------


def test_paraphraser_fits_the_perturber_interface_and_the_report(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    paraphraser = Paraphraser(tiny_llama, tiny_tokenizer, MODEL_SETTINGS)
    question, choices = paraphraser.perturb(TEXTS[:2], 5.0, gen())
    n = MODEL_SETTINGS.new_tokens
    assert question.record.prompt_eps == n * 5.0
    joined = join_perturbed([question, choices], question.text + "\n" + choices.text)
    assert joined.record.prompt_eps == 2 * n * 5.0
    summary = privacy_summary([joined.record])
    assert summary["strategies"] == ["paraphrase"]
    assert summary["tokens_passed_through"] == 0 and summary["prompt_eps_max"] == 10 * n
    words = guarantee(MODEL_SETTINGS, len(tiny_tokenizer))
    assert words["released_in_clear"] == RELEASED_IN_CLEAR
    assert words["prompt_eps"] == MODEL_SETTINGS.prompt_eps
    assert words["max_token_probability"] == max_token_probability(MODEL_SETTINGS, 300)
