"""What every deployed algorithm reads the same way: the one task, a SuperNode's node config,
the public evaluation rows, a client's own rows at its own index, and the server's outcome.

A deployed spec (`FedCoTSpec`, `FDKTSpec` with ``deployed=True``) holds only the rows of the
process it runs in: a client's own partition at its index and nothing at any other, the
server's none. Both sides count every client (``federation.clients``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedkt.config import FedktConfig, load_config
from fedkt.data import Example
from fedkt.deploy.rows import read_rows
from fedkt.errors import ConfigError
from fedkt.report import to_strict_json, write_json

OUTCOME = "result.json"
"""The FedCoT and FDKT servers' outcome (counts and bytes), in ``<output_dir>/<task>/<method>/``."""


def deployment_task(config: FedktConfig) -> str:
    """The one task a deployment trains on (the config's only ``data.tasks`` entry)."""
    if len(config.data.tasks) != 1:
        raise ConfigError(
            f"a deployment runs one task; data.tasks = {list(config.data.tasks)}: keep one"
        )
    return config.data.tasks[0]


def one_point(name: str, values: Sequence[Any]) -> Any:
    """The single value of a setting a simulation sweeps (``fedcot.eps``, ``fdkt.eps``, ...):
    a deployment runs one point, since every point sends the same private rows again."""
    if len(values) != 1:
        raise ConfigError(
            f"{name} = {list(values)}: a deployment runs one point (each point uses the same "
            "private rows again, so their privacy costs add up); keep one value"
        )
    return values[0]


@dataclass(frozen=True)
class NodeSetup:
    """A SuperNode's node config as `fedkt client` writes it: the fedkt config, this client's
    partition id and rows file, and where its own reports and artefacts go."""

    config_path: str
    data: str
    partition: int
    output_dir: str

    @classmethod
    def of(cls, node_config: Mapping[str, Any]) -> NodeSetup:
        try:
            config_path, data = str(node_config["config"]), str(node_config["data"])
            partition = int(node_config["partition-id"])
        except KeyError as err:
            raise ConfigError(
                f"this SuperNode's node config lacks {err}; start it with `fedkt client`"
            ) from err
        return cls(config_path, data, partition, str(node_config.get("output-dir", "")))

    def output(self, config: FedktConfig) -> Path:
        """This client's own folder (``--output-dir``, else the config's ``output_dir``)."""
        return Path(self.output_dir or config.output_dir)

    def own_rows(self, config: FedktConfig) -> tuple[tuple[Example, ...], ...]:
        """One part per client of ``federation.clients``: this client's rows (from its own
        file) at its partition id, nothing at any other."""
        clients = config.federation.clients
        if not 0 <= self.partition < clients:
            raise ConfigError(
                f"partition id {self.partition} is not one of the config's "
                f"federation.clients = {clients} clients (0 to {clients - 1})"
            )
        rows = read_rows(self.data)
        return tuple(rows if k == self.partition else () for k in range(clients))


_CONFIGS: dict[str, FedktConfig] = {}


def cached_config(path: str) -> FedktConfig:
    """The fedkt config at ``path``, read once per process."""
    if path not in _CONFIGS:
        _CONFIGS[path] = load_config(path)
    return _CONFIGS[path]


def evaluation_rows(config: FedktConfig, task: str) -> tuple[Example, ...]:
    """The task's public evaluation rows (its evaluation split, the first ``data.limit``),
    read from this machine's data directory as the simulation reads them; nothing of the
    train split, so no row of any client's partition."""
    from fedkt.experiments.harness import evaluation_rows as rows_of

    return tuple(rows_of(config, task))


def write_outcome(folder: Path, outcome: Mapping[str, Any]) -> Path:
    """``folder/OUTCOME``: the server's view of the run (strict JSON; node ids as keys)."""
    return write_json(folder / OUTCOME, to_strict_json(dict(outcome)))
