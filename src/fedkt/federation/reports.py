"""A client's own report file: what it spent and measured, kept on its disk, never sent.

Every protocol's clients write numbers that describe their private rows (the eps their
accountant spent, row counts, losses, audit results) to ``<reports_dir>/client<k>.json`` instead
of a message: none of it is covered by the protocol's guarantee. In a simulation the harness
shares the clients' disk and reads the files back into results.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedkt.report import read_json, write_json


def report_path(reports_dir: str | Path, partition: int) -> Path:
    """Client ``partition``'s report file."""
    return Path(reports_dir) / f"client{partition}.json"


def write_report(
    reports_dir: str | Path | None,
    partition: int,
    part: str,
    values: dict[str, Any],
    *,
    fresh: bool = False,
) -> None:
    """Put ``values`` under ``part`` in the client's report (nothing without a directory);
    ``fresh`` starts a new file (a run's first part), otherwise the other parts are kept."""
    if reports_dir is None:
        return
    path = report_path(reports_dir, partition)
    previous = read_report(path) if path.is_file() and not fresh else {}
    write_json(path, {**previous, part: values})


def read_report(path: Path) -> dict[str, Any]:
    """A client's report file, without the machine description `write_json` adds."""
    report: dict[str, Any] = read_json(path)
    report.pop("machine", None)
    return report
