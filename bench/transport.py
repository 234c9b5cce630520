"""What Flower's deployment engine adds to a FedCoLLM round, and the simulation at scale.

Part ``deploy`` (issue 15, item 8): the same FedCoLLM run (same config, rows, seeds) once in
Flower's in-process simulation (`simulate_fedcollm`) and once deployed on loopback (`fedkt
server` + one `fedkt client` SuperNode per client, `fedkt.deploy.local`), for 2, 4 and 8
clients and three transports:

- ``plain``: ``--insecure`` (no TLS, no SuperNode authentication);
- ``tls``: TLS with SuperNode authentication (fedkt's defaults);
- ``secagg``: TLS + authentication + SecAgg+ (``[fedcollm] secure_aggregation = true``),
  against a simulation with SecAgg+ too;
- ``no_worker``: as ``tls`` but ``fedkt client --no-worker``: Flower 1.41 starts a ClientApp
  process per message, which loads the SLM again every time; against ``tls`` it measures the
  reload cost the long-lived client worker (`fedkt.deploy.worker`, the default) avoids.

Per round it reports the round time of each side (the server's ``RoundRecord`` seconds) and
their ratio; the payload bytes each side's codec counted (``RoundRecord`` bytes, both ways);
and the bytes the SuperNodes' TCP connections to the SuperLink carried (``ss`` tcp_info of
every SuperNode socket, sampled every 0.25 s: gRPC framing, TLS, heartbeats and all; a
round's share runs from one checkpoint write to the next, so round 1 also holds joining and
the app's download), against the simulation's payload bytes. Round 1 of either side
includes loading the SLM (Ray's actors, the clients' workers), so the last round is the
steady-state figure; the workers' own ``worker.json`` (seconds of the first and the later
messages) is kept per run. Deployed client processes run with one thread, as Ray's one-CPU
actors do.

Part ``scale`` (item 9): one simulated FedCoLLM round with 2 (the reference), 10, 50 and 100
clients of the same rows each: peak memory of the whole process tree (the bench's worker,
Ray's GCS, raylet and workers; RSS and PSS summed, sampled every 0.2 s) and the round time
against the clients' total tokens. The target: peak RSS <= 2x the 2-client run's (clients
reuse one SLM per Ray worker process, none is loaded per client) and a round time linear in
client tokens (least-squares line, R^2 >= 0.95).

Writes bench/results/transport.json (each part's section as soon as it is done; a rerun with
``--part`` replaces that section only) and bench/results/transport.png.

    .venv/bin/python bench/transport.py                    # 32 min on 2 idle CPU cores
    .venv/bin/python bench/transport.py --part scale       # ~3 min (deploy: ~29 min)
    .venv/bin/python bench/transport.py --tiny             # tiny random models, ~3 min

Models: the embedded pair (server LLM ``smollm2-135m``, client SLM its 8 healed layers, as
configs/quickstart.toml; `fedkt make-student` must have cached the student), AG News train
rows. ``--tiny``: tiny random Llamas (tests/conftest.py) and writes transport-tiny.json/png
instead, to check the script, not for figures.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
TASK = "ag_news"
MODES = ("plain", "tls", "secagg", "no_worker")
EMBEDDED = ("smollm2-135m", "smollm2-135m@layers=8,healed=true")
BUDGET = (
    "2 CPU cores shared with other jobs, no GPU: times are indicative, ratios taken within "
    "one invocation on the same load"
)
LINEAR_R2 = 0.95
STDERR = (
    "none: one run per cell (a run is minutes of 2 shared cores), so round times and memory "
    "peaks are single measurements, indicative to about +-10 % (the TLS and plain cells, "
    "alike by design, differ by up to 4 %); byte counts are deterministic payload sizes, and "
    "wire bytes vary only by the heartbeats in the sampling window; the scale fit's R^2 is "
    "over 4 single points"
)
TINY_STDERR = (
    "none: one run per setting of a script check with tiny random models; not figures to cite "
    "(bench/transport.py without --tiny gives the real ones)"
)


@dataclass(frozen=True)
class Setup:
    """What every run of one invocation shares."""

    llm: str
    slm: str
    dtype: str
    rows: int  # per client, deploy part
    scale_rows: int  # per client, scale part
    public: int
    rounds: int
    max_length: int
    kd_steps: int
    lora_r: int
    timeout: float  # seconds, per run
    work: Path


def main() -> None:
    args = _args()
    if args.one_sim:
        _simulate_one(Path(args.one_sim))
        return
    os.environ.update(FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1", HF_HUB_OFFLINE="1")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fedkt-transport-")).resolve()
    os.environ.setdefault("FLWR_HOME", str(work / "flwr-home"))
    setup = _setup(args, work)
    out = RESULTS / ("transport-tiny.json" if args.tiny else "transport.json")
    from fedkt.report import read_json, write_json

    report: dict[str, Any] = read_json(out) if out.is_file() else {}
    report["standard_error"] = TINY_STDERR if args.tiny else STDERR
    report["protocol"] = _protocol(setup, args)
    began = time.perf_counter()
    if args.part in ("deploy", "all"):
        report["deploy"] = {}
        for k in args.clients:
            report["deploy"][str(k)] = deploy_cell(setup, k, args.modes)
            write_json(out, report)  # a cell at a time: a crash keeps what is done
            _plot(report, out.with_suffix(".png"))
    if args.part in ("scale", "all"):
        report["scale"] = scale_part(setup, [2, *args.scale_clients], out, report)
        write_json(out, report)
    _plot(report, out.with_suffix(".png"))
    print(f"{out} ({(time.perf_counter() - began) / 60:.1f} min; work files in {work})")


# ---- part 1: deployed against simulated ---------------------------------------------------


def deploy_cell(setup: Setup, clients: int, modes: Sequence[str]) -> dict[str, Any]:
    """Simulation (plain and, when asked, SecAgg+) and each deployed mode for one client count."""
    rows = _write_rows(setup, setup.work / f"rows-k{clients}", clients, setup.rows)
    sims: dict[str, dict[str, Any]] = {}
    for secagg in sorted({mode == "secagg" for mode in modes}):
        name = "secagg" if secagg else "plain"
        sims[name] = _guarded(partial(simulated, setup, rows, clients, secagg=secagg, tag=name))
        _say(f"{clients} clients, simulation {name}: {_brief(sims[name])}")
    deployed_runs: dict[str, dict[str, Any]] = {}
    for mode in modes:
        deployed_runs[mode] = _guarded(partial(deployed, setup, rows, clients, mode))
        _say(f"{clients} clients, deployed {mode}: {_brief(deployed_runs[mode])}")
    ratios = {
        mode: _ratios(run, sims["secagg" if mode == "secagg" else "plain"])
        for mode, run in deployed_runs.items()
    }
    cell = {"simulation": sims, "deployed": deployed_runs, "ratios": ratios}
    if "tls" in deployed_runs and "no_worker" in deployed_runs:
        cell["worker_saves"] = _worker_saving(deployed_runs["tls"], deployed_runs["no_worker"])
    return cell


def _worker_saving(worker: dict[str, Any], no_worker: dict[str, Any]) -> dict[str, Any]:
    """What keeping the models in the client worker saves against a ClientApp process (and an
    SLM load) per message: the last round's seconds of each and their difference."""
    if "error" in worker or "error" in no_worker:
        return {"error": "a run failed; see its entry"}
    with_worker, without = worker["rounds"][-1]["seconds"], no_worker["rounds"][-1]["seconds"]
    return {
        "round_seconds_with_worker": with_worker,
        "round_seconds_without": without,
        "seconds_saved_per_round": round(without - with_worker, 2),
        "ratio_without_over_with": _div(without, with_worker),
    }


