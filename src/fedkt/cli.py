"""The ``fedkt`` command: thin argument parsing over `fedkt.jobs` and `fedkt.experiments`.

Flags override the TOML config field by field, so ``fedkt eval --model X --task Y`` works without
a file and ``fedkt eval --config c.toml --limit 50`` tweaks one. Every fedkt error is printed as
one line (no traceback) and exits with status 2; any other exception is printed as one line
with its traceback in the log file, status 1; Ctrl-C stops the command with status 130. What
the terminal shows and what goes to ``<output_dir>/fedkt.log``: `fedkt.console`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import fedkt
from fedkt import console, preflight
from fedkt.config import FedktConfig, load_config, with_overrides
from fedkt.errors import FedktError
from fedkt.report import format_table

_LOG = logging.getLogger("fedkt.cli")  # also when run as `python -m fedkt.cli`

EXIT_UNEXPECTED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedkt`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    terminal = console.start(verbose=args.verbose)
    lock: console.OutputLock | None = None
    try:
        config = _config_from(args)
        if args.handler in (_eval, _finetune, _run):  # they write into the output directory
            lock = console.OutputLock(config.output_dir).acquire()
            terminal.attach(Path(config.output_dir) / console.LOG_NAME)
        else:
            terminal.attach(console.fallback_log_path(config.cache_dir or None))
        handler: Callable[[FedktConfig, argparse.Namespace], int] = args.handler
        code = handler(config, args)
    except KeyboardInterrupt:
        _LOG.debug("interrupted", exc_info=True)
        print(f"fedkt: interrupted; kept what was finished (log: {terminal.log_path})",
              file=sys.stderr)  # fmt: skip
        code = EXIT_INTERRUPTED
    except Exception as err:
        known = _fedkt_error(err)
        if known is not None:
            _LOG.debug("fedkt error", exc_info=True)
            print(f"fedkt: error: {known}", file=sys.stderr)
            code = EXIT_ERROR
        else:
            path = terminal.log_traceback(err)
            print(f"fedkt: unexpected error: {type(err).__name__}: {_first_line(err)} "
                  f"(traceback in {path})", file=sys.stderr)  # fmt: skip
            code = EXIT_UNEXPECTED
    finally:
        if lock is not None:
            lock.release()
        terminal.close()
    if code == EXIT_INTERRUPTED and argv is None:
        _leave_after_interrupt()
    return code


def _fedkt_error(err: BaseException) -> FedktError | None:
    """``err`` or the FedktError it wraps (Flower wraps what its ServerApp raised)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, FedktError):
            return seen
        seen = seen.__cause__
    return None


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else "(no message)"


