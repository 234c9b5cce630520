"""FedCoLLM without public data: the server's auxiliary set D_a is the clients' DP synthetic
samples. One real simulation (Ray, two clients, one round, tiny models) with every message a
client sends captured and searched for private text, then a resumed run that must not ask the
clients again; the spec's checks run without any model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from flwr.app import Message
from transformers import PreTrainedTokenizerFast

from conftest import Recorder, find_leaks, save_tiny_pair
from fedkt.algorithms.fedcollm import DPAuxSettings, FedCoLLMSettings
from fedkt.data import Example
from fedkt.data.formats import LabelFormat
from fedkt.errors import ConfigError, FedktError
from fedkt.federation import keys
from fedkt.federation.fedcollm import (
    AuxSet,
    FederationResult,
    FederationSpec,
    _aux_set,
    aux_path,
    simulate_fedcollm,
)
from fedkt.federation.reports import read_report, report_path
from fedkt.generation.synthesis import SynthesisSettings
from fedkt.models import LoraSettings
from fedkt.report import read_json, write_json
from fedkt.training import TrainSettings
from fedkt.training.dp_generator import DPSettings

TOPICS = ("World", "Sports", "Business", "Science and Technology")
CANARY = "zebra quartz canary seventeen marmalade"
PRIVATE = [  # (text, gold): what must never leave a client
    ("Leaders met to discuss the peace treaty in the capital.", 0),
    ("The team won the final match of the season at home.", 1),
    (f"My secret note says {CANARY} today.", 2),
    ("Scientists launched a new satellite to study the sun.", 3),
    ("Shares rose after the bank reported record profits.", 2),
    ("The striker scored twice in the derby on Sunday.", 1),
]
EVAL = [("A rocket carried two astronauts to the station.", 3)]
SETTINGS = FedCoLLMSettings(
    rounds=1,
    kd_steps=2,
    kd_batch_size=2,
    llm_lr=1e-2,
    slm_lr=1e-2,
    aux_source="dp_synthetic",
    dp_aux=DPAuxSettings(
        dp=DPSettings(target_epsilon=8.0, delta=1e-2, batch_size=2, max_length=48),
        per_label=2,
        synthesis=SynthesisSettings(
            max_new_tokens=12, batch_size=8, min_words=1, max_draws_factor=2
        ),
        label_field="Topic",
    ),
    client=TrainSettings(epochs=1, lr=1e-2, batch_size=2, warmup_ratio=0.0, max_length=64),
    lora=LoraSettings(r=4, alpha=8, dropout=0.0),
)


def _examples(rows: list[tuple[str, int]], tag: str) -> tuple[Example, ...]:
    return tuple(
        Example(
            id=f"private-row-{tag}{i}",
            context=f"Article: {text}\nTopic:",
            choices=TOPICS,
            gold=gold,
            question=text,
        )
        for i, (text, gold) in enumerate(rows)
    )


CLIENT_DATA = (_examples(PRIVATE[:3], "a"), _examples(PRIVATE[3:], "b"))
FORMAT = LabelFormat.of(_examples(EVAL, "e"))  # what the server reads off its eval rows


@pytest.fixture(scope="module")
def spec(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerFast
) -> FederationSpec:
    root = tmp_path_factory.mktemp("models")
    save_tiny_pair(root, tiny_tokenizer)
    out = tmp_path_factory.mktemp("out")
    return FederationSpec(
        llm=str(root / "llm"),
        slm=str(root / "slm"),
        client_data=CLIENT_DATA,
        public_data=(),  # no public data at all
        settings=SETTINGS,
        dtype="float32",
        device="cpu",
        client_cpus=os.cpu_count() or 1,  # one Ray actor: one torch import
        checkpoint=str(out / "checkpoint.safetensors"),
        aux_format=FORMAT,
        reports_dir=str(out / "reports"),
    )


def _simulate(
    spec: FederationSpec, tmp_path_factory: pytest.TempPathFactory
) -> tuple[FederationResult, list[Message]]:
    recorder = Recorder(tmp_path_factory.mktemp("sent"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FLWR_HOME", str(tmp_path_factory.mktemp("flwr-home")))
        env.setenv("FLWR_TELEMETRY_ENABLED", "0")
        env.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
        result = simulate_fedcollm(spec, client_mods=[recorder])
    return result, recorder.messages()


@pytest.fixture(scope="module")
def simulated(
    spec: FederationSpec, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FederationResult, list[Message]]]:
    yield _simulate(spec, tmp_path_factory)


def test_one_round_without_public_data_runs_end_to_end(
    spec: FederationSpec, simulated: tuple[FederationResult, list[Message]]
) -> None:
    result, _ = simulated
    assert result.aux is not None and result.aux.examples
    for row in result.aux.examples:  # the task's own rows, built by the server
        assert row.choices == TOPICS and row.context == f"Article: {row.question}\nTopic:"
    assert result.aux.bytes_up > 0
    (record,) = result.rounds
    assert record.metrics["clients"] == 2 and record.metrics["client_examples"] == 6
    assert "distil_loss" in record.metrics  # it distilled, on the DP synthetic rows
    stored = read_json(aux_path(str(spec.checkpoint)))
    assert AuxSet.from_json(stored, FORMAT) == result.aux  # kept beside the checkpoint
    for k in range(2):  # each client's DP report, on its own disk
        report = read_report(report_path(str(spec.reports_dir), k))["synthesis"]
        assert report["private_rows"] == 3 and 0 < report["epsilon"] <= 8.0 * 1.01


def test_the_query_reply_holds_only_synthetic_texts_and_labels(
    simulated: tuple[FederationResult, list[Message]],
) -> None:
    result, sent = simulated
    assert len(sent) == 4  # per client: its samples, then its round-1 update; nothing else
    needles = [CANARY, "canary", "marmalade"]
    for examples in CLIENT_DATA:
        needles += [e.question for e in examples] + [e.id for e in examples]
    for msg in sent:
        assert not msg.has_error()
        assert find_leaks(msg, needles) == []  # no private row, verbatim, anywhere
    samples = [m for m in sent if keys.SYNTHETIC in m.content]
    updates = [m for m in sent if keys.ADAPTER in m.content]
    assert len(samples) == len(updates) == 2
    pooled = set()
    for msg in samples:  # texts and labels only: no eps, no row counts, no weights
        assert list(msg.content) == [keys.SYNTHETIC]
        assert not msg.content.metric_records and not msg.content.array_records
        record = msg.content.config_records[keys.SYNTHETIC]
        assert sorted(record) == sorted([keys.TEXTS, keys.LABELS])
        texts, labels = record[keys.TEXTS], record[keys.LABELS]
        assert isinstance(texts, list) and isinstance(labels, list)
        assert all(isinstance(v, str) for v in [*texts, *labels])  # no number about the rows
        assert set(labels) <= set(TOPICS) and len(texts) == len(labels)
        pooled |= {(str(label), str(text)) for label, text in zip(labels, texts, strict=True)}
    assert result.aux is not None
    server_pairs = {(row.choices[row.gold], row.question) for row in result.aux.examples}
    assert server_pairs == {(label, text) for label, text in pooled if text.strip()}
    for msg in updates:  # the ordinary round reply, unchanged
        assert set(msg.content.array_records) == {keys.ADAPTER}
        counts = set(msg.content.metric_records[keys.COUNTS])
        assert counts == {keys.N_EXAMPLES, keys.PARTITION, keys.ROUND}  # the round: public
        assert not msg.content.config_records


def test_a_resumed_run_reads_the_aux_set_back_and_asks_no_client_again(
    spec: FederationSpec,
    simulated: tuple[FederationResult, list[Message]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    first, _ = simulated
    longer = replace(spec, settings=replace(SETTINGS, rounds=2), resume=True)
    result, sent = _simulate(longer, tmp_path_factory)
    assert [m for m in sent if keys.SYNTHETIC in m.content] == []  # no second DP spend
    assert len(sent) == 2 and all(keys.ADAPTER in m.content for m in sent)  # round 2 only
    assert result.aux == first.aux
    assert [r.round for r in result.rounds] == [0, 1]


def test_the_aux_set_outlives_a_crash_before_the_first_checkpoint(
    spec: FederationSpec, tmp_path: Path
) -> None:
    """Killed during round 1 (the query answered, no round checkpointed): the resumed run
    distils on the stored rows without a grid call; a round checkpoint without them is
    refused rather than asking the clients again."""
    stored = AuxSet(tuple(FORMAT.example(f"aux{i}", "World", f"text {i}") for i in range(2)), 3, 5)
    checkpoint = tmp_path / "checkpoint.safetensors"
    resumed = replace(spec, checkpoint=str(checkpoint), resume=True)
    with pytest.raises(FedktError, match="delete the checkpoint"):
        _aux_set(None, [], resumed, resumed=True)  # type: ignore[arg-type]
    write_json(aux_path(str(checkpoint)), stored.to_json(FORMAT))
    assert _aux_set(None, [], resumed, resumed=False) == stored  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"aux_format": None}, r"needs aux_format"),
        (  # 3 private rows: delta must be below 1/3
            {
                "settings": replace(
                    SETTINGS, dp_aux=replace(SETTINGS.dp_aux, dp=DPSettings(delta=0.5))
                )
            },
            r"delta=0.5 must be in \(0, 1/N\)",
        ),
        ({"settings": replace(SETTINGS, aux_source="public")}, r"public_data, which is empty"),
    ],
)
def test_the_spec_refuses_what_cannot_run_before_any_model_loads(
    change: dict[str, object], match: str
) -> None:
    good = FederationSpec(
        llm="no-such-model",
        slm="no-such-model",
        client_data=CLIENT_DATA,
        public_data=(),
        settings=SETTINGS,
        aux_format=FORMAT,
    )
    assert good.uses_dp_aux and good.client_setup().dp_aux == SETTINGS.dp_aux
    with pytest.raises(ConfigError, match=match):
        replace(good, **change)  # type: ignore[arg-type]
    fedavg = replace(good, settings=replace(SETTINGS, distil=False))  # FedAvg needs no D_a
    assert not fedavg.uses_dp_aux and fedavg.client_setup().dp_aux is None
