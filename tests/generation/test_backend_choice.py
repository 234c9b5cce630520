"""make_backend's choice, and VllmBackend's mapping of settings, against a fake vllm module.

vLLM itself cannot be installed here (no CUDA): these tests check fedkt's side of the
contract (lazy import, the parameters it passes, how it reads outputs), not vLLM.
"""

from __future__ import annotations

import ast
import sys
import types
from pathlib import Path

import pytest

import fedkt.generation
from fedkt.errors import ModelError
from fedkt.generation import (
    GenerationSettings,
    Request,
    TransformersBackend,
    VllmBackend,
    generate_responses,
    make_backend,
    vllm_available,
)
from fedkt.generation import backends as backends_module


def test_vllm_is_never_imported_at_module_import_time():
    package = Path(fedkt.generation.__file__).parent
    for source in package.glob("*.py"):
        for node in ast.parse(source.read_text()).body:  # top-level statements only
            names = [a.name for a in getattr(node, "names", [])] + [getattr(node, "module", "")]
            assert not any((n or "").split(".")[0] == "vllm" for n in names), source.name


def test_without_cuda_there_is_no_vllm_and_transformers_is_used(
    tiny_llama, tiny_tokenizer, monkeypatch
):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    vllm_available.cache_clear()
    try:
        assert not vllm_available()
    finally:
        vllm_available.cache_clear()
    monkeypatch.setattr(backends_module, "vllm_available", lambda: False)
    backend = make_backend(tiny_llama, tiny_tokenizer, model_path="/models/llm")
    assert isinstance(backend, TransformersBackend)
    with pytest.raises(ModelError, match="vLLM is not available and no transformers model"):
        make_backend(None, None, model_path="/models/llm")


def test_vllm_is_used_when_preferred_available_and_given_a_path(
    tiny_llama, tiny_tokenizer, monkeypatch
):
    monkeypatch.setattr(backends_module, "vllm_available", lambda: True)
    monkeypatch.setattr(
        backends_module, "VllmBackend", lambda path, chat_template: ("vllm", path, chat_template)
    )
    assert make_backend(None, None, model_path="/models/llm") == ("vllm", "/models/llm", False)
    chat = make_backend(None, None, model_path="/models/llm", chat_template=True)
    assert chat == ("vllm", "/models/llm", True)
    off = make_backend(tiny_llama, tiny_tokenizer, prefer_vllm=False, model_path="/models/llm")
    assert isinstance(off, TransformersBackend)
    assert isinstance(make_backend(tiny_llama, tiny_tokenizer), TransformersBackend)


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in `vllm` module: LLM echoes each prompt upper-cased, plus a stop string."""
    module = types.ModuleType("vllm")
    seen: dict[str, object] = {}

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        def __init__(self, model, **options):
            seen["engine"] = (model, options)

        def generate(self, prompts, params, use_tqdm=True):
            seen["params"] = [p.kwargs for p in params]
            seen["prompts"] = prompts
            out = types.SimpleNamespace
            texts = [p if isinstance(p, str) else repr(p) for p in prompts]
            return [out(outputs=[out(text=t.upper() + " STOP tail")]) for t in texts]

        def get_tokenizer(self):
            return seen["tokenizer"]

    vars(module).update(SamplingParams=SamplingParams, LLM=LLM)
    monkeypatch.setitem(sys.modules, "vllm", module)
    return seen


def test_vllm_backend_passes_the_settings_and_keeps_prompt_order(fake_vllm):
    backend = VllmBackend("/models/llm", dtype="bfloat16")
    assert fake_vllm["engine"] == ("/models/llm", {"dtype": "bfloat16"})
    settings = GenerationSettings(max_new_tokens=7, temperature=0.5, top_p=0.9, stop=(" STOP",))
    requests = [Request("x", "short"), Request("y", "a longer prompt")]
    assert generate_responses(backend, requests, settings) == {"x": "SHORT", "y": "A LONGER PROMPT"}
    first, second = fake_vllm["params"]
    assert first["temperature"] == 0.5 and first["top_p"] == 0.9 and first["max_tokens"] == 7
    assert first["stop"] == [" STOP"] and first["top_k"] == -1
    assert first["seed"] != second["seed"]  # prompts do not share random draws
    backend.generate(["p"], GenerationSettings())
    assert fake_vllm["params"][0]["seed"] is None  # greedy draws nothing


def test_vllm_backend_without_vllm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ModelError, match=r"pip install 'fedkt\[vllm\]'"):
        VllmBackend("/models/llm")


def test_vllm_backend_sends_chat_templated_token_ids_when_asked(fake_vllm, tiny_tokenizer):
    chat = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer)
    chat.chat_template = "{% for m in messages %}user: {{ m['content'] }}\n{% endfor %}bot:"
    fake_vllm["tokenizer"] = chat
    backend = VllmBackend("/models/llm", chat_template=True)
    assert backend.chat_template
    backend.generate(["Which gas?"], GenerationSettings())
    [sent] = fake_vllm["prompts"]
    assert chat.decode(sent["prompt_token_ids"]) == "user: Which gas?\nbot:"
    plain = VllmBackend("/models/llm")  # the default: raw prompts, no tokenizer needed
    assert not plain.chat_template
    plain.generate(["Which gas?"], GenerationSettings())
    assert fake_vllm["prompts"] == ["Which gas?"]
