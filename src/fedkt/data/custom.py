"""The user's own data as a task: local JSONL / CSV / Parquet files (or a hub data set) whose
fields are mapped onto one of three kinds.

- ``classification``: a ``text`` and a ``label`` (a label name, or its index into
  ``label_names``); scored as multiple choice over the label names, as AG News is.
- ``multiple_choice``: a ``question``, its ``choices`` (a list field, or one field per choice)
  and the ``answer`` (a choice's text, its letter A, B, ... or its 0-based index).
- ``generative``: a ``prompt`` and the ``target`` to train on; ``answer`` (default: the target)
  is what exact match compares, as GSM8K's final number is.

`CustomTask` holds the settings (fedkt's TOML ``[tasks.<name>]`` tables are exactly these);
`CustomTask.spec` turns them into a `TaskSpec` that `fedkt.data.load_examples` reads like a
built-in task, every row error naming the file, the line and the field.
"""

from __future__ import annotations

import csv
import difflib
import json
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal, cast

from fedkt.data.example import Example
from fedkt.data.sources import _read_jsonl
from fedkt.data.tasks import RowError, TaskSpec
from fedkt.errors import ConfigError, DataError

Kind = Literal["classification", "multiple_choice", "generative"]
KINDS: tuple[Kind, ...] = ("classification", "multiple_choice", "generative")

FORMATS = (".jsonl", ".csv", ".parquet")
"""File types a custom task reads, by suffix."""

ROLES: dict[Kind, tuple[str, ...]] = {
    "classification": ("text", "label"),
    "multiple_choice": ("question", "choices", "answer"),
    "generative": ("prompt", "target", "answer"),
}
"""Each kind's fields; each defaults to the row field of the same name (generative ``answer``:
none, the target itself is the answer)."""

DEFAULT_TEMPLATES: dict[Kind, str] = {
    "classification": "Text: {text}\nLabel:",
    "multiple_choice": "Question: {question}\nAnswer:",
    "generative": "Question: {prompt}\nAnswer:",
}
"""The prompt of each kind when ``template`` is not set (the built-in tasks' formats)."""

DEFAULT_HOLDOUT = 0.2
"""Share of a single ``path`` file's rows held out as the validation split."""

_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_ALL_ROLES = ("text", "label", "question", "choices", "answer", "prompt", "target")