def _leave_after_interrupt(grace: float = 10.0) -> None:
    """Give the threads a library left running a few seconds to end, then leave without them
    (the interpreter would otherwise wait for them at exit, and Ctrl-C would seem ignored)."""
    try:
        deadline = time.monotonic() + grace
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if not any(
            t.is_alive() and not t.daemon and t is not threading.main_thread()
            for t in threading.enumerate()
        ):
            return
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedkt", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fedkt {fedkt.__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    evaluate = commands.add_parser("eval", help="zero-shot evaluation of one or more models")
    _common_flags(evaluate)
    evaluate.add_argument("--batch-size", type=int, help="sequences per forward pass")
    evaluate.set_defaults(handler=_eval)

    finetune = commands.add_parser("finetune", help="standalone fine-tune, evaluated before/after")
    _common_flags(finetune)
    finetune.add_argument("--method", choices=["lora", "full"], help="what to train")
    finetune.add_argument("--epochs", type=int, help="passes over the train split")
    finetune.add_argument("--lr", type=float, help="peak learning rate")
    finetune.add_argument("--train-limit", type=int, help="use the first N train rows")
    finetune.set_defaults(handler=_finetune)

    run = commands.add_parser(
        "run",
        help="an algorithm beside its baselines on each task: table, results.json, plot, "
        "trained adapters",
    )
    run.add_argument("config", help="TOML config file ([federation], [fedcollm], [train], ...)")
    run.add_argument("--task", action="append", help="task name (repeatable)")
    run.add_argument("--limit", type=int, help="evaluate on the first N rows only")
    run.add_argument("--train-limit", type=int, help="use the first N train rows")
    run.add_argument("--output-dir", help="where results.json and results.png are written")
    run.add_argument("--data-dir", help="local data directory (default: $FEDKT_DATA_DIR)")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the output directory: skip finished methods, continue the "
        "unfinished one from its last complete round (the config must be unchanged)",
    )
    run.set_defaults(handler=_run)

    student = commands.add_parser(
        "make-student", help="cut a teacher to its first layers and heal the cut (cached)"
    )
    student.add_argument("--config", help="TOML config file (for data and cache settings)")
    student.add_argument("--teacher", default="smollm2-135m", help="model to cut")
    student.add_argument("--layers", type=int, default=8, help="decoder layers to keep")
    student.add_argument("--lens-tokens", type=int, help="tokens the output lens is fitted on")
    student.add_argument("--kd-tokens", type=int, help="tokens of logit distillation afterwards")
    student.add_argument("--data-dir", help="local data directory (default: $FEDKT_DATA_DIR)")
    student.add_argument("--force", action="store_true", help="rebuild even if cached")
    student.set_defaults(handler=_make_student)

    export = commands.add_parser(
        "export", help="merge a run's trained adapter into a plain transformers model folder"
    )
    export.add_argument("run_dir", metavar="RUN_DIR", help="<output_dir>/<task>/<method>/ of a run")
    export.add_argument("--which", required=True, choices=["slm", "llm"], help="model to export")
    export.add_argument("--client", help="partition id of a client's own SLM (no global SLM)")
    export.add_argument("--out", required=True, help="new (or empty) folder to write")
    export.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
        help="weights' dtype on disk (the merge runs in float32)",
    )  # fmt: skip
    export.add_argument("--config", help="TOML config file (for the cache setting)")
    # _config_from reads these; export takes none of them.
    export.set_defaults(handler=_export, task=None, limit=None, data_dir=None, output_dir=None)

    retention = commands.add_parser(
        "retention",
        help="FedCoT: each mechanism's retention r(eps) on public questions, and the eps "
        "where it crosses 1, 5, 20, 50, 80 and 95 %% (no LLM)",
    )
    retention.add_argument("--config", required=True, help="TOML config file ([fedcot], [data])")
    retention.add_argument("--task", action="append", help="task name (repeatable)")
    retention.add_argument(
        "--questions", type=int, default=200, help="public train questions measured per task"
    )
    retention.add_argument("--data-dir", help="local data directory (default: $FEDKT_DATA_DIR)")
    retention.set_defaults(handler=_retention, limit=None, output_dir=None)
    deployed = _deployment_commands(commands)
    for command in (evaluate, finetune, run, student, export, retention, *deployed):
        command.add_argument(
            "--verbose",
            action="store_true",
            help="also show fedkt's debug lines and the libraries' output (Flower, Ray, "
            "transformers); they always go to the log file",
        )
    return parser


