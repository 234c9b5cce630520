"""FDKT across processes on Flower's deployment engine, on loopback: `fedkt server` (a SuperLink
with TLS and SuperNode authentication, the ServerApp with the LLM and the sentence embedder)
and two `fedkt client` SuperNodes, each a separate process group reading only its own rows
file, with a config whose ``algorithm`` is "fdkt" (tiny random models, a classification task,
two DP steps, a few short synthetic texts). The round trip must complete; the server's outcome
must count what it received and sent, and hold only DP synthetic samples (no private row's
text, on disk or in its log); each client's DP report (eps spent within the target, noise
drawn from secrets), predictions and SLM adapter must stay in its own output folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from loopback import Federation, deployment_section, make_federation, run_deployed, task_section
from transformers import PreTrainedTokenizerFast

from fedkt.config import load_config
from fedkt.data import Example
from fedkt.deploy.apps import outcome_file
from fedkt.federation.reports import read_report
from fedkt.report import read_json
from fedkt.training.dp_generator import SECURE_NOISE

TASK = "tiny_topics"
LABELS = ("Science", "Sports")
EPS, DELTA = 8.0, 0.1  # delta < 1/3: each client holds three rows
EVAL_ROWS = [
    {"text": "A rocket carried two astronauts to the station.", "label": "Science"},
    {"text": "The striker scored twice in the derby.", "label": "Sports"},
]
PRIVATE = (  # (text, label, a substring no other text holds): what must never leave a client
    [("Quillon observatory logged comet Vesperine-4471 at dawn.", 0, "Vesperine-4471"),
     ("Marrowgate rovers beat Tindlewick 31-7 in the harbour cup.", 1, "Tindlewick"),
     ("Dr Ysolde Brannock patented the frostglass lens array.", 0, "frostglass")],
    [("Halvercross captain Orla Pennick scored 19 goals.", 1, "Orla Pennick"),
     ("Kestrelmoor lab sequenced the glimmerfern genome.", 0, "glimmerfern"),
     ("Brindle Street harriers won the Oakhollow relay again.", 1, "Oakhollow")],
)  # fmt: skip


def _rows(k: int) -> list[Example]:
    """Client k's private rows as the classification task's own rows (choices = labels)."""
    return [
        Example(
            id=f"private-row-c{k}-{i}",
            context=f"Text: {text}\nLabel:",
            choices=LABELS,
            gold=gold,
            question=text,
        )
        for i, (text, gold, _) in enumerate(PRIVATE[k])
    ]


def _config_text(root: Path, port: int) -> str:
    # The train split (public rows too) only works around custom tasks reading their train
    # file even when label_names are given.
    task = task_section(
        root,
        task=TASK,
        rows=EVAL_ROWS,
        settings=f'kind = "classification"\nlabel_names = {json.dumps(list(LABELS))}',
        splits=("train", "validation"),
    )
    return f"""
