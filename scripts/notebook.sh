#!/usr/bin/env bash
# A Jupyter session with a Dask cluster: starts a scheduler and workers, prints the dashboard
# link, and starts Jupyter with DASK_SCHEDULER_ADDRESS set, so `distributed.Client()` in any
# notebook connects to this cluster (and every compute(), write() and sf.plot runs on it).
#
#   scripts/notebook.sh [--workers N] [--threads N] [--memory 4GiB] [-- JUPYTER ARGS...]
#
# Jupyter is not a dependency of spatialflow. Run with it added on the fly:
#   uv run --with jupyterlab scripts/notebook.sh
# or install it into the environment once: uv pip install jupyterlab (pip install jupyterlab).
# The cluster stops when Jupyter exits (Ctrl-C).
set -euo pipefail

workers=2 threads=1 memory=4GiB
while [[ $# -gt 0 ]]; do
    case "$1" in
        --workers) workers="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --memory) memory="$2"; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) break ;;
    esac
done

if ! command -v jupyter >/dev/null 2>&1 || ! jupyter lab --version >/dev/null 2>&1; then
    echo "notebook: JupyterLab is not installed here. Run: uv run --with jupyterlab $0" >&2
    echo "          (or install it: uv pip install jupyterlab)" >&2
    exit 3
fi

dir="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT INT TERM

dask scheduler --scheduler-file "$dir/scheduler.json" --port 0 --dashboard-address :0 \
    >"$dir/scheduler.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [[ -s "$dir/scheduler.json" ]] && break; sleep 0.2; done
dask worker --scheduler-file "$dir/scheduler.json" --nworkers "$workers" \
    --nthreads "$threads" --memory-limit "$memory" >"$dir/workers.log" 2>&1 &
pids+=($!)

read -r address dashboard < <(python - "$dir/scheduler.json" <<'PY'
import json, sys
info = json.load(open(sys.argv[1]))
host = info["address"].split("://")[1].rsplit(":", 1)[0]
print(info["address"], f"http://{host}:{info['services']['dashboard']}/status")
PY
)
echo "Dask scheduler: $address"
echo "Dask dashboard: $dashboard"
echo "In a notebook: from distributed import Client; client = Client()  # connects here"
DASK_SCHEDULER_ADDRESS="$address" jupyter lab "$@"