def simulated(setup: Setup, rows: Path, clients: int, *, secagg: bool, tag: str) -> dict[str, Any]:
    root = setup.work / f"sim-k{clients}-{tag}"
    config = _write_config(setup, root, rows, clients, secagg=secagg, port=0)
    return _run_worker(setup, config, rows, root)


def deployed(setup: Setup, rows: Path, clients: int, mode: str) -> dict[str, Any]:
    """`fedkt server` and ``clients`` `fedkt client`s on loopback; their rounds as the server
    recorded them, the SuperNodes' wire bytes, the run's wall time and peak memory."""
    from fedkt.deploy import launch, local
    from fedkt.report import read_json

    root = setup.work / f"deploy-k{clients}-{mode}"
    port = launch.free_port()
    config = _write_config(setup, root, rows, clients, secagg=mode == "secagg", port=port)
    insecure = mode == "plain"
    env = launch.flower_env({"FLWR_HOME": str(root / "flwr-home"), "HF_HUB_OFFLINE": "1"})
    one_thread = ["env", "OMP_NUM_THREADS=1", "MKL_NUM_THREADS=1"]
    commands = [
        [*one_thread, *local.client_command(
            config, data=rows / f"client{k}.jsonl", partition=k,
            output_dir=root / f"client{k}-out", insecure=insecure,
            key=None if insecure else root / "certs" / f"client{k}.key",
            worker=mode != "no_worker",
        )]
        for k in range(clients)
    ]  # fmt: skip
    wire, memory = WireBytes(port), TreeMemory(os.getpid())
    outcome = root / "out" / TASK / "fedcollm-deployed"
    shutil.rmtree(outcome, ignore_errors=True)  # a reused --work-dir: no old round ends
    checkpoint, last = outcome / "checkpoint.safetensors", [(0, 0)]

    def poll() -> None:
        wire.sample()
        memory.sample()
        with contextlib.suppress(OSError):
            stat = checkpoint.stat()  # rewritten (atomically) when a round ends
            if (stat.st_ino, stat.st_mtime_ns) != last[0]:
                last[0] = (stat.st_ino, stat.st_mtime_ns)
                wire.mark()

    run = local.launch_local_federation(
        local.server_command(config, public=rows / "public.jsonl", insecure=insecure),
        commands, env=env, log_dir=root / "logs", timeout=setup.timeout, poll=poll,
        poll_interval=0.25,
    )  # fmt: skip
    if run.returncode != 0:
        status = "timed out" if run.returncode is None else f"exited {run.returncode}"
        raise RuntimeError(f"the server {status}: {local.tail(run.server_log, 8)}")
    state = read_json(outcome / "rounds.json")
    rounds = [_round_row(r) for r in state["rounds"]]
    return {
        "rounds": rounds,
        "wall_seconds": round(run.seconds, 2),
        "wire": wire.totals(len(rounds)),
        **memory.peaks(),
        "client_workers": _worker_stats(root, clients),
    }