algorithm = "fdkt"
output_dir = "{root / "server-out"}"
[model]
dtype = "float32"
device = "cpu"
{task}[federation]
llm = "{root / "llm"}"
slm = "{root / "slm"}"
clients = 2
[fdkt]
eps = [{EPS}]
delta = {DELTA}
dp_batch_size = 2
dp_max_length = 32
per_label = 2
synthesis_tokens = 8
min_words = 1
n_prompts = 1
demos_per_label = 1
new_per_label = 1
augment_tokens = 24
label_field = "Topic"
[train]
epochs = 1
lr = 1e-2
batch_size = 4
warmup_ratio = 0.0
max_length = 48
[lora]
r = 4
alpha = 8
dropout = 0.0
{deployment_section(root, port)}"""


@pytest.fixture(scope="module")
def federation(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerFast
) -> Federation:
    root = tmp_path_factory.mktemp("deploy-fdkt")
    return make_federation(
        root, tiny_tokenizer, _config_text, client_rows=[_rows(k) for k in range(2)]
    )


@pytest.fixture(scope="module")
def deployed(federation: Federation) -> Path:
    """`fedkt server` and two `fedkt client`s, as the README runs them; the outcome file.
    Every process is gone before the tests look at the outcome."""
    run_deployed(federation)
    return outcome_file(load_config(federation.config))


def test_the_deployed_round_trip_completes(deployed: Path) -> None:
    assert deployed.is_file()
    outcome = read_json(deployed)
    assert outcome["eps"] == EPS
    synthetic = list(outcome["synthetic"].values())
    assert len(synthetic) == 2 and all(n >= 1 for n in synthetic)  # each client sent samples
    received = (deployed.parent / "synthetic.jsonl").read_text().splitlines()
    assert len(received) == sum(synthetic)
    sent = (deployed.parent / "augmented.jsonl").read_text().splitlines()
    assert outcome["sent"] == len(sent)
    assert list(outcome["acknowledged"].values()) == [outcome["sent"]] * 2
    assert set(outcome["bytes_up"]) == set(outcome["bytes_down"]) == set(outcome["synthetic"])
    assert all(
        size > 0 for size in [*outcome["bytes_up"].values(), *outcome["bytes_down"].values()]
    )
    assert outcome["total_bytes"] == sum(outcome["bytes_up"].values()) + sum(
        outcome["bytes_down"].values()
    )
    assert len((deployed.parent / "responses.jsonl").read_text().splitlines()) == 1  # n_prompts


def test_the_server_holds_only_dp_synthetic_samples(federation: Federation, deployed: Path) -> None:
    for line in (deployed.parent / "synthetic.jsonl").read_text().splitlines():
        sample = json.loads(line)  # a labelled text, nothing else
        assert set(sample) == {"label", "text"} and sample["label"] in LABELS
    root = federation.root
    needles = [needle for rows in PRIVATE for _, _, needle in rows]
    needles += [row.id for k in range(2) for row in _rows(k)]
    needles += ["noise_multiplier", "private_rows"]  # a client's DP report's keys
    scanned = [p for p in (root / "server-out").rglob("*") if p.is_file()] + [root / "server.log"]
    assert len(scanned) >= 5  # result, synthetic, augmented, responses, the log
    for path in scanned:
        text = path.read_text(errors="replace")
        assert [n for n in needles if n in text] == [], path
    assert not any(p.name.startswith("client") for p in scanned[:-1])  # no client's files


def test_each_client_keeps_its_dp_report_and_slm_in_its_own_folder(
    federation: Federation, deployed: Path
) -> None:
    root, outcome = federation.root, read_json(deployed)
    for k in range(2):
        own = root / f"client{k}-out"
        reports = own / "client-reports"
        assert sorted(p.name for p in reports.iterdir()) == [f"client{k}.json"]
        report = read_report(reports / f"client{k}.json")
        privacy = report["synthesis"]
        assert 0 < privacy["epsilon"] <= privacy["target_epsilon"] == EPS
        assert privacy["delta"] == DELTA and privacy["private_rows"] == len(PRIVATE[k])
        assert privacy["dp_steps"] >= 1 and privacy["noise_multiplier"] > 0
        assert privacy["noise_source"] == SECURE_NOISE  # not the config's seed: the server's too
        assert report["train"]["received"] == outcome["sent"]
        assert report["train"]["n"] == len(EVAL_ROWS)
        predictions = (own / "predictions" / f"slm-client{k}.jsonl").read_text().splitlines()
        assert len(predictions) == len(EVAL_ROWS)
        assert sorted(p.name for p in (own / "clients").iterdir()) == [str(k)]  # its own index
        adapter = own / "clients" / str(k) / "slm"
        assert (adapter / "adapter_config.json").is_file()
        assert (adapter / "adapter_model.safetensors").stat().st_size > 0
        log = (root / f"client{k}.log").read_text(errors="replace")
        assert f"client{k}.jsonl" in log and f"client{1 - k}.jsonl" not in log
