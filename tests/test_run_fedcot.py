"""`fedkt run` for FedCoT: the [fedcot] section, the eps sweep (inf run once for every
strategy), what a run writes and shows. The federated runs themselves are stubbed here; one
real simulation is in tests/federation/test_fedcot_apps.py."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from conftest import build_tiny_tokenizer
from fedkt.config import FedktConfig, build_config
from fedkt.data import load_examples
from fedkt.errors import ConfigError
from fedkt.experiments import fedcot as harness
from fedkt.experiments import harness as shared_harness
from fedkt.federation.fedcot import FedCoTResult, FedCoTSpec
from fedkt.privacy.retention import MEASURED_GRIDS
from fedkt.report import read_jsonl, to_strict_json, write_json, write_jsonl


def test_fedcot_section_parses_and_checks_its_values() -> None:
    config = build_config(
        {"algorithm": "fedcot", "fedcot": {"eps": [1, 3.0, math.inf], "strategies": ["aem"]}}
    )
    assert config.algorithm == "fedcot" and config.fedcot.eps == (1.0, 3.0, math.inf)
    settings = config.fedcot.settings(config.train, "aem", 3.0)
    assert (settings.strategy, settings.eps, settings.alpha) == ("aem", 3.0, 0.5)
    assert settings.rationale.max_new_tokens == config.fedcot.rationale_tokens
    assert (settings.noise_seed, settings.candidates) == (None, "classes")  # secrets by default
    chosen = build_config({"fedcot": {"noise_seed": 4, "candidates": "vocabulary"}}).fedcot
    assert (chosen.noise_seed, chosen.settings(config.train).candidates) == (4, "vocabulary")
    bad_values: list[dict[str, object]] = [
        {"eps": [-1.0]},
        {"strategies": []},
        {"alpha": 2.0},
        {"strategies": ["gauss"]},
        {"candidates": "words"},
        {"noise_seed": 1.5},
    ]
    for bad in bad_values:
        with pytest.raises(ConfigError):
            build_config({"fedcot": bad})
    with pytest.raises(ConfigError, match="did you mean 'eps'"):
        build_config({"fedcot": {"epss": [1.0]}})


def _fake_run(
    spec: FedCoTSpec, server_correct: Callable[[float, int], int] | None = None
) -> FedCoTResult:
    """What a simulation leaves: each client's per-row predictions and its own report (privacy
    numbers, scores) on its disk; the server sees counts only. Better at higher eps, so the
    sweep has a shape. ``server_correct(eps, client)``: how many of a client's 3 server
    rationales reach the gold answer. A utility sweep (``train_slm`` false) leaves no
    predictions and no "train" part."""
    eps = spec.settings.eps
    recovered = 1.0 if math.isinf(eps) else min(1.0, eps / 20)
    privacy = {
        "noise": "secrets",
        "candidates": spec.settings.candidates,
        "released_in_clear": "punctuation",
        "prompt_eps_mean": eps * 10,
        "prompt_eps_max": eps * 12 if spec.settings.strategy != "none" else math.inf,
        "protected_recovered": recovered,
        "prior_only_recovered": 0.125,
        "all_recovered": recovered,
        "gold_answer_leak_rate": 0.0,
        "pattern_unique_rate": 0.75,
    }
    right = len(spec.eval_data) if math.isinf(eps) else min(len(spec.eval_data), int(eps) // 3)
    rows = [
        {"id": ex.id, "gold": ex.gold, "pred": 0, "correct": int(i < right), "correct_norm": 0}
        for i, ex in enumerate(spec.eval_data)
    ]
    result = {"acc": right / len(rows), "n": float(len(rows))}
    for k in range(spec.num_clients):
        utility = {  # each client graded its 3 prompts' rationales with its own labels
            "prompts": 3,
            "server_rationale_correct": (
                server_correct(eps, k) if server_correct else 3 if math.isinf(eps) else k
            ),
            "recovered_rationale_correct": 3 if math.isinf(eps) else 1,
            "rationales_kept": 3 - k,
            "server_degenerate": k,
            "recovery_failed": 0,
        }
        report = {"privacy": privacy, "utility": utility}
        if spec.train_slm:
            write_jsonl(Path(str(spec.predictions_dir)) / f"slm-client{k}.jsonl", rows)
            report["train"] = result
        write_json(Path(str(spec.reports_dir)) / f"client{k}.json", report)
    n = spec.num_clients
    return FedCoTResult((3,) * n, (3,) * n, dict.fromkeys(range(n), 10),
                        dict.fromkeys(range(n), 20), 1.0)  # fmt: skip


def _arc_config(tmp_path: Path, data_dir: Path, fedcot: dict[str, Any]) -> FedktConfig:
    """A FedCoT run on 4 ARC-Easy validation rows and 9 train rows (2 clients x 3 + 3 public)
    with the [fedcot] section given."""
    data = {"dir": str(data_dir), "tasks": ["arc_easy"], "limit": 4, "train_limit": 9}
    return build_config(
        {
            "output_dir": str(tmp_path),
            "algorithm": "fedcot",
            "data": data,
            "federation": {"clients": 2},
            "fedcot": fedcot,
        }
    )


def test_the_sweep_runs_each_point_once_and_writes_table_and_plot(
    tmp_path: Path, shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, float]] = []

    def fake(spec: FedCoTSpec) -> FedCoTResult:
        calls.append((spec.settings.strategy, spec.settings.eps))
        assert spec.label_names == () and spec.settings.noise_seed is None  # ARC: choices private
        assert len(spec.pattern_reference) == 2251  # ARC-Easy's whole train split (public)
        return _fake_run(spec)

    monkeypatch.setattr(harness, "simulate_fedcot", fake)
    fedcot = {"eps": [1.0, 10.0, math.inf], "baselines": ["cot_upper_bound", "fedcot"]}
    config = _arc_config(tmp_path, shared_data_dir, fedcot)
    results = harness.run_fedcot_experiment(config)
    assert calls == [("none", math.inf), ("em", 1.0), ("em", 10.0), ("em", math.inf),
                     ("aem", 1.0), ("aem", 10.0)]  # fmt: skip
    baselines = results["tasks"]["arc_easy"]["baselines"]
    assert baselines["fedcot-aem@inf"]["same_run_as"] == "fedcot-em@inf"
    written = json.loads((tmp_path / "results.json").read_text())
    assert set(written["tasks"]["arc_easy"]["baselines"]) == set(baselines)
    rows = results["tasks"]["arc_easy"]["rows"]
    assert rows == {"clients": [3, 3], "public": 3, "dev": 200, "eval": 4}
    inf_point = baselines["fedcot-em@inf"]["slm"]
    assert (inf_point["acc"], inf_point["acc_stderr"], inf_point["n"]) == (1.0, 0.0, 4)
    low = baselines["fedcot-em@1"]["slm"]
    assert low["acc"] == 0.0 and (tmp_path / "predictions/arc_easy/fedcot-em@1").is_dir()
    tests = {t["claim"]: t for t in results["tasks"]["arc_easy"]["comparisons"]}
    assert tests["SLM cot_upper_bound > fedcot-em@1"]["test"] == "mcnemar-exact"
    assert tests["SLM cot_upper_bound > fedcot-em@1"]["p_value"] == pytest.approx(2 / 2**4)
    privacy = baselines["fedcot-em@10"]["privacy"]  # read back from the clients' reports
    assert privacy["prompt_eps_mean"] == 100.0 and privacy["noise"] == "secrets"
    assert baselines["fedcot-em@inf"]["privacy"]["prompt_eps_mean"] == math.inf
    assert baselines["fedcot-em@10"]["clients"] == [{"acc": 0.75, "n": 4.0}] * 2
    table = harness.privacy_table(results)
    assert "fedcot-em@10" in table and "inf" in table and "50.0" in table
    assert "secrets" in table and "12.5" in table and "75.0" in table
    plot = harness.plot_fedcot(results, tmp_path / "results.png")
    assert plot.stat().st_size > 0
    # utility where it moves: the clients' rationale grades, pooled over their 6 prompts
    utility = baselines["fedcot-em@10"]["utility"]
    assert (utility["prompts"], utility["server_rationale_correct"]) == (6, 1)
    assert utility["server_rationale_acc"] == pytest.approx(1 / 6)
    assert utility["server_rationale_acc_stderr"] == pytest.approx(math.sqrt(1 / 6 * 5 / 6 / 5))
    assert utility["recovered_rationale_acc"] == pytest.approx(2 / 6)
    assert (utility["rationales_kept"], utility["server_degenerate"]) == (5, 1)
    assert baselines["cot_upper_bound"]["utility"]["server_rationale_acc"] == 1.0
    assert "server rationale % ± s.e." in table and "16.7 ± 16.7" in table
    # repeated runs compose: per client the sum over the points run so far
    first = baselines["fedcot-em@1"]["composition"]
    assert first["points"] == ["cot_upper_bound", "fedcot-em@1"]
    assert first["eps_finite_per_client"] == [12.0, 12.0]
    assert first["in_clear_points"] == ["cot_upper_bound"]
    assert "sum" in first["note"]
    sweep = baselines["fedcot-aem@inf"]["composition"]  # the last point: the whole sweep
    assert sweep["eps_finite_per_client"] == [264.0, 264.0]  # 12 + 120, for EM and AEM
    assert sweep["in_clear_points"] == ["cot_upper_bound", "fedcot-em@inf"]
    assert sweep["eps_total_per_client"] == [math.inf, math.inf]
    assert written["tasks"]["arc_easy"]["baselines"]["fedcot-aem@inf"]["composition"] == (
        to_strict_json(sweep)
    )
    assert "repeated runs compose" in table and "client 0: 264" in table
    assert "in clear at cot_upper_bound, fedcot-em@inf" in table


def test_fedcot_section_takes_the_new_mechanisms_and_their_settings() -> None:
    config = build_config(
        {
            "algorithm": "fedcot",
            "fedcot": {
                "strategies": ["krr", "custext", "metric"],
                "cluster_size": 8,
                "custext_inner": "krr",
            },
        }
    )
    assert config.fedcot.strategies == ("krr", "custext", "metric")
    settings = config.fedcot.settings(config.train, "custext", 2.0)
    assert (settings.strategy, settings.cluster_size, settings.custext_inner) == (
        "custext",
        8,
        "krr",
    )
    assert config.fedcot.settings(config.train, "metric", 5.0).label == "metric@5"
    for bad in (
        {"cluster_size": 1},
        {"custext_inner": "gauss"},
        {"strategies": ["paraphrasex"]},
        {"paraphrase_tokens": 0},
    ):
        with pytest.raises(ConfigError):
            build_config({"fedcot": bad})


def test_measured_grids_sweep_each_strategy_s_own_eps_and_stores_never_mix(
    tmp_path: Path, shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, float, str]] = []

    def fake(spec: FedCoTSpec) -> FedCoTResult:
        calls.append(
            (spec.settings.strategy, spec.settings.eps, Path(str(spec.response_store)).name)
        )
        return _fake_run(spec)

    monkeypatch.setattr(harness, "simulate_fedcot", fake)
    fedcot = {
        "eps": [2.0, math.inf],
        "baselines": ["fedcot"],
        "strategies": ["krr", "custext", "paraphrase"],
        "measured_grids": True,
        "custext_inner": "krr",
        "paraphrase_tokens": 16,
        "paraphrase_logit_min": -5.0,
        "paraphrase_logit_max": 5.0,
    }
    config = _arc_config(tmp_path, shared_data_dir, fedcot)
    assert harness.strategy_grid(config.fedcot, "krr") == MEASURED_GRIDS["classes"]["krr"]
    settings = config.fedcot.settings(config.train, "paraphrase", 2.0)
    assert settings.paraphrase_settings.prompt_eps == 32.0
    assert settings.paraphrase_settings.sensitivity == 10.0
    results = harness.run_fedcot_experiment(config)
    grids = {
        "krr": MEASURED_GRIDS["classes"]["krr"],
        "custext": MEASURED_GRIDS["classes"]["custext(krr)"],
    }
    finite = [(s, e) for s, e, _ in calls]
    expected = [(s, e) for s in ("krr", "custext") for e in grids[s] if math.isfinite(e)]
    # inf runs once for the token mechanisms; the greedy paraphrase is a run of its own
    assert finite == [*expected[:6], ("krr", math.inf), *expected[6:], ("paraphrase", 2.0),
                      ("paraphrase", math.inf)]  # fmt: skip
    stores = {name for _, _, name in calls}
    assert len(stores) == len(calls)  # no two settings share answers
    assert "arc_easy-custext-K20-krr-1.5.jsonl" in stores
    assert "arc_easy-paraphrase-n16-logits-5_5-2.jsonl" in stores
    assert "same_run_as" in results["tasks"]["arc_easy"]["baselines"]["fedcot-custext@inf"]
    assert harness.plot_fedcot(results, tmp_path / "results.png").stat().st_size > 0


def test_a_utility_sweep_grades_rationales_per_grid_point_and_trains_no_slm(
    tmp_path: Path, shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train_slm = false with per-strategy grids: every point is graded (server rationale
    accuracy), none trains, and the half-gain eps is read off each strategy's curve."""
    calls: list[tuple[str, float]] = []

    def fake(spec: FedCoTSpec) -> FedCoTResult:
        assert spec.train_slm is False
        calls.append((spec.settings.strategy, spec.settings.eps))
        # per client: 0 of 3 at eps 0, 1 at 4, 2 at 8, 3 from 12 (and unperturbed)
        return _fake_run(spec, lambda eps, k: 3 if math.isinf(eps) else min(3, int(eps) // 4))

    monkeypatch.setattr(harness, "simulate_fedcot", fake)
    fedcot = {
        "strategies": ["em", "krr"],
        "baselines": ["fedcot"],
        "train_slm": False,
        "grids": {"em": [math.inf, 0, 4, 8, 12], "krr": [0, 4]},
    }
    config = _arc_config(tmp_path, shared_data_dir, fedcot)
    assert harness.strategy_grid(config.fedcot, "krr") == (0.0, 4.0)
    results = harness.run_fedcot_experiment(config)
    assert calls == [("em", math.inf), ("em", 0.0), ("em", 4.0), ("em", 8.0), ("em", 12.0),
                     ("krr", 0.0), ("krr", 4.0)]  # fmt: skip
    baselines = results["tasks"]["arc_easy"]["baselines"]
    assert all(outcome["slm"] is None for outcome in baselines.values())
    assert baselines["fedcot-em@8"]["utility"]["server_rationale_acc"] == pytest.approx(2 / 3)
    assert results["tasks"]["arc_easy"]["comparisons"] == []  # no SLM, nothing to test
    found = harness.half_gain(baselines)
    assert (found["em"]["low"], found["em"]["non_private"], found["em"]["eps"]) == (0, 1, 8.0)
    assert found["krr"]["eps"] is None  # krr's sweep stops below half the gain
    assert found["krr"]["low_from"] == "fedcot-krr@0"
    del baselines["fedcot-krr@0"]  # k-RR at eps 0 is EM at eps 0: uniform over the same set
    assert harness.half_gain(baselines)["krr"]["low_from"] == "fedcot-em@0"
    table = harness.privacy_table(results)
    assert "em: server rationale acc 0.0 % at eps 0 (fedcot-em@0), 100.0 % non-private" in table
    assert "first reached at eps 8" in table and "no eps of the sweep" in table
    assert harness.plot_fedcot(results, tmp_path / "results.png").stat().st_size > 0
    with pytest.raises(ConfigError, match=r"fedcot\.grids\.gauss"):
        build_config({"fedcot": {"grids": {"gauss": [1.0]}}})
    with pytest.raises(ConfigError, match=r"fedcot\.grids\.em"):
        build_config({"fedcot": {"grids": {"em": [-1.0]}}})


def test_fedkt_retention_prints_each_strategy_s_knees(
    tmp_path: Path,
    shared_data_dir: Path,
    tiny_pair: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fedkt.cli import main

    strategies = '["em", "krr", "custext", "metric"]'
    config = tmp_path / "retention.toml"
    config.write_text(
        f'algorithm = "fedcot"\n[data]\ndir = "{shared_data_dir}"\ntasks = ["arc_easy"]\n'
        f'[fedcot]\ndecoder = "{tiny_pair[1]}"\nstrategies = {strategies}\ncluster_size = 4\n'
    )
    assert main(["retention", "--config", str(config), "--questions", "20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.startswith("arc_easy")]
    assert [row[1] for row in rows] == ["em", "krr", "custext(em)", "metric"]
    assert all(row[-1] == "inf" for row in rows)  # every grid ends with the unperturbed point


class _Solver(torch.nn.Module):
    """A fake causal LM that solves every GSM8K question it is shown: it reads the last
    "Question: ...\\nRationale:" of its prompt and writes a chain of thought in paragraphs,
    ending on the row's answer (then a number that is not the answer), then EOS."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, answers: dict[str, str]) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # where inputs go
        self.tokenizer, self.answers = tokenizer, answers
        self.prompts: list[str] = []

    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: object
    ) -> torch.Tensor:
        rows = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            prompt = self.tokenizer.decode(ids[mask.bool()])
            self.prompts.append(prompt)
            question = prompt.rsplit("Question: ", 1)[1].split("\nRationale:", 1)[0]
            text = (
                " We take the numbers of the question one step at a time.\n\nEach step "
                f"follows.\n\nTherefore, the answer is {self.answers[question]}.\n\n(2 steps)"
            )
            new = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            rows.append(torch.cat([ids, torch.tensor([*new, self.tokenizer.eos_token_id])]))
        pad = self.tokenizer.pad_token_id
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad)


def test_gsm8k_is_scored_explain_then_answer_and_a_correct_solver_scores_100(
    tmp_path: Path, shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline that scored 0 everywhere: the LLM answers the server's request in its
    chat template, the SLM explains then answers; a model that solves every question must
    score 100 % on both."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}<|endoftext|>user: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )  # both models have one (a cut student keeps its teacher's): only the LLM's is used
    rows = load_examples("gsm8k", "train", shared_data_dir)
    answers = {row.question: row.answer for row in rows}
    models: dict[str, _Solver] = {}

    def load(config: object, name: str) -> tuple[_Solver, PreTrainedTokenizerFast]:
        models[name] = _Solver(tokenizer, answers)
        return models[name], tokenizer

    monkeypatch.setattr(harness, "load_for", load)
    monkeypatch.setattr(shared_harness, "load_for", load)
    config = build_config(
        {
            "output_dir": str(tmp_path),
            "algorithm": "fedcot",
            "data": {"dir": str(shared_data_dir), "tasks": ["gsm8k"], "split": "train[-6:]",
                     "limit": 6, "train_limit": 9},
            "federation": {"llm": "server-llm", "slm": "client-slm", "clients": 2},
            "eval": {"batch_size": 4, "max_new_tokens": 256},
            "fedcot": {"baselines": ["zero_shot"]},
        }
    )  # fmt: skip
    results = harness.run_fedcot_experiment(config)
    scores = results["tasks"]["gsm8k"]["baselines"]["zero_shot"]
    for role in ("llm", "slm"):
        assert (scores[role]["exact_match"], scores[role]["n"]) == (1.0, 6)
    llm, slm = models["server-llm"].prompts, models["client-slm"].prompts
    assert len(llm) == len(slm) == 6
    assert all(p.startswith("<|endoftext|>user: Solve the problem.") for p in llm)
    assert all(p.endswith("\nRationale:\nassistant:") for p in llm)  # the chat template
    assert all(p.startswith("Explain:\nQuestion: ") for p in slm)  # the SLM's own format
    assert all(p.endswith("\nRationale:") for p in slm)
    written = read_jsonl(tmp_path / "predictions" / "gsm8k" / "zero_shot" / "llm.jsonl")
    assert [row["pred"] for row in written] == [row.answer.replace(",", "") for row in rows[-6:]]
