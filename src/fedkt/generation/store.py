"""An append-only, crash-safe record of generated answers, so a long generation can resume.

Generating rationales for thousands of prompts with a 7B-14B model takes hours; a crash or a
pre-empted job must not start over. Each batch of answers is appended as JSON lines and
fsynced before the next batch starts.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from fedkt.errors import DataError
from fedkt.generation.settings import Response

log = logging.getLogger(__name__)


class ResponseStore:
    """Append-only JSONL of ``{"id": ..., "text": ...}``, one line per answered id.

    Each `add` is flushed and fsynced, so a crash loses at most the batch in flight and a
    restart skips the ids already answered. A crash mid-write can leave a torn last line:
    it is dropped with a warning (and cut off the file, so the next append starts on a
    clean line); every earlier line is kept. A malformed line elsewhere is not a crash
    artefact and raises `DataError`. ``path=None`` keeps the answers in memory only.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._answers: dict[str, str] = {}
        if self.path is not None and self.path.exists():
            self._answers = _load(self.path)

    def answered(self) -> dict[str, str]:
        """id -> text of every answer recorded so far (a copy)."""
        return dict(self._answers)

    def add(self, responses: Sequence[Response]) -> None:
        """Record `responses` (durably, when the store has a path) in one write."""
        _check_new(responses, self._answers, self.path)
        if self.path is not None and responses:
            lines = "".join(json.dumps({"id": r.id, "text": r.text}) + "\n" for r in responses)
            _append_durably(self.path, lines)
        self._answers.update((r.id, r.text) for r in responses)


def _check_new(responses: Sequence[Response], answers: dict[str, str], path: Path | None) -> None:
    ids = [r.id for r in responses]
    repeated = sorted({i for i in ids if ids.count(i) > 1 or i in answers})
    if repeated:
        where = str(path) if path is not None else "the in-memory store"
        raise DataError(
            f"ids {repeated[:10]} are already answered in {where} (or given twice): "
            "a store records each id once; skip the ids in answered()"
        )
    bad = [r.id for r in responses if not isinstance(r.id, str) or not isinstance(r.text, str)]
    if bad:
        raise DataError(f"responses {bad[:10]} need a str id and a str text")


def _append_durably(path: Path, lines: str) -> None:
    """Append, flush and fsync; fsync the directory too when the file is new."""
    new = not path.exists()
    if new:
        path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as file:
        file.write(lines)
        file.flush()
        os.fsync(file.fileno())
    if new:
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make a new file's directory entry durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_BLANK = b" \t\r\n\x00"  # a crash can also leave zero-filled blocks at the end


def _load(path: Path) -> dict[str, str]:
    """The answers in `path`; a torn last line is dropped and cut off the file."""
    data = path.read_bytes()
    answers: dict[str, str] = {}
    keep = 0  # bytes up to the end of the last good line, its newline included
    offset = 0
    for number, line in enumerate(data.split(b"\n"), start=1):
        end = offset + len(line) + 1
        content = line.strip(_BLANK)
        if content:
            record = _parse(content)
            if record is None:
                if data[end:].strip(_BLANK):
                    raise DataError(
                        f"{path}:{number}: not a JSON object with a str 'id' and 'text'; "
                        "only the last line may be torn by a crash: fix or delete this line"
                    )
                log.warning(
                    "%s:%d: dropping a torn last line (%d bytes, a crash mid-write); its "
                    "answers will be generated again",
                    path,
                    number,
                    len(data) - offset,
                )
                break
            _record(answers, record, path, number)
            keep = end
        offset = end
    _repair_tail(path, len(data), keep)
    return answers


def _parse(content: bytes) -> tuple[str, str] | None:
    try:
        record = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    id_, text = record.get("id"), record.get("text")
    if not isinstance(id_, str) or not isinstance(text, str):
        return None
    return id_, text


def _record(answers: dict[str, str], record: tuple[str, str], path: Path, number: int) -> None:
    id_, text = record
    if answers.get(id_, text) != text:
        raise DataError(
            f"{path}:{number}: id {id_!r} answered twice with different texts (two runs "
            "writing one store?): delete one of its lines"
        )
    answers[id_] = text


def _repair_tail(path: Path, size: int, keep: int) -> None:
    """End the file right after its last good line, newline included, so the next append
    starts a clean line: cut what follows (a torn line), or add the missing newline."""
    if keep == size:
        return
    with path.open("r+b") as file:
        if keep > size:  # the last good line was written without its newline
            file.seek(size)
            file.write(b"\n")
        else:
            file.truncate(keep)
        file.flush()
        os.fsync(file.fileno())