def _deployment_commands(commands: Any) -> list[argparse.ArgumentParser]:
    """`fedkt certs|partition|server|client`: FedCoLLM, FedCoT or FDKT across machines (README
    "Run across machines"); they take no data or evaluation flags."""
    certs = commands.add_parser(
        "certs", help="a self-signed CA, a SuperLink certificate and SuperNode keys (trials)"
    )
    certs.add_argument("dir", metavar="DIR", help="folder to write them to")
    certs.add_argument(
        "--host", action="append",
        help="name or IP the SuperLink is reached by (repeatable; default: loopback)",
    )  # fmt: skip
    certs.add_argument("--clients", type=int, default=2, help="SuperNode key pairs to make")
    certs.set_defaults(
        handler=_certs, config=None, task=None, limit=None, data_dir=None, output_dir=None
    )

    split = commands.add_parser(
        "partition", help="write each client's rows (and the public rows) as the simulation "
        "splits them: client<k>.jsonl, public.jsonl",
    )  # fmt: skip
    split.add_argument("config", help="TOML config file ([data], [federation])")
    split.add_argument("--out", required=True, help="folder to write the rows files to")
    split.add_argument("--data-dir", help="local data directory (default: $FEDKT_DATA_DIR)")
    split.set_defaults(handler=_partition, task=None, limit=None, output_dir=None)

    server = commands.add_parser(
        "server",
        help="the server (config's algorithm) on Flower's deployment engine: SuperLink + ServerApp",
    )
    server.add_argument("config", help="TOML config file ([deployment], [federation], ...)")
    server.add_argument("--public", help="the server's public rows (default: carved from the task)")
    server.add_argument(
        "--superlink-running", action="store_true",
        help="use the SuperLink already running at deployment.superlink (do not start one)",
    )  # fmt: skip
    server.add_argument("--output-dir", help="where the outcome and logs are written")
    server.add_argument("--data-dir", help="local data directory (default: $FEDKT_DATA_DIR)")
    server.set_defaults(handler=_server, task=None, limit=None)

    client = commands.add_parser(
        "client", help="one client (config's algorithm) on Flower's deployment engine: a SuperNode"
    )
    client.add_argument("config", help="TOML config file ([deployment], [federation], ...)")
    client.add_argument("--data", required=True, help="this client's rows (JSON lines)")
    client.add_argument("--partition-id", type=int, required=True, help="this client's index")
    client.add_argument("--key", help="this SuperNode's private key (certs/client<k>.key)")
    client.add_argument(
        "--max-wait", type=float, help="give up after this many seconds without the SuperLink"
    )
    client.add_argument("--output-dir", help="where this client's own reports are written")
    client.add_argument(
        "--no-worker", dest="worker", action="store_false",
        help="no long-lived worker beside the SuperNode: each message (round) imports torch "
        "and loads the client's models again, in the process Flower starts for it (default: a "
        "worker keeps them loaded; its counts in OUTPUT_DIR/client-worker-K/worker.json)",
    )  # fmt: skip
    client.set_defaults(handler=_client, task=None, limit=None, data_dir=None)
    for command in (server, client):
        command.add_argument(
            "--insecure", action="store_true",
            help="no TLS and no SuperNode authentication (a warning says so); trials only",
        )  # fmt: skip
    return [certs, split, server, client]


def _common_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--config", help="TOML config file (flags below override it)")
    command.add_argument("--model", action="append", help="model name or path (repeatable)")
    command.add_argument("--task", action="append", help="task name (repeatable)")
    command.add_argument("--split", help="split to evaluate on (default: validation)")
    command.add_argument("--limit", type=int, help="evaluate on the first N rows only")
    command.add_argument("--output-dir", help="where results.json is written")
    command.add_argument("--data-dir", help="local data directory (default: $FEDKT_DATA_DIR)")


def _config_from(args: argparse.Namespace) -> FedktConfig:
    """The file's config (or the defaults) with the command-line flags applied on top."""
    config = load_config(args.config) if args.config else FedktConfig()
    if args.handler is _make_student:
        return with_overrides(config, data=with_overrides(config.data, dir=args.data_dir))
    models = tuple(args.model) if getattr(args, "model", None) else None
    data = with_overrides(
        config.data,
        tasks=tuple(args.task) if args.task else None,
        split=getattr(args, "split", None),
        limit=args.limit,
        dir=args.data_dir,
        train_limit=getattr(args, "train_limit", None),
    )
    evaluation = with_overrides(
        config.eval, models=models, batch_size=getattr(args, "batch_size", None)
    )
    model = with_overrides(config.model, name=models[0] if models else None)
    train = with_overrides(
        config.train, epochs=getattr(args, "epochs", None), lr=getattr(args, "lr", None)
    )
    finetune = with_overrides(config.finetune, method=getattr(args, "method", None))
    return with_overrides(
        config,
        data=data,
        eval=evaluation,
        model=model,
        train=train,
        finetune=finetune,
        output_dir=args.output_dir,
    )


def _eval(config: FedktConfig, args: argparse.Namespace) -> int:
    preflight.check_eval(config)  # before any model loads: names, data, output directory
    from fedkt.jobs import run_eval  # heavy imports (torch, transformers) only when needed

    results = run_eval(config)
    rows = [
        [model, task, *_metric_cells(scores)]
        for model, per_task in results["models"].items()
        for task, scores in per_task.items()
    ]
    print(format_table(["model", "task", "metric", "score", "n", "seconds"], rows))
    print(f"results: {config.output_dir}/results.json")
    return 0


