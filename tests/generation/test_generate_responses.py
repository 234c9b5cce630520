"""generate_responses: answers keyed by id, resumable from a ResponseStore."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from fedkt.errors import DataError, ModelError
from fedkt.generation import (
    GenerationSettings,
    Request,
    Response,
    ResponseStore,
    TransformersBackend,
    generate_responses,
)

REQUESTS = [Request(f"q{i}", "prompt " + "x" * n) for i, n in enumerate([3, 9, 1, 7, 5])]


class CountingBackend:
    """Answers each prompt with a text derived from it, recording every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
        self.calls.append((list(prompts), settings.seed))
        return [f"answer to {prompt}" for prompt in prompts]

    @property
    def prompts(self) -> list[str]:
        return [prompt for prompts, _ in self.calls for prompt in prompts]


class ReversingBackend(CountingBackend):
    """Works through the prompts last to first, as a server might; returns them in order."""

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
        answers = {i: f"answer to {prompts[i]}" for i in reversed(range(len(prompts)))}
        self.calls.append((list(reversed(prompts)), settings.seed))
        return [answers[i] for i in range(len(prompts))]


class CrashingBackend(CountingBackend):
    def __init__(self, after_calls: int) -> None:
        super().__init__()
        self.after_calls = after_calls

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
        if len(self.calls) == self.after_calls:
            raise RuntimeError("pre-empted")
        return super().generate(prompts, settings)


EXPECTED = {r.id: f"answer to {r.prompt}" for r in REQUESTS}


def test_every_id_gets_its_own_answer_in_request_order():
    backend = ReversingBackend()
    result = generate_responses(backend, REQUESTS, GenerationSettings(batch_size=2))
    assert result == EXPECTED
    assert list(result) == [r.id for r in REQUESTS]
    first_batch = backend.calls[0][0]  # longest prompts first, so batches are of similar length
    assert sorted(first_batch) == sorted([REQUESTS[1].prompt, REQUESTS[3].prompt])


def test_only_unanswered_ids_are_generated():
    store = ResponseStore(None)
    store.add([Response("q0", "kept"), Response("q3", "kept too")])
    backend = CountingBackend()
    result = generate_responses(backend, REQUESTS, GenerationSettings(batch_size=2), store)
    assert sorted(backend.prompts) == sorted(r.prompt for r in REQUESTS if r.id not in {"q0", "q3"})
    assert result == EXPECTED | {"q0": "kept", "q3": "kept too"}
    assert store.answered() == result
    assert generate_responses(backend, REQUESTS[:2], GenerationSettings(), store) == {
        "q0": "kept",
        "q1": EXPECTED["q1"],
    }
    assert len(backend.calls) == 2  # nothing left to generate the second time


def test_a_crash_loses_only_the_batch_in_flight_and_resumes_identically(tmp_path):
    path = tmp_path / "answers.jsonl"
    settings = GenerationSettings(batch_size=2, temperature=0.7)
    with pytest.raises(RuntimeError, match="pre-empted"):
        generate_responses(CrashingBackend(after_calls=1), REQUESTS, settings, ResponseStore(path))
    assert len(ResponseStore(path).answered()) == 2  # the first batch was written

    resumed = CountingBackend()
    result = generate_responses(resumed, REQUESTS, settings, ResponseStore(path))
    uninterrupted = CountingBackend()
    assert result == generate_responses(uninterrupted, REQUESTS, settings) == EXPECTED
    assert len(resumed.prompts) == 3
    assert resumed.calls == uninterrupted.calls[1:]  # same batches, same seeds


def test_batches_get_distinct_seeds_derived_from_the_settings_seed():
    a, b = CountingBackend(), CountingBackend()
    generate_responses(a, REQUESTS, GenerationSettings(batch_size=2, seed=1))
    generate_responses(b, REQUESTS, GenerationSettings(batch_size=2, seed=2))
    seeds = [seed for _, seed in a.calls]
    assert len(set(seeds)) == len(seeds) == 3
    assert seeds != [seed for _, seed in b.calls]


def test_duplicate_request_ids_are_refused_by_name():
    requests = [*REQUESTS, Request("q1", "again"), Request("q4", "again")]
    with pytest.raises(DataError, match=r"request ids \['q1', 'q4'\] occur more than once"):
        generate_responses(CountingBackend(), requests, GenerationSettings())


def test_a_backend_that_loses_a_text_is_caught():
    class Lossy(CountingBackend):
        def generate(self, prompts, settings):
            return super().generate(prompts, settings)[1:]

    with pytest.raises(ModelError, match=r"Lossy\.generate returned 1 texts for 2 prompts"):
        generate_responses(Lossy(), REQUESTS[:2], GenerationSettings())


def test_sampled_generation_resumes_to_the_same_texts(tiny_llama, tiny_tokenizer, tmp_path):
    backend = TransformersBackend(tiny_llama, tiny_tokenizer)
    settings = GenerationSettings(max_new_tokens=6, temperature=1.0, batch_size=2, seed=3)
    requests = [Request(f"r{i}", p) for i, p in enumerate(["Topic:", "water rock", "Leaders", "a"])]
    uninterrupted = generate_responses(backend, requests, settings)
    assert generate_responses(backend, requests, settings) == uninterrupted  # reproducible

    class DiesAfterOneBatch:
        calls = 0

        def generate(self, prompts, settings):
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("pre-empted")
            return backend.generate(prompts, settings)

    store = ResponseStore(tmp_path / "answers.jsonl")
    with pytest.raises(RuntimeError, match="pre-empted"):
        generate_responses(DiesAfterOneBatch(), requests, settings, store)
    resumed = generate_responses(backend, requests, settings, ResponseStore(store.path))
    assert resumed == uninterrupted
