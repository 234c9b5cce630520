#!/usr/bin/env bash
# README "Run across machines", followed as written on one machine over loopback with the
# embedded models (configs/deploy-loopback.toml): certificates, partition, `fedkt server`,
# two `fedkt client`s (each its own process with its own rows and key), the outcome, export.
# The server and the clients run in the background here where a person would use three
# terminals (or three machines). Every wait is bounded. The transcript (commands, their
# output, seconds per step) goes to bench/results/readme_loopback.txt.
#
#   bash bench/readme_loopback.sh [WORK_DIR]      # ~5 min on 2 CPU cores, models cached
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd)
OUT=$REPO/bench/results/readme_loopback.txt
CONFIG=$REPO/configs/deploy-loopback.toml
export PATH="$REPO/.venv/bin:$PATH" HF_HUB_OFFLINE=1 FLWR_TELEMETRY_ENABLED=0
export FLWR_HOME=$WORK/flwr-home
export FEDKT_DATA_DIR=${FEDKT_DATA_DIR-$(cd "$REPO/.." && pwd)/shared/data}  # as the Makefile
cd "$WORK"
exec > >(tee "$OUT") 2>&1
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
step() { echo; echo "\$ $*"; local t=$SECONDS; "$@"; echo "[${*:1:2}: $((SECONDS - t)) s]"; }

echo "# $(date -u +%FT%TZ), $(nproc) CPU cores, in $WORK (config: configs/deploy-loopback.toml)"
step fedkt certs certs --host 127.0.0.1 --host localhost
step fedkt partition "$CONFIG" --out rows

echo; echo "\$ fedkt server $CONFIG --public rows/public.jsonl   # terminal 1 (server.log)"
began=$SECONDS
fedkt server "$CONFIG" --public rows/public.jsonl >server.log 2>&1 & server=$!; pids+=($server)
for _ in $(seq 240); do
  grep -q "SuperNode keys registered" server.log && break
  kill -0 $server 2>/dev/null || { cat server.log; exit 1; }
  sleep 0.5
done
grep "SuperNode keys registered" server.log
for k in 0 1; do
  echo "\$ fedkt client $CONFIG --data rows/client$k.jsonl --partition-id $k --key certs/client$k.key --output-dir runs/client$k   # terminal $((k + 2))"
  fedkt client "$CONFIG" --data rows/client$k.jsonl --partition-id $k --key certs/client$k.key \
    --output-dir runs/client$k >client$k.log 2>&1 & pids+=($!)
done
timeout 1800 tail --pid=$server -f /dev/null
wait $server && code=0 || code=$?
grep "outcome" server.log
python - <<'PY'
import json
for r in json.load(open("runs/deploy-loopback/ag_news/fedcollm-deployed/rounds.json"))["rounds"]:
    print(f"round {r['round'] + 1}: {r['metrics']['seconds']:.1f} s, {r['metrics']['clients']:.0f} "
          f"clients, {sum(r['bytes_up'].values()):,} B up, {sum(r['bytes_down'].values()):,} B down")
PY
echo "[server and clients: $((SECONDS - began)) s, server exit $code]"
[ $code -eq 0 ] || { tail -20 server.log; exit $code; }

folder=runs/deploy-loopback/ag_news/fedcollm-deployed
step ls "$folder" runs/client0
step fedkt export "$folder" --which slm --out my-slm
step python -c "from transformers import AutoModelForCausalLM as M; m = M.from_pretrained('my-slm'); print(type(m).__name__, sum(p.numel() for p in m.parameters()), 'parameters')"
echo; echo "# the SuperNodes wait for the next run; Ctrl-C in terminals 2 and 3 stops them"
# (a script's background jobs ignore SIGINT: SIGTERM, which fedkt client treats as Ctrl-C)
kill -TERM "${pids[1]}" "${pids[2]}"
for k in 0 1; do
  timeout 60 tail --pid="${pids[$((k + 1))]}" -f /dev/null && echo "client $k stopped" || echo "client $k still running"
done
echo "client 0's worker (runs/client0/client-worker-0/worker.json):"
python -c "import json; d = json.load(open('runs/client0/client-worker-0/worker.json')); print({k: d[k] for k in ('messages', 'model_loads', 'import_seconds', 'first_message_seconds', 'later_message_seconds')})"