def _worker_stats(root: Path, clients: int) -> list[dict[str, Any]]:
    """Each deployed client's ``worker.json`` (none with ``--no-worker``)."""
    found = []
    for k in range(clients):
        for path in sorted((root / f"client{k}-out").rglob("worker.json")):
            found.append({"client": k, **json.loads(path.read_text(encoding="utf-8"))})
    return found


def _ratios(run: dict[str, Any], sim: dict[str, Any]) -> dict[str, Any]:
    """Deployed over simulated: the last round's time, its payload bytes, and the wire bytes
    per round over the simulation's payload bytes per round."""
    if "error" in run or "error" in sim:
        return {"error": "a run failed; see its entry"}
    last, sim_last = run["rounds"][-1], sim["rounds"][-1]
    wire = run["wire"]["fleet_bytes_per_round"]
    return {
        "round_seconds": _div(last["seconds"], sim_last["seconds"]),
        "round_seconds_added": round(last["seconds"] - sim_last["seconds"], 2),
        "first_round_seconds": _div(run["rounds"][0]["seconds"], sim["rounds"][0]["seconds"]),
        "payload_bytes": _div(last["payload_bytes"], sim_last["payload_bytes"]),
        "wire_over_payload_bytes": _div(wire, sim_last["payload_bytes"]),
        "wire_bytes_added_per_round": wire - sim_last["payload_bytes"],
        "wall_seconds": _div(run["wall_seconds"], sim["wall_seconds"]),
    }