Located = list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class CustomTask:
    """One task over the user's own rows: where they are, which kind, and which fields.

    Args:
        kind: ``classification``, ``multiple_choice`` or ``generative`` (required).
        path: one local .jsonl/.csv/.parquet file holding every row; the split
            ``validation`` is a seeded ``holdout`` share of it, ``train`` the rest.
        splits: one file per split instead, e.g. ``{train = "a.jsonl", validation =
            "b.csv"}``; with ``hub``: fedkt's split name -> the hub's (``{validation =
            "test"}``), other names passing through.
        hub: a Hugging Face hub data set id instead of local files; ``hub_config`` its config.
        holdout: share of the train rows held out (seeded) as ``validation``; default 0.2 for
            ``path``, 0 otherwise. Only when no validation split is given.
        seed: seed of the held-out rows' draw.
        id: the row field holding a row id (default: ids from the row position).
        text, label: classification fields (default ``text``, ``label``).
        label_names: the class names, in index order; a row's label is one of them or its
            index. Left out, they are the distinct string labels of the train rows, sorted.
        question, choices, answer: multiple-choice fields (default ``question``,
            ``choices``, ``answer``); ``choices`` may also list one field per choice.
        prompt, target: generative fields (default ``prompt``, ``target``); ``answer``
            (default: the target) is the field exact match compares.
        template: the prompt; ``{text}`` / ``{question}`` / ``{prompt}`` is the kind's
            mapped field, any other ``{name}`` the row's field ``name``. Default per kind:
            ``DEFAULT_TEMPLATES``.

    Relative paths are relative to the directory fedkt runs in.
    """

    kind: str = ""
    path: str = ""
    splits: dict[str, str] = field(default_factory=dict)
    hub: str = ""
    hub_config: str = ""
    holdout: float | None = None
    seed: int = 0
    id: str = ""
    text: str = ""
    label: str = ""
    label_names: tuple[str, ...] = ()
    question: str = ""
    choices: str | tuple[str, ...] = ""
    answer: str = ""
    prompt: str = ""
    target: str = ""
    template: str = ""

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ConfigError("; ".join(problems))

    # ---- settings, resolved ----

    @property
    def task_kind(self) -> Kind:
        return cast(Kind, self.kind)

    def field_of(self, role: str) -> str:
        """The row field of `role` (``""`` for a generative task without an answer field)."""
        value = getattr(self, role)
        if value:
            return value if isinstance(value, str) else ""
        return "" if (role == "answer" and self.kind == "generative") else role

    @property
    def choice_fields(self) -> tuple[str, ...]:
        """The choices' field(s): one list field, or one field per choice."""
        if isinstance(self.choices, tuple) and self.choices:
            return self.choices
        return (self.field_of("choices"),)

    @property
    def prompt_template(self) -> str:
        return self.template or DEFAULT_TEMPLATES[self.task_kind]

    @property
    def holdout_share(self) -> float:
        if self.holdout is not None:
            return self.holdout
        return DEFAULT_HOLDOUT if self.path else 0.0

    def split_names(self) -> tuple[str, ...]:
        """The splits this task has (a hub data set: also any split of the hub's)."""
        names = list(self.splits) if self.splits else (["train"] if self.path else [])
        if self.holdout_share > 0:
            names.append("validation")
        return tuple(dict.fromkeys(names))

    def _problems(self) -> list[str]:
        if not self.kind:
            return [f"kind is required: one of {', '.join(KINDS)}"]
        if self.kind not in KINDS:
            close = difflib.get_close_matches(self.kind, KINDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return [f"kind = {self.kind!r} must be one of {', '.join(KINDS)}{hint}"]
        problems: list[str] = []
        kind = self.task_kind
        stray = [role for role in _ALL_ROLES if getattr(self, role) and role not in ROLES[kind]]
        if self.label_names and kind != "classification":
            stray.append("label_names")
        if stray:
            problems.append(
                f"{', '.join(stray)} {'does' if len(stray) == 1 else 'do'} not apply to "
                f"kind = {kind!r} (its fields: "
                f"{', '.join(ROLES[kind])})"
            )
        sources = [name for name in ("path", "splits", "hub") if getattr(self, name)]
        if not sources:
            problems.append('give the rows: path = "rows.jsonl", splits = {...} or hub = "id"')
        elif self.path and len(sources) > 1:
            problems.append(f"give either path or {' or '.join(sources[1:])}, not both")
        if self.hub_config and not self.hub:
            problems.append("hub_config is set but hub is not")
        files = [self.path] if self.path else ([] if self.hub else list(self.splits.values()))
        for file in files:
            if Path(file).suffix.lower() not in FORMATS:
                problems.append(f"{file!r} is not a {'/'.join(FORMATS)} file")
        for name, value in self.splits.items():
            if not _SPLIT_NAME.match(name) or name == "dev" or not value:
                problems.append(
                    f"splits.{name} = {value!r}: split names are letters, digits, _ . - (not "
                    "'dev', which fedkt run carves from train) and each needs a file"
                )
        if not 0.0 <= self.holdout_share < 1.0:
            problems.append(f"holdout = {self.holdout} must be in [0, 1)")
        if self.holdout_share > 0 and "validation" in self.splits:
            problems.append(
                "holdout carves the validation split from train, but splits.validation is "
                "given too: drop one"
            )
        if self.holdout_share > 0 and self.splits and not self.hub and "train" not in self.splits:
            problems.append("holdout needs a train split to hold rows out of: add splits.train")
        if len(set(self.label_names)) != len(self.label_names) or not all(self.label_names):
            problems.append(f"label_names = {list(self.label_names)} must be distinct, non-empty")
        if isinstance(self.choices, tuple) and (len(self.choices) < 2 or not all(self.choices)):
            problems.append(f"choices = {list(self.choices)}: name at least two fields")
        problems += self._template_problems()
        return problems

    def _template_problems(self) -> list[str]:
        try:
            names = _placeholders(self.prompt_template)
        except ValueError as err:
            return [f"template {self.template!r}: {err} (write a literal brace as {{{{ or }}}})"]
        main = ROLES[self.task_kind][0]
        if main not in names and self.field_of(main) not in names:
            return [f"template {self.template!r} must contain {{{main}}}"]
        return []

    # ---- the TaskSpec ----

    def spec(self, name: str) -> TaskSpec:
        """This task, named `name`, as a `TaskSpec` for `fedkt.data.load_examples`."""
        main = ROLES[self.task_kind][0]
        extras = [p for p in _placeholders(self.prompt_template) if p != main]
        roles = [self.field_of(role) for role in ROLES[self.task_kind] if role != "choices"]
        if self.kind == "multiple_choice":
            roles += self.choice_fields
        fields = tuple(dict.fromkeys(f for f in [self.id, *roles, *extras] if f))
        source = cache(lambda split: self._source_rows(name, split))  # each file read once
        label_names = cache(lambda: self.label_names or self._label_names(source("train")))
        converters: dict[Kind, Callable[[dict[str, Any]], Example]] = {
            "classification": lambda row: self._classification(row, label_names()),
            "multiple_choice": self._multiple_choice,
            "generative": self._generative,
        }
        return TaskSpec(
            name=name,
            hub_id=self.hub,
            hub_config=self.hub_config or None,
            kind="generative" if self.kind == "generative" else "multiple_choice",
            fields=fields,
            to_example=converters[self.task_kind],
            rows=lambda split: list(self._split_rows(split, source)),
        )

    # ---- rows of a split ----

    def _split_rows(self, split: str, source: Callable[[str], Located]) -> Located:
        share = self.holdout_share
        if share > 0 and split in ("train", "validation"):
            origin = self.path or self.splits.get("train") or f"hub {self.hub} split 'train'"
            train, held_out = holdout_split(source("train"), share, self.seed, origin)
            return held_out if split == "validation" else train
        return source(split)

    def _source_rows(self, name: str, split: str) -> Located:
        if self.hub:
            return read_hub(self.hub, self.hub_config or None, self.splits.get(split, split))
        purpose = f"split {split!r} of task {name}"
        if self.path and split == "train":
            return read_rows(Path(self.path), purpose)
        if split in self.splits:
            return read_rows(Path(self.splits[split]), purpose)
        raise DataError(
            f"task {name} has no split {split!r} (its splits: {', '.join(self.split_names())}); "
            "add it under splits, or evaluate on data.split = 'dev'"
        )

    def _label_names(self, train: Located) -> tuple[str, ...]:
        """``label_names``, or the distinct labels of every train row (before any holdout)."""
        if self.label_names:
            return self.label_names
        field_name, seen = self.field_of("label"), set()
        for where, row in train:
            value = row.get(field_name)
            if not isinstance(value, str) or not value.strip():
                raise DataError(
                    f"{where}: field {field_name!r} is {value!r}: without label_names every "
                    "label must be a name (a string); list label_names to use indices"
                )
            seen.add(value.strip())
        if len(seen) < 2:
            raise DataError(f"the train rows hold {len(seen)} distinct label(s); a task needs 2")
        return tuple(sorted(seen))

    # ---- row -> Example ----

    def _context(self, row: dict[str, Any], role: str, value: str) -> str:
        names = [name for name in _placeholders(self.prompt_template) if name != role]
        return self.prompt_template.format_map({**{n: _cell(row, n) for n in names}, role: value})

    def _row_id(self, row: dict[str, Any]) -> str:
        if not self.id:
            return ""
        value = row.get(self.id)
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise RowError(self.id, f"must be a string or an int, got {value!r}")
        return str(value)

    def _classification(self, row: dict[str, Any], names: tuple[str, ...]) -> Example:
        text = _string(row, self.field_of("text"))
        gold = _label_index(row, self.field_of("label"), names, inferred=not self.label_names)
        return Example(
            id=self._row_id(row),
            context=self._context(row, "text", text),
            choices=names,
            gold=gold,
            question=text,
        )

    def _multiple_choice(self, row: dict[str, Any]) -> Example:
        question = _string(row, self.field_of("question"))
        labels: tuple[str, ...] = ()
        if len(self.choice_fields) > 1:
            texts = tuple(_cell(row, f) for f in self.choice_fields)
        else:
            texts, labels = _choice_list(row, self.choice_fields[0])
        gold = _answer_index(row, self.field_of("answer"), texts, labels)
        return Example(
            id=self._row_id(row),
            context=self._context(row, "question", question),
            choices=texts,
            gold=gold,
            question=question,
        )

    def _generative(self, row: dict[str, Any]) -> Example:
        prompt = _string(row, self.field_of("prompt"))
        target = _cell(row, self.field_of("target"))
        answer_field = self.field_of("answer")
        answer = _cell(row, answer_field) if answer_field else target
        for name, value in ((self.field_of("target"), target), (answer_field, answer)):
            if not value.strip():
                raise RowError(name, "is empty")
        return Example(
            id=self._row_id(row),
            context=self._context(row, "prompt", prompt),
            choices=(),
            gold=-1,
            target=target,
            answer=answer.strip(),
            question=prompt,
        )


# ---- reading files ----


def read_rows(path: Path, purpose: str = "") -> Located:
    """Every row of a local .jsonl, .csv or .parquet file with where it is (file and line,
    or row for Parquet); a missing or empty file is a `DataError` naming it (and `purpose`)."""
    if not path.is_file():
        raise DataError(
            f"no file {path}{f' for {purpose}' if purpose else ''} (relative paths start "
            f"from {Path.cwd()}, where fedkt runs)"
        )
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        located = _read_jsonl(path)
    elif suffix == ".csv":
        located = _read_csv(path)
    elif suffix == ".parquet":
        located = _read_parquet(path)
    else:
        raise DataError(f"{path}: cannot read {suffix or 'this'} files; use {'/'.join(FORMATS)}")
    if not located:
        raise DataError(
            f"{path} holds no rows: it is empty (or only a header or blank lines); add rows"
            f"{f' for {purpose}' if purpose else ''}, or point the task at another file"
        )
    return located


def _read_csv(path: Path) -> Located:
    """A header line, then one row per record; every value is a string. Empty cells count
    as missing fields."""
    located: Located = []
    try:
        with path.open(encoding="utf-8-sig", newline="") as lines:
            reader = csv.DictReader(lines)
            for record in reader:
                where = f"{path} line {reader.line_num}"
                if None in record:
                    raise DataError(f"{where}: more cells than the header has columns")
                row = {k: v for k, v in record.items() if v not in (None, "")}
                if row:
                    located.append((where, row))
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 ({err}); re-save it as UTF-8 CSV") from err
    except csv.Error as err:
        raise DataError(f"{path}: not valid CSV ({err})") from err
    return located


def _read_parquet(path: Path) -> Located:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise DataError(f"reading {path} needs pyarrow: pip install pyarrow") from err
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow's errors have no common base worth naming
        raise DataError(f"{path}: not a readable Parquet file ({err})") from err
    return [(f"{path} row {index}", row) for index, row in enumerate(rows)]


def read_hub(hub_id: str, config: str | None, split: str) -> Located:
    """The rows of one split of a Hugging Face hub data set."""
    import datasets  # deferred: ~1 s that local files never need

    name = f"hub {hub_id} ({config or 'default'}) split {split!r}"
    try:
        rows = datasets.load_dataset(hub_id, config, split=split).to_list()
    except Exception as err:  # datasets raises many unrelated types (offline, auth, split)
        raise DataError(f"could not load {name}: {err}") from err
    if not rows:
        raise DataError(f"{name} holds no rows")
    return [(f"{name} row {index}", row) for index, row in enumerate(rows)]


def holdout_split(
    located: Located, share: float, seed: int, origin: str = "the train split"
) -> tuple[Located, Located]:
    """(kept, held out): ``round(share * n)`` rows drawn with `seed`, both in file order."""
    n = len(located)
    held = round(share * n)
    if not 0 < held < n:
        raise DataError(
            f"{origin}: {n} rows are too few to hold out {share:g} of them as validation; "
            "add rows, change holdout, or give a validation file under splits"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    out = set(order[:held])
    return (
        [r for i, r in enumerate(located) if i not in out],
        [r for i, r in enumerate(located) if i in out],
    )


# ---- typed field access (the loader adds file and line) ----


def _placeholders(template: str) -> list[str]:
    """The ``{name}`` fields of a template; anything fancier than a bare name is refused."""
    names: list[str] = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not name or not name.isidentifier() or spec or conversion:
            raise ValueError(f"{{{name}}} is not a plain {{field}} placeholder")
        names.append(name)
    return list(dict.fromkeys(names))


def _string(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str):
        problem = "is missing" if name not in row else f"must be a string, got {value!r}"
        raise RowError(name, problem)
    return value


def _cell(row: dict[str, Any], name: str) -> str:
    """A text field, numbers accepted as their text."""
    value = row.get(name)
    if not _is_text(value):
        problem = "is missing" if name not in row else f"must be text or a number, got {value!r}"
        raise RowError(name, problem)
    return str(value)


def _is_text(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _label_index(row: dict[str, Any], name: str, names: tuple[str, ...], inferred: bool) -> int:
    value = row.get(name)
    allowed = f"the label names {list(names)}" + (
        " (read from the train rows; list label_names to fix them)" if inferred else ""
    )
    if isinstance(value, str) and value.strip() in names:
        return names.index(value.strip())
    if value is None:
        raise RowError(name, "is missing")
    index = None if inferred else _as_index(value)
    if index is None:
        indices = "" if inferred else f" or an index 0-{len(names) - 1}"
        raise RowError(name, f"is {value!r}, not one of {allowed}{indices}")
    if not 0 <= index < len(names):
        raise RowError(name, f"is {value!r}: an index outside 0-{len(names) - 1} of {allowed}")
    return index


def _as_index(value: Any) -> int | None:
    """An int, or a string of digits (CSV cells are text); None otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _choice_list(row: dict[str, Any], name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(texts, labels) of one choices field: a list, a JSON list in a CSV cell, or the hub's
    ``{"text": [...], "label": [...]}``."""
    value = row.get(name)
    labels: list[Any] = []
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise RowError(name, f"holds a malformed JSON list ({err.msg})") from err
    if isinstance(value, dict) and isinstance(value.get("text"), list):
        value, labels = value["text"], value.get("label") or []
    if not isinstance(value, list) or len(value) < 2 or not all(map(_is_text, value)):
        if name not in row:
            raise RowError(name, "is missing")
        raise RowError(name, f"must be a list of at least two texts, got {value!r}")
    texts = tuple(str(v) for v in value)
    return texts, tuple(str(v) for v in labels) if len(labels) == len(texts) else ()


def _answer_index(
    row: dict[str, Any], name: str, texts: tuple[str, ...], labels: tuple[str, ...]
) -> int:
    """A choice's text, else its label (hub rows), else its letter, else its 0-based index."""
    value = row.get(name)
    if isinstance(value, str):
        key = value.strip()
        for known in (texts, labels, tuple(string.ascii_uppercase[: len(texts)])):
            if key in known:
                return known.index(key)
    index = _as_index(value)
    if index is not None and 0 <= index < len(texts):
        return index
    if value is None:
        raise RowError(name, "is missing")
    letters = f"A-{string.ascii_uppercase[len(texts) - 1]}" if len(texts) <= 26 else "a letter"
    raise RowError(
        name,
        f"is {value!r}: not a choice's text, a letter {letters} or an index 0-{len(texts) - 1} "
        f"(choices: {list(texts)})",
    )
