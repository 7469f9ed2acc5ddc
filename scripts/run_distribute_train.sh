#!/usr/bin/env bash
# Data-parallel training with msrun: one process per device, each reading its own MindRecord shard.
#
# One node, N devices:
#   scripts/run_distribute_train.sh 8 configs/X.yaml [--set key=value ...]
# Several nodes (run on every node; NODE_RANK = 0..NODES-1, MASTER_ADDR = node 0's address):
#   NODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 scripts/run_distribute_train.sh 8 configs/X.yaml
# Environment: MASTER_PORT (default 8118), LOG_DIR (default runs/msrun_logs: one worker_<rank>.log each),
#              PY (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
if (( $# < 2 )); then
  echo "usage: $0 DEVICES_PER_NODE CONFIG [train args...]" >&2; exit 2
fi
LOCAL=$1; CFG=$2; shift 2
NODES=${NODES:-1}
PY=${PY:-.venv/bin/python}
MSRUN=${MSRUN:-$(dirname "$PY")/msrun}
export PATH="$(cd "$(dirname "$PY")" && pwd):$PATH"   # msrun starts workers with the `python` on PATH
export LOCAL_WORLD_SIZE="$LOCAL"   # ranks per node, for train's shared-memory check (msrun exports none)
exec "$MSRUN" --worker_num=$((LOCAL * NODES)) --local_worker_num="$LOCAL" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-8118}" \
  --node_rank="${NODE_RANK:-0}" --log_dir="${LOG_DIR:-runs/msrun_logs}" --join=True \
  scripts/launch.py train -c "$CFG" "$@"
