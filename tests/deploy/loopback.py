"""A loopback federation for the multi-process deployment tests: tiny random models, each
client's rows in its own file, certificates and SuperNode keys, a config whose
[deployment] section turns TLS and node authentication on, and the `fedkt server` /
`fedkt client` processes the README runs, each in its own process group, bounded by
timeouts and killed (whole group) in `finally`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerFast

from conftest import save_tiny_pair
from fedkt.certs import make_certs
from fedkt.data import Example
from fedkt.deploy import launch, local
from fedkt.deploy.rows import write_rows
from fedkt.errors import FedktError
from fedkt.report import write_jsonl

RUN_SECONDS = 150.0
"""Upper bound on the whole federated run (process starts, imports, the round trips)."""

CLIENT_ROWS = (
    [("Which gas do plants absorb from the air?", ("carbon dioxide", "helium"), 0),
     ("What do green plants need to grow?", ("volcanic rock", "bright sunlight"), 1)],
    [("What is the boiling point of water at sea level?", ("100 degrees", "frozen"), 0),
     ("Which gas do we breathe in to live?", ("nitrogen only", "fresh oxygen"), 1)],
)  # fmt: skip

Rows = Sequence[tuple[str, tuple[str, ...], int]]

TASK = "tiny_qa"
"""A custom multiple-choice task whose only split is the public evaluation rows."""
EVAL_ROWS = [
    {"question": q, "choices": list(c), "answer": g}
    for q, c, g in (
        ("Which rock is soil made of?", ("weathered rock", "sunlight"), 0),
        ("What melts ice in spring?", ("warm sun", "cold wind"), 0),
    )
]


def task_section(
    root: Path,
    *,
    task: str = TASK,
    rows: Sequence[dict[str, Any]] = EVAL_ROWS,
    settings: str = 'kind = "multiple_choice"',
    splits: Sequence[str] = ("validation",),
) -> str:
    """[data] and [tasks.<task>] (default `TASK`): its ``settings`` (kind, fields) and the
    public ``rows`` written to ``root/eval.jsonl``, the file of each of ``splits``."""
    write_jsonl(root / "eval.jsonl", rows)
    files = ", ".join(f'{split} = "{root / "eval.jsonl"}"' for split in splits)
    return f'[data]\ntasks = ["{task}"]\n[tasks.{task}]\n{settings}\nsplits = {{ {files} }}\n'


def examples(rows: Rows, tag: str, *, with_question: bool = False) -> list[Example]:
    return [
        Example(
            id=f"{tag}{i}",
            context=f"Question: {q}\nAnswer:",
            choices=c,
            gold=g,
            question=q if with_question else "",
        )
        for i, (q, c, g) in enumerate(rows)
    ]


def deployment_section(root: Path, port: int) -> str:
    """[deployment] on loopback: TLS with ``root/certs``, both clients' keys registered."""
    return f"""
[deployment]
superlink = "127.0.0.1:{port}"
ca_cert = "{root / "certs/ca.crt"}"
server_cert = "{root / "certs/server.crt"}"
server_key = "{root / "certs/server.key"}"
node_keys = ["{root / "certs/client0.pub"}", "{root / "certs/client1.pub"}"]
"""


@dataclass(frozen=True)
class Federation:
    """Files of one loopback federation: config, rows, certificates and keys."""

    root: Path
    config: Path
    certs: Path
    env: dict[str, str]

    def client_command(self, k: int, *, key: Path, config: Path | None = None) -> list[str]:
        return local.client_command(
            config or self.config,
            data=self.root / f"client{k}.jsonl",
            partition=k,
            key=key,
            output_dir=self.root / f"client{k}-out",
        )


def make_federation(
    root: Path,
    tokenizer: PreTrainedTokenizerFast,
    config_text: Callable[[Path, int], str],
    *,
    with_question: bool = False,
    client_rows: Sequence[Sequence[Example]] | None = None,
) -> Federation:
    """Tiny models ``root/llm`` (3 layers) and ``root/slm`` (2), each client's rows in
    ``root/client<k>.jsonl`` (``client_rows``, default `CLIENT_ROWS`' examples),
    certificates, and the config ``config_text(root, port)``."""
    save_tiny_pair(root, tokenizer)
    if client_rows is None:
        client_rows = [
            examples(rows, f"c{k}-", with_question=with_question)
            for k, rows in enumerate(CLIENT_ROWS)
        ]
    for k, rows in enumerate(client_rows):
        write_rows(root / f"client{k}.jsonl", rows)
    certs = make_certs(root / "certs", clients=2).ca_cert.parent
    config = root / "federation.toml"
    config.write_text(config_text(root, launch.free_port()), encoding="utf-8")
    env = launch.flower_env(
        {"FLWR_HOME": str(root / "flwr-home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    )
    return Federation(root, config, certs, env)


def start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return local.start_logged(command, log, env)


tail = local.tail


def run_deployed(federation: Federation, server_args: Sequence[str] = ()) -> None:
    """`fedkt server` and two `fedkt client`s, as the README runs them, to the end (server
    exit status 0). Every process is gone when this returns, or fails."""
    root = federation.root
    server = [*local.server_command(federation.config), *server_args]
    clients = [
        federation.client_command(k, key=federation.certs / f"client{k}.key") for k in range(2)
    ]
    try:
        run = local.launch_local_federation(
            server, clients, env=federation.env, log_dir=root, timeout=RUN_SECONDS,
            ready="SuperNode keys registered",
        )  # fmt: skip
    except FedktError as err:
        pytest.fail(str(err))
    if run.returncode is None:
        pytest.fail(f"the server did not finish in {RUN_SECONDS:.0f} s:\n{tail(run.server_log)}")
    assert run.returncode == 0, tail(run.server_log)
