#!/usr/bin/env bash
# Throughput of data-parallel training: 1 process vs 2 msrun workers on this machine, same per-device
# batch, same data (default: the quick demo's MindRecord; run `scripts/demo.sh --quick` first).
# Prints images/s (median step, global batch) of each and the ratio.
# Usage: scripts/bench_data_parallel.sh [DATA_DIR] [EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-runs/demo-quick/data}
EPOCHS=${2:-2}
PY=${PY:-.venv/bin/python}
OUT=runs/bench_dp
rm -rf "$OUT"
SET=(--set "data_dir=$DATA" --set "epoch_size=$EPOCHS" --set eval_every=0 --set batch_size=64 --set warmup_epochs=0)
export GLOG_v=3
$PY -m ms_gpt4image train -c configs/demo_fmnist.yaml "${SET[@]}" --set output_dir=$OUT/w1 > $OUT.w1.log 2>&1
MASTER_PORT=${MASTER_PORT:-8129} LOG_DIR=$OUT/logs scripts/run_distribute_train.sh 2 configs/demo_fmnist.yaml \
  "${SET[@]}" --set output_dir=$OUT/w2 > $OUT.w2.log 2>&1
$PY - "$OUT" <<'PYEOF'
import json, sys
out = sys.argv[1]
w1, w2 = (json.load(open(f"{out}/{w}/summary.json")) for w in ("w1", "w2"))
rows = [(w["devices"], w["train_images_per_s"], w["wall_time_s"]) for w in (w1, w2)]
for d, ips, wall in rows:
    print(f"{d} worker(s): {ips:.1f} images/s (median step, global batch), wall {wall:.0f} s")
print(f"2-worker / 1-worker throughput: {rows[1][1] / rows[0][1]:.2f}x")
PYEOF
