"""FedCoT across processes on Flower's deployment engine, on loopback: `fedkt server` (a
SuperLink with TLS and SuperNode authentication, the ServerApp with the LLM) and two
`fedkt client` SuperNodes, each a separate process group reading only its own rows file, with
a config whose ``algorithm`` is "fedcot" (tiny random models; a utility sweep's point,
``train_slm = false``, to keep it short). The round trip must complete, the server's outcome
count every client's prompts and acknowledgements, and each client's report stay in its own
output folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from loopback import (
    CLIENT_ROWS,
    TASK,
    Federation,
    deployment_section,
    make_federation,
    run_deployed,
    task_section,
)
from transformers import PreTrainedTokenizerFast

from fedkt.deploy.common import OUTCOME
from fedkt.deploy.fedcot import METHOD
from fedkt.federation.reports import read_report
from fedkt.report import read_json


def _config_text(root: Path, port: int) -> str:
    return f"""
algorithm = "fedcot"
output_dir = "{root / "server-out"}"
[model]
dtype = "float32"
device = "cpu"
{task_section(root)}[federation]
llm = "{root / "llm"}"
slm = "{root / "slm"}"
clients = 2
[fedcot]
decoder = "{root / "llm"}"
strategies = ["em"]
eps = [1.0]
rationale_tokens = 12
recovery_tokens = 12
min_rationale_words = 1
train_slm = false
[train]
epochs = 1
lr = 1e-2
batch_size = 2
warmup_ratio = 0.0
max_length = 96
[lora]
r = 4
alpha = 8
dropout = 0.0
{deployment_section(root, port)}"""


@pytest.fixture(scope="module")
def federation(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerFast
) -> Federation:
    root = tmp_path_factory.mktemp("deploy-fedcot")
    return make_federation(root, tiny_tokenizer, _config_text, with_question=True)


@pytest.fixture(scope="module")
def deployed(federation: Federation) -> Path:
    """`fedkt server` and two `fedkt client`s, as the README runs them; the outcome folder.
    Every process is gone before the tests look at the outcome."""
    run_deployed(federation)
    return federation.root / "server-out" / TASK / METHOD


def test_the_deployed_round_trip_completes(deployed: Path) -> None:
    outcome = read_json(deployed / OUTCOME)
    assert outcome["strategy"] == "em" and outcome["eps"] == 1.0
    assert outcome["requests"] == outcome["acknowledged"] == [2, 2]  # all the server learns
    assert len(outcome["bytes_up"]) == len(outcome["bytes_down"]) == 2
    assert outcome["total_bytes"] > 0
    answered = (deployed / "responses.jsonl").read_text().splitlines()
    assert 1 <= len(answered) <= 4  # one rationale per distinct prompt, kept for a resume


def test_each_client_reports_into_its_own_folder_from_its_own_rows(
    federation: Federation, deployed: Path
) -> None:
    root = federation.root
    for k in range(2):
        own = root / f"client{k}-out" / "client-reports"
        assert sorted(path.name for path in own.iterdir()) == [f"client{k}.json"]
        report = read_report(own / f"client{k}.json")
        assert report["privacy"]["prompts"] == len(CLIENT_ROWS[k])
        assert report["utility"]["prompts"] == len(CLIENT_ROWS[k])
        assert "train" not in report  # train_slm = false: graded, never trained
        log = (root / f"client{k}.log").read_text(errors="replace")
        assert f"client{k}.jsonl" in log and f"client{1 - k}.jsonl" not in log
    server_files = [p.name for p in (root / "server-out").rglob("*") if p.is_file()]
    assert not any(name.startswith("client") for name in server_files)  # no client's report
    server_log = (root / "server.log").read_text(errors="replace")
    assert "client0.jsonl" not in server_log and "client1.jsonl" not in server_log
