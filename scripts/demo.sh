#!/usr/bin/env bash
# End-to-end GPT4Image demo on Fashion-MNIST:
#   describe (template) -> embed (all-MiniLM-L6-v2) -> inspect -> pack MindRecord -> verify
#   -> train baseline (lambda 0) and GPT4Image (lambda 0.3) -> evaluate -> export MindIR -> report.
# Usage: scripts/demo.sh [--quick] [--hiera]   (run from the repository root; `make demo` calls it)
#   --hiera trains Hiera-T (configs/demo_fmnist_hiera*.yaml) instead of the width-16 ResNet-18
# Re-running resumes: finished descriptions and finished training epochs are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
QUICK=0; MODEL=""
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    --hiera) MODEL=_hiera ;;
    *) echo "usage: scripts/demo.sh [--quick] [--hiera]" >&2; exit 2 ;;
  esac
done
if (( QUICK )); then
  DIR=runs/demo-quick; TRAIN_N=3000; EVAL_N=2000; EPOCHS=5
else
  DIR=runs/demo; TRAIN_N=30000; EVAL_N=10000; EPOCHS=8
fi
DIR=$DIR${MODEL//_/-}
CONFIG=configs/demo_fmnist$MODEL.yaml
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GLOG_v=3
mkdir -p "$DIR"
step() { echo; echo "=== $* ==="; }

step "describe: $TRAIN_N Fashion-MNIST training images (template backend, offline)"
$PY -m export describe --source fashion-mnist --limit "$TRAIN_N" --backend template --out "$DIR/descriptions.jsonl"
step "embed: all-MiniLM-L6-v2 (packaged weights)"
$PY -m export embed --descriptions "$DIR/descriptions.jsonl" --out "$DIR/embeddings"
step "inspect: is the description set worth training with? (report in $DIR/inspect)"
$PY -m export inspect --descriptions "$DIR/descriptions.jsonl" --embeddings "$DIR/embeddings" --out "$DIR/inspect" >/dev/null
sed -n '3,17p' "$DIR/inspect/report.md"
step "pack: MindRecord + manifest"
$PY -m export pack --source fashion-mnist --descriptions "$DIR/descriptions.jsonl" --embeddings "$DIR/embeddings" \
  --eval-limit "$EVAL_N" --out "$DIR/data" --overwrite
step "verify"
$PY -m export verify "$DIR/data"

for ARM in baseline gpt4image; do
  CFG=$CONFIG; [[ $ARM == baseline ]] && CFG=${CONFIG%.yaml}_baseline.yaml
  SET=(--set "data_dir=$DIR/data" --set "output_dir=$DIR/$ARM" --set "epoch_size=$EPOCHS")
  step "train $ARM ($CFG)"
  $PY -m ms_gpt4image train -c "$CFG" "${SET[@]}" --resume
  step "evaluate $ARM (last epoch)"
  $PY -m ms_gpt4image evaluate -c "$CFG" "${SET[@]}" --ckpt "$DIR/$ARM/last.ckpt" > "$DIR/$ARM/eval.json.tmp"
  mv "$DIR/$ARM/eval.json.tmp" "$DIR/$ARM/eval.json"; cat "$DIR/$ARM/eval.json"
done

step "export the deployable GPT4Image net (backbone + classifier, no projector) to MindIR"
$PY -m ms_gpt4image export -c "$CONFIG" --set "data_dir=$DIR/data" --set "output_dir=$DIR/gpt4image" \
  --ckpt "$DIR/gpt4image/last.ckpt" --out "$DIR/deploy/gpt4image"

step "report"
$PY -m ms_gpt4image.report "$DIR"
step "predict: the deployed MindIR on a few eval images"
$PY -m ms_gpt4image predict --model "$DIR/deploy/gpt4image.mindir" --data-dir "$DIR/data" --topk 3 \
  --out "$DIR/deploy/predictions.csv" > "$DIR/deploy/predictions.txt"
head -n 6 "$DIR/deploy/predictions.txt"; echo "... ($DIR/deploy/predictions.txt)"
echo "written: $DIR/report.json $DIR/report.md $DIR/accuracy.png $DIR/inspect/report.md $DIR/deploy/predictions.csv"