class WireBytes:
    """Bytes on every TCP connection to the SuperLink's port, from the connecting side (`ss`
    tcp_info), by owning process name; the SuperNodes' share is what crosses the network
    between machines (the ServerApp's and ``flwr``'s connections stay on the server)."""

    _SOCKET = re.compile(r'users:\(\("([^"]+)",pid=(\d+)')

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: dict[str, tuple[str, int, int]] = {}  # local address -> (name, sent, recv)
        self.marks: list[int] = []  # the SuperNodes' bytes so far at the end of each round

    def mark(self) -> None:
        self.marks.append(self.fleet())

    def fleet(self) -> int:
        return sum(up + down for name, up, down in self.seen.values() if "supernod" in name)

    def sample(self) -> None:
        try:
            out = subprocess.run(
                ["ss", "-Htinp", f"( dport = :{self.port} )"],
                capture_output=True, text=True, timeout=10, check=False,
            ).stdout  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return
        local, name = "", "?"
        for line in out.splitlines():
            if not line[:1].isspace():  # a socket's line: state, queues, addresses, process
                fields = line.split()
                local = fields[3] if len(fields) > 3 else ""
                found = self._SOCKET.search(line)
                name = found.group(1) if found else "?"
                continue
            sent = _field(line, "bytes_sent")
            received = _field(line, "bytes_received")
            before = self.seen.get(local, (name, 0, 0))
            self.seen[local] = (name, max(before[1], sent), max(before[2], received))

    def totals(self, rounds: int) -> dict[str, Any]:
        """The SuperNodes' bytes per round (between the ends of two rounds; the first also
        holds joining and the app's download), the last round's (the steady state; the run's
        total / rounds when the round ends were not all seen) and all bytes by process."""
        by_name: dict[str, dict[str, int]] = {}
        for name, sent, received in self.seen.values():
            entry = by_name.setdefault(name, {"connections": 0, "up": 0, "down": 0})
            entry["connections"] += 1
            entry["up"] += sent
            entry["down"] += received
        total = self.fleet()
        ends = self.marks[:rounds]
        per_round = [b - a for a, b in zip([0, *ends], ends, strict=False)]
        steady = per_round[-1] if len(per_round) == rounds >= 2 else total // max(rounds, 1)
        return {
            "fleet_bytes": total,
            "fleet_bytes_by_round": per_round,
            "fleet_bytes_after_last_round": total - (ends[-1] if ends else 0),
            "fleet_bytes_per_round": steady,
            "by_process": by_name,
        }


def _field(line: str, name: str) -> int:
    found = re.search(rf"\b{name}:(\d+)", line)
    return int(found.group(1)) if found else 0


# ---- part 2: the simulation at scale ------------------------------------------------------


def scale_part(
    setup: Setup, counts: Sequence[int], out: Path, report: dict[str, Any]
) -> dict[str, Any]:
    """One round per client count: peak memory and round time against client tokens."""
    from fedkt.report import write_json

    runs: dict[str, Any] = {}
    for k in dict.fromkeys(counts):
        rows = _write_rows(setup, setup.work / f"scale-rows-k{k}", k, setup.scale_rows)
        root = setup.work / f"scale-k{k}"
        config = _write_config(setup, root, rows, k, secagg=False, port=0, rounds=1)
        runs[str(k)] = _guarded(partial(_run_worker, setup, config, rows, root))
        if "error" not in runs[str(k)]:
            runs[str(k)]["client_tokens"] = _client_tokens(setup, rows, k)
        _say(f"scale, {k} clients: {_brief(runs[str(k)])}")
        report["scale"] = {"runs": runs}
        write_json(out, report)
    return {"runs": runs, **_scale_verdict(runs)}