def _finetune(config: FedktConfig, args: argparse.Namespace) -> int:
    preflight.check_finetune(config)
    from fedkt.jobs import run_finetune

    results = run_finetune(config)
    rows = []
    for task, entry in results["tasks"].items():
        metric, before, n, _ = _metric_cells(entry["before"])
        after = _metric_cells(entry["after"])[1]
        rows.append([task, metric, before, after, n, f"{entry['train']['seconds']:.0f}"])
    print(format_table(["task", "metric", "before", "after", "n", "train s"], rows))
    print(f"results: {config.output_dir}/results.json")
    return 0


def _run(config: FedktConfig, args: argparse.Namespace) -> int:
    preflight.check_run(config)
    _prepare_flower(config)
    from fedkt.experiments import (
        comparisons_table,
        plot_experiment,
        results_table,
        run_experiment,
    )

    results = run_experiment(config, resume=args.resume)
    print(results_table(results))
    if config.algorithm == "fedcot":
        from fedkt.experiments.fedcot import privacy_table

        print(privacy_table(results))
    elif config.algorithm == "fdkt":
        from fedkt.experiments.fdkt import privacy_table as fdkt_privacy

        print(fdkt_privacy(results))
    else:
        from fedkt.experiments.harness import dp_table

        if dp_table(results):  # FedCoLLM with a DP synthetic aux set
            print(dp_table(results))
    print(comparisons_table(results))
    plot = plot_experiment(config, results, Path(config.output_dir) / "results.png")
    print(
        f"results: {config.output_dir}/results.json, per-row predictions: "
        f"{config.output_dir}/predictions/, plot: {plot}"
    )
    return 0


def _prepare_flower(config: FedktConfig) -> None:
    """Environment for the Flower simulation, set before flwr is imported (it reads telemetry
    at import). Ray's client processes inherit it, so the cache setting reaches them too."""
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    os.environ.setdefault("FLWR_HOME", str(Path(config.output_dir).resolve() / "flwr-home"))
    if config.cache_dir:
        os.environ["FEDKT_CACHE_DIR"] = config.cache_dir


def _make_student(config: FedktConfig, args: argparse.Namespace) -> int:
    from fedkt.data import resolve_data_dir
    from fedkt.models import resolve_cache_dir
    from fedkt.students import HealSettings, make_student

    settings = with_overrides(
        HealSettings(), layers=args.layers, lens_tokens=args.lens_tokens, kd_tokens=args.kd_tokens
    )
    path = make_student(
        args.teacher,
        settings,
        data_dir=resolve_data_dir(config.data.dir or None),
        cache_dir=resolve_cache_dir(config.cache_dir or None),
        force=args.force,
    )
    print(f"student: {args.teacher}@layers={args.layers},healed=true -> {path}")
    return 0


def _export(config: FedktConfig, args: argparse.Namespace) -> int:
    from fedkt.export import export_model

    result = export_model(
        args.run_dir,
        args.which,
        args.out,
        client=args.client,
        dtype=args.dtype,
        cache_dir=config.cache_dir or None,
    )
    print(
        f"exported: {result.out} ({result.size_bytes / 1e6:.1f} MB, {args.dtype}, "
        f"{result.seconds:.1f} s; adapter {result.adapter} on {result.base_model})"
    )
    return 0


