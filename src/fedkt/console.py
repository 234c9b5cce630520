"""What a fedkt command shows on the terminal, what goes to its log file, and the lock on its
output directory.

By default the terminal gets fedkt's own INFO lines (one per phase and round), its progress
bars and the final tables; everything else -- fedkt's DEBUG lines, Flower's, Ray's and
transformers' chatter, Python warnings, the traceback of an unexpected error -- goes to
``<output_dir>/fedkt.log`` (appended; a command without an output directory logs to
``<cache dir>/logs/fedkt.log``). ``--verbose`` sends all of it to the terminal too.

Flower simulates clients in Ray worker processes: the settings reach them through environment
variables (set before Ray starts, which copies the environment) and a Ray worker setup hook,
`setup_worker`, which applies the same warning filters there and appends their log records to
the same file. Their own output stays in Ray's session logs unless ``--verbose``.

Only the standard library is imported here: the worker hook runs before anything else.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from fedkt.errors import FedktError

LOG_NAME = "fedkt.log"
LOCK_NAME = ".fedkt.lock"
LOG_FILE_ENV = "FEDKT_LOG_FILE"
"""Where Ray's worker processes append their log records (set while a command runs)."""

_RAY_SETUP_HOOK_ENV = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"
"""Ray runs ``module.function`` named here in every worker process it starts (the env form of
``ray.init(runtime_env={"worker_process_setup_hook": ...})``; Flower passes its own runtime_env,
so the hook cannot go through ``init_args``)."""

_QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",  # transformers' own logger, read at import
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # "Loading weights" / "Writing model shards" bars
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # Ray's FutureWarning "Tip: In future versions"
    "RAY_DEDUP_LOGS": "0",
}
_ALWAYS_ENV = {
    "FLWR_LOG_LEVEL": "CRITICAL",  # Flower's own console handler; its records reach ours
    _RAY_SETUP_HOOK_ENV: "fedkt.console.setup_worker",
}

_NOISE: tuple[tuple[str, type[Warning], str], ...] = (
    # (message regex, category, module regex): known library warnings that say nothing to
    # a fedkt user; other warnings go to the log file.
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning, r"transformers\."),
    (r"Tip: In future versions of Ray", FutureWarning, r"ray\."),
)

_FILE_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"

_scope = ""


def ray_init_args(verbose: bool | None = None) -> dict[str, Any]:
    """``ray.init`` arguments for Flower's backend_config ``init_args``: Ray's own logger at
    ERROR and the workers' stdout/stderr kept out of the terminal unless verbose."""
    if verbose is None:
        verbose = _active is not None and _active.verbose
    if verbose:
        return {"logging_level": "INFO", "log_to_driver": True}
    return {"logging_level": "ERROR", "log_to_driver": False}


def scope() -> str:
    """What the command is doing now (e.g. ``[ag_news] fedcollm``), for progress lines logged
    from code that does not know its task and method; empty outside a `scoped` block."""
    return _scope


@contextmanager
def scoped(text: str) -> Iterator[None]:
    """Make `scope` return ``text`` inside the block (also in threads started there)."""
    global _scope
    before, _scope = _scope, text
    try:
        yield
    finally:
        _scope = before