def _scale_verdict(runs: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    done = {int(k): r for k, r in runs.items() if "error" not in r}
    if 2 not in done or len(done) < 2:
        return {"target": {"holds": None, "why": "the 2-client reference or a scale run failed"}}
    points = sorted(done.items())
    tokens = np.array([r["client_tokens"] for _, r in points], dtype=float)
    seconds = np.array([r["rounds"][0]["seconds"] for _, r in points], dtype=float)
    slope, intercept = np.polyfit(tokens, seconds, 1)
    fitted = slope * tokens + intercept
    spread = float(((seconds - seconds.mean()) ** 2).sum())
    r2 = 1.0 - float(((seconds - fitted) ** 2).sum()) / spread if spread > 0 else 1.0
    reference = done[2]
    memory = {
        str(k): {
            "peak_rss_ratio": _div(r["peak_rss_mib"], reference["peak_rss_mib"]),
            "peak_pss_ratio": _div(r["peak_pss_mib"], reference["peak_pss_mib"]),
        }
        for k, r in points
    }
    memory_ok = all((m["peak_rss_ratio"] or 0.0) <= 2.0 for m in memory.values())
    return {
        "fit": {
            "seconds_per_1k_tokens": round(float(slope) * 1000, 4),
            "intercept_seconds": round(float(intercept), 2),
            "r2": round(r2, 4),
            "points": [[int(t), round(float(s), 2)] for t, s in zip(tokens, seconds, strict=True)],
        },
        "memory_vs_2_clients": memory,
        "target": {
            "memory": "peak RSS <= 2x the 2-client run's",
            "memory_holds": memory_ok,
            "linear": f"round time ~ a + b * client tokens, R^2 >= {LINEAR_R2}",
            "linear_holds": r2 >= LINEAR_R2,
            "holds": memory_ok and r2 >= LINEAR_R2,
        },
    }


def _client_tokens(setup: Setup, rows: Path, clients: int) -> int:
    """Tokens the clients train on in a round: each row's context and answer in the SLM's
    tokenizer, cut at ``max_length`` (one epoch)."""
    from fedkt.data import encode_pair
    from fedkt.deploy.rows import read_rows
    from fedkt.models import load_tokenizer

    tokenizer = load_tokenizer(setup.slm)
    total = 0
    for k in range(clients):
        for example in read_rows(rows / f"client{k}.jsonl"):
            context, answer = encode_pair(tokenizer, *example.training_pair())
            total += min(len(context) + len(answer), setup.max_length)
    return total


# ---- one simulation in its own process ----------------------------------------------------


def _run_worker(setup: Setup, config: Path, rows: Path, root: Path) -> dict[str, Any]:
    """`_simulate_one` in a child process (its own Ray): bounded by ``setup.timeout``, its
    process tree's memory sampled, every process of it gone on return."""
    from fedkt.deploy import launch, local

    job = root / "job.json"
    job.write_text(json.dumps({"config": str(config), "rows": str(rows)}), encoding="utf-8")
    log = root / "worker.log"
    memory = TreeMemory(os.getpid())
    worker = local.start_logged(
        [sys.executable, __file__, "--one-sim", str(job)], log, dict(os.environ)
    )
    seen: dict[int, float] = {}
    deadline = time.monotonic() + setup.timeout
    try:
        while worker.poll() is None and time.monotonic() < deadline:
            seen.update(local.descendants([worker.pid]))
            memory.sample()
            time.sleep(0.2)
    finally:
        seen.update(local.descendants([worker.pid]))
        launch.stop(worker, grace=10.0)
        local.kill_processes(seen)
    if worker.returncode != 0:
        raise RuntimeError(f"the simulation failed or timed out: {local.tail(log, 8)}")
    result = json.loads((root / "result.json").read_text(encoding="utf-8"))
    return {**result, **memory.peaks()}


def _simulate_one(job_path: Path) -> None:
    """The worker: the config's FedCoLLM run in Flower's simulation; writes result.json."""
    job = json.loads(job_path.read_text(encoding="utf-8"))
    rows = Path(job["rows"])
    from fedkt.config import load_config
    from fedkt.deploy.rows import read_rows
    from fedkt.federation.fedcollm import FederationSpec, simulate_fedcollm
    from fedkt.jobs import placement

    config = load_config(job["config"])
    dtype, device = placement(config)
    spec = FederationSpec(
        llm=config.federation.llm,
        slm=config.federation.slm,
        client_data=tuple(
            read_rows(rows / f"client{k}.jsonl") for k in range(config.federation.clients)
        ),
        public_data=read_rows(rows / "public.jsonl"),
        settings=config.fedcollm.settings(config.train, config.lora),
        dtype=dtype,
        device=device,
        client_cpus=config.federation.client_cpus,
        policy=config.fedcollm.round_policy(),
    )
    began = time.perf_counter()
    result = simulate_fedcollm(spec)
    seconds = time.perf_counter() - began
    payload = {
        "rounds": [_round_row(dataclasses.asdict(r)) for r in result.rounds],
        "wall_seconds": round(seconds, 2),
    }
    (job_path.parent / "result.json").write_text(json.dumps(payload), encoding="utf-8")


def _round_row(record: dict[str, Any]) -> dict[str, Any]:
    down, up = sum(record["bytes_down"].values()), sum(record["bytes_up"].values())
    return {
        "seconds": round(float(record["metrics"]["seconds"]), 2),
        "payload_bytes": down + up,
        "payload_down": down,
        "payload_up": up,
        "clients": int(record["metrics"]["clients"]),
    }


class TreeMemory:
    """Peak summed RSS and PSS of every descendant of ``pid`` (not ``pid`` itself: the bench
    holds no model), sampled on each call, with the process count at the RSS peak."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.rss = self.pss = 0
        self.processes = 0

    def sample(self) -> None:
        import psutil

        rss = pss = count = 0
        for child in self.root.children(recursive=True):
            try:
                info = child.memory_full_info()
            except (psutil.Error, OSError):
                continue
            rss, pss, count = rss + info.rss, pss + getattr(info, "pss", info.rss), count + 1
        if rss > self.rss:
            self.rss, self.processes = rss, count
        self.pss = max(self.pss, pss)

    def peaks(self) -> dict[str, Any]:
        mib = 1024 * 1024
        return {
            "peak_rss_mib": round(self.rss / mib, 1),
            "peak_pss_mib": round(self.pss / mib, 1),
            "processes_at_peak": self.processes,
        }


# ---- inputs -------------------------------------------------------------------------------


def _setup(args: argparse.Namespace, work: Path) -> Setup:
    if args.tiny:
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import build_tiny_tokenizer, save_tiny_pair

        llm, slm = save_tiny_pair(work / "models", build_tiny_tokenizer())
        return Setup(str(llm), str(slm), "float32", args.rows or 2, args.scale_rows or 2, 4,
                     args.rounds, 64, 2, 4, args.timeout or 300.0, work)  # fmt: skip
    return Setup(EMBEDDED[0], EMBEDDED[1], "auto", args.rows or 4, args.scale_rows or 2, 8,
                 args.rounds, 128, 2, 8, args.timeout or 1800.0, work)  # fmt: skip


def _write_rows(setup: Setup, folder: Path, clients: int, per_client: int) -> Path:
    """AG News train rows: ``per_client`` to each client file, then the public rows."""
    from fedkt.data import load_examples
    from fedkt.deploy.rows import write_rows

    need = clients * per_client + setup.public
    rows = load_examples(TASK, "train", limit=need)
    for k in range(clients):
        write_rows(folder / f"client{k}.jsonl", rows[k * per_client : (k + 1) * per_client])
    write_rows(folder / "public.jsonl", rows[clients * per_client : need])
    return folder


def _write_config(
    setup: Setup, root: Path, rows: Path, clients: int, *, secagg: bool, port: int,
    rounds: int | None = None,
) -> Path:  # fmt: skip
    """One FedCoLLM config for both sides; certificates and keys when ``port`` is set."""
    from fedkt.certs import make_certs

    root.mkdir(parents=True, exist_ok=True)
    deployment = ""
    if port:
        certs = make_certs(root / "certs", clients=clients).ca_cert.parent
        keys = ", ".join(f'"{certs / f"client{k}.pub"}"' for k in range(clients))
        deployment = (
            f'[deployment]\nsuperlink = "127.0.0.1:{port}"\nca_cert = "{certs / "ca.crt"}"\n'
            f'server_cert = "{certs / "server.crt"}"\nserver_key = "{certs / "server.key"}"\n'
            f"node_keys = [{keys}]\ntimeout = {setup.timeout}\n"
        )
    text = f"""output_dir = "{root / "out"}"
[model]
dtype = "{setup.dtype}"
device = "cpu"
[data]
tasks = ["{TASK}"]
[federation]
llm = "{setup.llm}"
slm = "{setup.slm}"
clients = {clients}
client_cpus = 1
[fedcollm]
rounds = {rounds or setup.rounds}
kd_steps = {setup.kd_steps}
kd_batch_size = 4
secure_aggregation = {str(secagg).lower()}
[train]
epochs = 1
batch_size = 4
max_length = {setup.max_length}
warmup_ratio = 0.0
[lora]
r = {setup.lora_r}
alpha = {2 * setup.lora_r}
dropout = 0.0
{deployment}"""
    path = root / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _protocol(setup: Setup, args: argparse.Namespace) -> dict[str, Any]:
    from fedkt.report import machine_description

    return {
        "llm": setup.llm if not args.tiny else "tiny random Llama, 3 layers (tests/conftest.py)",
        "slm": setup.slm if not args.tiny else "tiny random Llama, 2 layers (tests/conftest.py)",
        "tiny": args.tiny,
        "task": f"{TASK} train rows, the first ones in order",
        "deploy": {
            "rows_per_client": setup.rows,
            "public_rows": setup.public,
            "rounds": setup.rounds,
            "modes": {
                "plain": "--insecure: no TLS, no SuperNode authentication",
                "tls": "TLS + SuperNode authentication (fedkt's default)",
                "secagg": "TLS + authentication + SecAgg+, against a simulation with SecAgg+",
                "no_worker": "as tls, with fedkt client --no-worker (a ClientApp process and "
                "an SLM load per message): the reload cost the client worker avoids",
            },
            "round_seconds": "RoundRecord seconds of each side; ratios on the last round",
            "wire_bytes": "ss tcp_info of the SuperNodes' connections to the SuperLink, both "
            "ways, sampled every 0.25 s; per round: between two checkpoint writes (round ends; "
            "+-0.25 s of the next round's traffic), the last round's in the ratios; round 1 "
            "also holds joining and the app (FAB) download",
            "client_threads": "deployed clients OMP_NUM_THREADS=1, as Ray's 1-CPU actors",
        },
        "scale": {
            "rows_per_client": setup.scale_rows,
            "rounds": 1,
            "memory": "peak of summed RSS (and PSS) over the worker's process tree incl. Ray, "
            "sampled every 0.2 s",
            "client_cpus": 1,
        },
        "train": {
            "max_length": setup.max_length,
            "batch_size": 4,
            "epochs": 1,
            "kd_steps": setup.kd_steps,
            "lora_r": setup.lora_r,
            "dtype": setup.dtype,
        },
        "budget": BUDGET,
        "machine": machine_description(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


# ---- helpers ------------------------------------------------------------------------------


def _guarded(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run()``, or its error in one line: one failed cell must not lose the others."""
    try:
        return run()
    except Exception as err:  # recorded in the report
        return {"error": f"{type(err).__name__}: {err}"[-600:]}


def _div(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def _brief(run: dict[str, Any]) -> str:
    if "error" in run:
        return run["error"]
    seconds = ", ".join(f"{r['seconds']:.1f}" for r in run["rounds"])
    wire = run.get("wire", {}).get("fleet_bytes_per_round")
    extra = f", wire {wire:,} B/round" if wire is not None else ""
    return (
        f"rounds {seconds} s, payload {run['rounds'][-1]['payload_bytes']:,} B/round{extra}, "
        f"peak RSS {run['peak_rss_mib']:.0f} MiB"
    )


def _say(text: str) -> None:
    print(text, flush=True)


def _plot(report: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 4), layout="constrained")
    time_ax, bytes_ax, scale_ax = figure.subplots(1, 3)
    cells = report.get("deploy", {})
    for mode in MODES:
        points = [
            (int(k), c["ratios"][mode])
            for k, c in cells.items()
            if mode in c["ratios"] and "error" not in c["ratios"][mode]
        ]
        if points:
            ks = [k for k, _ in points]
            time_ax.plot(ks, [r["round_seconds"] for _, r in points], "o-", label=mode)
            bytes_ax.plot(ks, [r["wire_over_payload_bytes"] for _, r in points], "o-", label=mode)
    time_ax.set(xlabel="clients", ylabel="deployed / simulated", title="round time (last round)")
    bytes_ax.set(xlabel="clients", ylabel="wire bytes / simulated payload bytes",
                 title="bytes per round")  # fmt: skip
    for ax in (time_ax, bytes_ax):
        ax.axhline(1.0, color="grey", lw=0.8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    scale = report.get("scale", {})
    runs = {int(k): r for k, r in scale.get("runs", {}).items() if "error" not in r}
    if runs:
        ks = sorted(runs)
        tokens = [runs[k].get("client_tokens", 0) for k in ks]
        scale_ax.plot(tokens, [runs[k]["rounds"][0]["seconds"] for k in ks], "o", label="round")
        fit = scale.get("fit")
        if fit:
            a, b = fit["intercept_seconds"], fit["seconds_per_1k_tokens"] / 1000
            scale_ax.plot(tokens, [a + b * t for t in tokens], "-", label=f"fit R²={fit['r2']}")
        for k, t in zip(ks, tokens, strict=True):
            scale_ax.annotate(f"{k}", (t, runs[k]["rounds"][0]["seconds"]), fontsize=7)
        memory_ax = scale_ax.twinx()
        peaks = [runs[k]["peak_rss_mib"] for k in ks]
        memory_ax.plot(tokens, peaks, "s--", color="tab:red")
        memory_ax.set_ylabel("peak RSS, process tree (MiB)", color="tab:red")
        memory_ax.set_ylim(0, 2.2 * peaks[0])  # the target: at most 2x the 2-client peak
        scale_ax.legend(loc="upper left")
    scale_ax.set(xlabel="client tokens per round", ylabel="round seconds",
                 title="simulation at scale (labels: clients)")  # fmt: skip
    figure.savefig(path, dpi=120)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["deploy", "scale", "all"], default="all")
    parser.add_argument("--tiny", action="store_true", help="tiny random models, to check")
    parser.add_argument("--clients", type=int, nargs="+", default=[2, 4, 8], help="deploy part")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--scale-clients", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--rows", type=int, help="rows per client, deploy part (4; tiny 2)")
    parser.add_argument("--scale-rows", type=int, help="rows per client, scale part (2)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, deploy part")
    parser.add_argument("--timeout", type=float, help="seconds per run (1800; tiny 300)")
    parser.add_argument("--work-dir", help="where runs write (default: a new temp folder)")
    parser.add_argument("--one-sim", help=argparse.SUPPRESS)  # the worker process
    return parser.parse_args()


if __name__ == "__main__":
    main()