def _retention(config: FedktConfig, args: argparse.Namespace) -> int:
    """Per task, the knees of every [fedcot] strategy on the first ``--questions`` public train
    questions (their private fields), over the decoder's kit as a client builds it."""
    from fedkt.data.cot import label_names, private_fields
    from fedkt.jobs import task_examples
    from fedkt.models import load_model_and_tokenizer
    from fedkt.privacy import build_kit, public_importance
    from fedkt.privacy.retention import KNEE_TARGETS, Retention, measure_knees, public_tokens

    settings = config.fedcot
    model, tokenizer = load_model_and_tokenizer(
        settings.decoder, dtype="float32", device="cpu", cache_dir=config.cache_dir or None
    )
    embeddings = model.get_input_embeddings().weight.detach().float().cpu()  # type: ignore[operator]
    kit = build_kit(
        tokenizer, embeddings, min_letters=settings.min_letters, partition=settings.candidates
    )
    rows = []
    for task in config.data.tasks:
        public = task_examples(config, task, "train", 0)
        labels = label_names(public)
        fields = [f for e in public[: args.questions] for f in private_fields(e, labels)]
        tokens = public_tokens(tokenizer, kit, fields)
        importance = public_importance(tokenizer, [e.question for e in public])
        for strategy in settings.strategies:
            if strategy == "paraphrase":  # no per-token retention: every token is sampled
                continue
            curve = Retention(
                tokens,
                strategy,
                importance=importance,
                cluster_size=settings.cluster_size,
                inner=settings.custext_inner,
            )
            summary = measure_knees(curve, curve_eps=())
            knees = [_eps_cell(summary["knees"][f"{t:g}"]) for t in KNEE_TARGETS]
            grid = ", ".join(_eps_cell(e) for e in summary["grid"])
            rows.append([task, curve.name, f"{100 * summary['r0']:.2g}", *knees, grid])
    headers = ["task", "mechanism", "r(0) %", *(f"{100 * t:g}%" for t in KNEE_TARGETS), "grid"]
    print(format_table(headers, rows))
    print(
        f"eps where r(eps) reaches each share of the perturbed public tokens ({settings.candidates}"
        f" kit of {settings.decoder}; metric: eps_d; '-': never crossed in [1e-3, 1e5])"
    )
    return 0


def _certs(config: FedktConfig, args: argparse.Namespace) -> int:
    from fedkt.certs import DEFAULT_HOSTS, make_certs

    paths = make_certs(args.dir, hosts=tuple(args.host or DEFAULT_HOSTS), clients=args.clients)
    print(f"CA: {paths.ca_cert}; SuperLink: {paths.server_cert}, {paths.server_key}")
    keys = ", ".join(str(p) for p in paths.client_keys)
    print(f"SuperNode keys: {keys} (public halves: *.pub); private keys are 0600")
    return 0


def _partition(config: FedktConfig, args: argparse.Namespace) -> int:
    from fedkt.deploy.apps import deployment_task
    from fedkt.deploy.rows import write_rows
    from fedkt.experiments.harness import TaskData

    data = TaskData.load(config, deployment_task(config))
    out = Path(args.out)
    for k, part in enumerate(data.clients):
        print(f"client {k}: {len(part)} rows -> {write_rows(out / f'client{k}.jsonl', part)}")
    print(f"public: {len(data.public)} rows -> {write_rows(out / 'public.jsonl', data.public)}")
    return 0


def _server(config: FedktConfig, args: argparse.Namespace) -> int:
    _prepare_flower(config)
    from fedkt.deploy.commands import serve

    folder = serve(
        config,
        args.config,
        public=args.public or "",
        insecure=args.insecure,
        superlink_running=args.superlink_running,
    )
    from fedkt.deploy.apps import outcome_file

    print(f"outcome: {folder} ({outcome_file(config).name}: what the server kept of the run)")
    return 0


def _client(config: FedktConfig, args: argparse.Namespace) -> int:
    _prepare_flower(config)
    from fedkt.deploy.commands import join

    join(
        config,
        args.config,
        data=args.data,
        partition=args.partition_id,
        key=args.key,
        insecure=args.insecure,
        max_wait=args.max_wait,
        worker=args.worker,
    )
    return 0  # the SuperNode exited (with --no-worker it replaced this process)


def _eps_cell(eps: float | None) -> str:
    return "-" if eps is None else f"{eps:.3g}"


def _metric_cells(scores: dict[str, Any]) -> list[str]:
    """[metric name, score %, n, seconds] for the headline metric of a score dict."""
    metric = next(m for m in ("acc", "exact_match") if m in scores)
    shown = f"{100 * scores[metric]:.1f}"
    if "acc_norm" in scores:
        shown += f" (norm {100 * scores['acc_norm']:.1f})"
    return [metric, shown, str(int(scores["n"])), f"{scores.get('seconds', 0):.1f}"]


if __name__ == "__main__":
    raise SystemExit(main())
