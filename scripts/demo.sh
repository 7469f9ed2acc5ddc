#!/usr/bin/env bash
# End-to-end GPT4Image demo on Fashion-MNIST:
#   describe (template) -> embed (all-MiniLM-L6-v2) -> inspect -> pack MindRecord -> verify
#   -> train baseline (lambda 0) and GPT4Image (lambda 0.3) -> evaluate -> export MindIR -> report.
# Usage: scripts/demo.sh [--quick] [--hiera] [--seeds N]   (from the repository root; `make demo` calls it)
#   --hiera trains Hiera-T (configs/demo_fmnist_hiera*.yaml) instead of the width-16 ResNet-18
#   --seeds N trains both arms for seeds 42, 1, ..., N-1 (default 1: seed 42), everything else identical;
#   the report gives each seed, mean +- std per arm and the paired difference with its 95% interval
# Every seed's runs go to DIR/seed_S/{baseline,gpt4image}; all seeds share the packed data.
# Re-running resumes: finished descriptions, finished seeds and finished training epochs are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
QUICK=0; MODEL=""; NSEEDS=1
usage() { echo "usage: scripts/demo.sh [--quick] [--hiera] [--seeds N]" >&2; exit 2; }
while (( $# )); do
  case $1 in
    --quick) QUICK=1 ;;
    --hiera) MODEL=_hiera ;;
    --seeds) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || usage; NSEEDS=$2; shift ;;
    --seeds=*) NSEEDS=${1#--seeds=}; [[ $NSEEDS =~ ^[1-9][0-9]*$ ]] || usage ;;
    *) usage ;;
  esac
  shift
done
SEEDS=(42); for (( i = 1; i < NSEEDS; i++ )); do SEEDS+=("$i"); done
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

for SEED in "${SEEDS[@]}"; do
  for ARM in baseline gpt4image; do
    CFG=$CONFIG; [[ $ARM == baseline ]] && CFG=${CONFIG%.yaml}_baseline.yaml
    RUN=$DIR/seed_$SEED/$ARM
    SET=(--set "data_dir=$DIR/data" --set "output_dir=$RUN" --set "epoch_size=$EPOCHS" --set "seed=$SEED")
    step "train $ARM, seed $SEED ($CFG)"
    $PY -m ms_gpt4image train -c "$CFG" "${SET[@]}" --resume
    step "evaluate $ARM, seed $SEED (last epoch)"
    $PY -m ms_gpt4image evaluate -c "$CFG" "${SET[@]}" --ckpt "$RUN/last.ckpt" > "$RUN/eval.json.tmp"
    mv "$RUN/eval.json.tmp" "$RUN/eval.json"; cat "$RUN/eval.json"
  done
done

step "export the deployable GPT4Image net of seed 42 (backbone + classifier, no projector) to MindIR"
$PY -m ms_gpt4image export -c "$CONFIG" --set "data_dir=$DIR/data" --set "output_dir=$DIR/seed_42/gpt4image" \
  --ckpt "$DIR/seed_42/gpt4image/last.ckpt" --out "$DIR/deploy/gpt4image"

step "report: ${#SEEDS[@]} seed(s)"
$PY -m ms_gpt4image.report "$DIR" --title "GPT4Image demo" --seeds "$(IFS=,; echo "${SEEDS[*]}")"
step "predict: the deployed MindIR on a few eval images"
$PY -m ms_gpt4image predict --model "$DIR/deploy/gpt4image.mindir" --data-dir "$DIR/data" --topk 3 \
  --out "$DIR/deploy/predictions.csv" > "$DIR/deploy/predictions.txt"
head -n 6 "$DIR/deploy/predictions.txt"; echo "... ($DIR/deploy/predictions.txt)"
echo "written: $DIR/report.json $DIR/report.md $DIR/accuracy.png $DIR/inspect/report.md $DIR/deploy/predictions.csv"