class _TerminalFormatter(logging.Formatter):
    """fedkt's INFO lines as they are; warnings and errors with their level in front."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


class _OnlyFedkt(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == "fedkt" or record.name.startswith("fedkt.")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Writes to whatever ``sys.stderr`` is at the time (pytest swaps it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass


class Console:
    """The logging set-up of one command; `close` undoes it (fedkt's CLI runs in-process in
    the tests, many times over)."""

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self.log_path: Path | None = None
        self._file: logging.Handler | None = None
        self._buffer: list[logging.LogRecord] = []
        self._env: dict[str, str | None] = {}
        self._levels: dict[str, int] = {}
        self._filters = list(warnings.filters)
        self._flower_level: int | None = None
        root = logging.getLogger()
        self._terminal = _StderrHandler()
        if verbose:
            self._terminal.setLevel(logging.DEBUG)
            self._terminal.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        else:
            self._terminal.setLevel(logging.INFO)
            self._terminal.addFilter(_OnlyFedkt())
            self._terminal.setFormatter(_TerminalFormatter("%(message)s"))
        self._collect = _BufferHandler(self._buffer)
        for handler in (self._terminal, self._collect):
            root.addHandler(handler)
        self._set_level("", logging.INFO)  # libraries' INFO to the file; fedkt's DEBUG too
        self._set_level("fedkt", logging.DEBUG)
        self._set_env(_ALWAYS_ENV)
        if not verbose:
            self._set_env(_QUIET_ENV)
        logging.captureWarnings(True)
        if not verbose:
            for message, category, module in _NOISE:
                warnings.filterwarnings("ignore", message, category, module)
        self._quiet_loaded_libraries()

    # ---- the log file -----------------------------------------------------------------

    def attach(self, path: str | os.PathLike[str]) -> Path:
        """Append from now on (and what was logged so far) to ``path``; Ray's workers too."""
        path = Path(path).resolve()
        if self._file is not None:
            if path == self.log_path:
                return path
            self._remove(self._file)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(path, mode="a", encoding="utf-8", delay=False)
        except OSError as err:  # no log file is no reason to stop the command
            logging.getLogger(__name__).warning("cannot write the log file %s: %s", path, err)
            return path
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter(_FILE_FORMAT))
        if handler.stream is not None:
            handler.stream.write(f"\n==== {_command_line()} (pid {os.getpid()})\n")
        for record in self._buffer:
            handler.handle(record)
        self._buffer.clear()
        self._remove(self._collect)
        logging.getLogger().addHandler(handler)
        self._file, self.log_path = handler, path
        self._set_env({LOG_FILE_ENV: str(path)})
        return path

    def log_traceback(self, error: BaseException) -> Path:
        """Write ``error``'s traceback to the log file (the fallback one when none is attached
        yet) and return the file's path."""
        if self.log_path is None:
            self.attach(fallback_log_path())
        logging.getLogger("fedkt.cli").debug(
            "unexpected error", exc_info=(type(error), error, error.__traceback__)
        )
        assert self.log_path is not None
        return self.log_path

    def close(self) -> None:
        """Remove the handlers, restore the levels, warning filters and environment."""
        root = logging.getLogger()
        for handler in (self._terminal, self._collect, self._file):
            if handler is not None:
                self._remove(handler)
        for name, level in self._levels.items():
            logging.getLogger(name or None).setLevel(level)
        logging.captureWarnings(False)
        warnings.filters[:] = self._filters  # type: ignore[index]
        getattr(warnings, "_filters_mutated", lambda: None)()  # what catch_warnings does
        for key, value in self._env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self._flower_level is not None:
            _flower_console().setLevel(self._flower_level)
        del root
        global _active
        if _active is self:
            _active = None

    # ---- helpers ----------------------------------------------------------------------

    def _remove(self, handler: logging.Handler) -> None:
        logging.getLogger().removeHandler(handler)
        handler.close()

    def _set_level(self, name: str, level: int) -> None:
        logger = logging.getLogger(name or None)
        self._levels.setdefault(name, logger.level)
        logger.setLevel(level)

    def _set_env(self, values: dict[str, str]) -> None:
        for key, value in values.items():
            self._env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def _quiet_loaded_libraries(self) -> None:
        """Libraries imported before this (in-process use): the env vars came too late."""
        if "flwr.supercore.logger" in sys.modules:
            handler = _flower_console()
            self._flower_level = handler.level
            handler.setLevel(logging.CRITICAL)
        if not self.verbose and "transformers" in sys.modules:
            quiet_transformers()


class _BufferHandler(logging.Handler):
    """Keeps records until the log file is known."""

    def __init__(self, buffer: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.buffer = buffer

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.buffer) < 10_000:
            self.buffer.append(record)


_active: Console | None = None


def start(verbose: bool = False) -> Console:
    """Set up the terminal and the log buffer of a command (see the module docstring)."""
    global _active
    if _active is not None:
        _active.close()
    _active = Console(verbose)
    return _active


def quiet_transformers() -> None:
    """transformers' logger at ERROR and no progress bars while loading or saving weights."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def fallback_log_path(cache_dir: str | None = None) -> Path:
    """The log file of a command without an output directory: under fedkt's cache directory
    (``cache_dir``, else $FEDKT_CACHE_DIR, else ~/.cache/fedkt)."""
    cache = cache_dir or os.environ.get("FEDKT_CACHE_DIR") or Path.home() / ".cache" / "fedkt"
    return Path(cache).expanduser() / "logs" / LOG_NAME


def setup_worker() -> None:
    """Ray's worker setup hook: the warning filters, and log records appended to the
    command's log file. Never raises (a failing hook would stop the worker)."""
    try:
        logging.captureWarnings(True)
        for message, category, module in _NOISE:
            warnings.filterwarnings("ignore", message, category, module)
        path = os.environ.get(LOG_FILE_ENV)
        if path:
            handler = logging.FileHandler(path, mode="a", encoding="utf-8")
            handler.setLevel(logging.DEBUG)
            handler.setFormatter(logging.Formatter(_FILE_FORMAT))
            root = logging.getLogger()
            root.addHandler(handler)
            root.setLevel(logging.INFO)
            logging.getLogger("fedkt").setLevel(logging.DEBUG)
    except Exception:  # a worker must start even without its log file
        pass


def _flower_console() -> logging.Handler:
    from flwr.supercore.logger import console_handler

    return console_handler


def _command_line() -> str:
    return " ".join(["fedkt", *sys.argv[1:]]) if sys.argv else "fedkt"


# ---- the output directory's lock ----------------------------------------------------------


class OutputLock:
    """An exclusive ``flock`` on ``<output_dir>/.fedkt.lock`` for the whole command.

    The file holds the owner's pid and command line, for the refusal message. The lock dies
    with its process, so a killed run leaves nothing that blocks the next one (or ``--resume``).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise FedktError(
                f"output directory {self.directory} cannot be written ({type(err).__name__}: "
                f"{err.strerror or err}): choose another with --output-dir (output_dir in the "
                "config), or make it writable; nothing has run yet"
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 4096).decode("utf-8", "replace").strip().splitlines()
            os.close(fd)
            pid = owner[0] if owner else "unknown"
            command = f" ({owner[1]})" if len(owner) > 1 else ""
            raise FedktError(
                f"{self.directory} is in use by another fedkt run, pid {pid}{command}; wait "
                "for it to finish, stop it, or pass another --output-dir."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n{_command_line()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
