#!/usr/bin/env bash
# One table of the GPT4Image paper (arXiv 2306.00693) on your hardware, end to end:
#   describe (a VLM captions every training image, one process per GPU) -> embed (CLIP text tower)
#   -> pack (MindRecord + manifest) + verify -> train baseline and GPT4Image for every seed -> evaluate
#   -> per-model report (mean +- std, paired difference, 95% interval) -> the table beside the paper's.
#
# Usage:
#   scripts/reproduce.sh cifar10|cifar100 [OPTIONS]                       paper Table 2 (ResNet-18)
#   scripts/reproduce.sh imagenet --root IMAGENET [--descriptions RELEASED.pth] [--models resnet50,deit_small,...] [OPTIONS]
#                                                                          paper Table 1 (the rows chosen)
#   scripts/reproduce.sh cifar10|cifar100 --dry-run-tiny --cifar-root DIR --blip2 DIR --clip DIR [--work DIR]
#                                                                          the whole chain offline on tiny models
# Options:
#   --work DIR               where everything goes (default runs/reproduce; the dry run: runs/reproduce-dry-run)
#   --seeds N                train both arms for seeds 42, 1, ..., N-1 (default 3 for CIFAR, 1 for ImageNet)
#   --stage S                run only stage S (describe|embed|pack|train|report), e.g. on another host; at its end
#                            the script says what to copy where. Without --stage all stages run in order.
#   --gpus N                 describe with N processes, one per GPU (default: every GPU found)
#   --engine single|ray      ray: describe and embed on a Ray cluster instead (Ray Data; one worker per GPU, blocks
#                            rebalanced, a dead worker replaced; docs/describe-and-embed.md#on-a-ray-cluster);
#                            needs pip install 'ms_gpt4image[ray]'
#   --address ADDR           with --engine ray: the cluster (HOST:6379 of `ray start --head`, or auto); default: the
#                            cluster this host runs, else a Ray started on this host for each command
#   --workers N              with --engine ray: workers (default: one per GPU of the cluster)
#   --train-devices N        data-parallel training on N devices with msrun (default 1 for CIFAR, 8 for ImageNet);
#                            pack writes at least N files per split
#   --device-target T        Ascend | GPU | CPU for training (default: the config's, Ascend)
#   --set KEY=VALUE          config override for every train/evaluate (repeatable), e.g. --set epoch_size=100
#   --cifar-root DIR         an existing CIFAR download (official python pickles): skips the download
#   --root DIR               ImageNet as an ImageFolder tree with train/ and val/
#   --descriptions FILE      ImageNet: the authors' released MiniGPT-4 description set (torch-saved list of strings,
#                            minigpt4_caption_imagenet_train_0_1281166.pth); without it `describe` captions ImageNet
#   --models LIST            ImageNet rows: resnet50,deit_small,deit_base,convnext_tiny,convnext_small,convnext_base
#                            (default resnet50)
#   --prompt short|long      the paper's prompts (default short)
#   --describe-backend B, --describe-model M, --describe-batch-size N
#                            default blip2 / Salesforce/blip2-opt-2.7b (CIFAR, as the paper), instructblip /
#                            Salesforce/instructblip-vicuna-7b (ImageNet: the closest to MiniGPT-4 on transformers); 64
#   --embed-backend B, --embed-model M
#                            default open-clip / RN50:openai: the authors' description2embedding.py default
#                            (OpenAI CLIP RN50, 1024-d); needs `pip install open_clip_torch`
# Environment: PY (default .venv/bin/python), MASTER_PORT for msrun.
# Layout: WORK/<ds>/{raw/ (CIFAR download), describe/ (shard parts), descriptions.jsonl, embeddings.*, data/,
#   train/<model>/seed_S/{baseline,gpt4image}/ (as scripts/demo.sh), train/<model>/report.{json,md}, table.md}
# Every stage resumes: describe skips described images (and a content cache avoids re-captioning), embed keeps
# finished chunks, pack is skipped once data/manifest.json exists, train resumes from last.ckpt and is skipped
# once eval.json exists, report is cheap. Delete a stage's output to redo it.
set -euo pipefail
ORIG=$PWD
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

USAGE="usage: scripts/reproduce.sh cifar10|cifar100|imagenet [--work DIR] [--seeds N] \
[--stage describe|embed|pack|train|report] [--gpus N] [--engine single|ray [--address ADDR] [--workers N]] [--train-devices N] [--device-target Ascend|GPU|CPU] \
[--set KEY=VALUE ...] [--cifar-root DIR] [--root IMAGENET] [--descriptions RELEASED.pth] [--models LIST] \
[--prompt short|long] [--describe-backend B] [--describe-model M] [--describe-batch-size N] [--embed-backend B] \
[--embed-model M] [--dry-run-tiny --cifar-root DIR --blip2 DIR --clip DIR]   (details: the header of this script)"
usage() { [[ -n ${1:-} ]] && echo "reproduce.sh: $1" >&2; echo "$USAGE" >&2; exit 2; }
die() { echo "reproduce.sh: $*" >&2; exit 1; }
step() { echo; echo "=== $* ==="; }
absp() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$ORIG/$1" ;; esac; }  # paths are the caller's
posint() { [[ $2 =~ ^[1-9][0-9]*$ ]] || usage "$1 needs a positive integer, got '$2'"; }

# ---------------------------------------------------------------- arguments
[[ ${1:-} == -h || ${1:-} == --help ]] && { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0; }
(( $# )) || usage "which table? cifar10, cifar100 or imagenet"
DS=$1; shift
case $DS in cifar10|cifar100|imagenet) ;; *) usage "unknown dataset '$DS' (cifar10, cifar100 or imagenet)" ;; esac
WORK=""; NSEEDS=""; STAGE=""; GPUS=""; TRAIN_DEVICES=""; TARGET=""; USER_SET=(); CIFAR_ROOT=""; ROOT=""
DESCRIPTIONS=""; MODELS=""; PROMPT=short; DESC_BACKEND=""; DESC_MODEL=""; DESC_BS=""; EMB_BACKEND=""; EMB_MODEL=""
DRY=0; BLIP2=""; CLIP=""; ENGINE=single; RAY_ARGS=()
while (( $# )); do
  if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi  # --opt=value -> --opt value
  case $1 in
    --dry-run-tiny) DRY=1; shift; continue ;;
    -h|--help) echo "$USAGE"; exit 0 ;;
    --*) [[ $# -ge 2 && -n $2 ]] || usage "option $1 needs a value" ;;
    *) usage "unexpected argument '$1'" ;;
  esac
  case $1 in
    --work) WORK=$(absp "$2") ;;
    --seeds) posint "$1" "$2"; NSEEDS=$2 ;;
    --stage) case $2 in describe|embed|pack|train|report) STAGE=$2 ;; *) usage "unknown stage '$2'" ;; esac ;;
    --gpus) [[ $2 =~ ^[0-9]+$ ]] || usage "--gpus needs an integer >= 0"; GPUS=$2 ;;
    --engine) case $2 in single|ray) ENGINE=$2 ;; *) usage "--engine: single or ray" ;; esac ;;
    --address) RAY_ARGS+=(--address "$2") ;;
    --workers) posint "$1" "$2"; RAY_ARGS+=(--workers "$2") ;;
    --train-devices) posint "$1" "$2"; TRAIN_DEVICES=$2 ;;
    --device-target) case $2 in Ascend|GPU|CPU) TARGET=$2 ;; *) usage "--device-target: Ascend, GPU or CPU" ;; esac ;;
    --set) [[ $2 == *=* ]] || usage "--set needs KEY=VALUE, got '$2'"; USER_SET+=(--set "$2") ;;
    --cifar-root) CIFAR_ROOT=$(absp "$2") ;;
    --root) ROOT=$(absp "$2") ;;
    --descriptions) DESCRIPTIONS=$(absp "$2") ;;
    --models) MODELS=$2 ;;
    --prompt) case $2 in short|long) PROMPT=$2 ;; *) usage "--prompt: short or long" ;; esac ;;
    --describe-backend) DESC_BACKEND=$2 ;;
    --describe-model) DESC_MODEL=$2 ;;
    --describe-batch-size) posint "$1" "$2"; DESC_BS=$2 ;;
    --embed-backend) EMB_BACKEND=$2 ;;
    --embed-model) EMB_MODEL=$2 ;;
    --blip2) BLIP2=$(absp "$2") ;;
    --clip) CLIP=$(absp "$2") ;;
    *) usage "unknown option '$1'" ;;
  esac
  shift 2
done

# ---------------------------------------------------------------- what this run does
if [[ $ENGINE == ray ]]; then
  [[ -z $GPUS ]] || usage "--gpus starts one process per GPU; with --engine ray use --workers"
  RAY_ARGS=(--engine ray "${RAY_ARGS[@]}")
else
  (( ${#RAY_ARGS[@]} == 0 )) || usage "--address and --workers are for --engine ray"
fi
IMAGENET_MODELS=(resnet50 deit_small deit_base convnext_tiny convnext_small convnext_base)
if [[ $DS == imagenet ]]; then
  (( DRY )) && usage "--dry-run-tiny is for cifar10/cifar100"
  [[ -n $CIFAR_ROOT ]] && usage "--cifar-root is for cifar10/cifar100 (ImageNet: --root)"
  [[ -n $ROOT || $STAGE == train || $STAGE == report || $STAGE == embed ]] || usage "imagenet needs --root IMAGENET"
  IFS=, read -ra MODEL_LIST <<< "${MODELS:-resnet50}"
  for m in "${MODEL_LIST[@]}"; do
    [[ " ${IMAGENET_MODELS[*]} " == *" $m "* ]] || usage "unknown ImageNet model '$m' (${IMAGENET_MODELS[*]})"
  done
  (( ${#MODEL_LIST[@]} )) || usage "--models is empty"
  NSEEDS=${NSEEDS:-1}; TRAIN_DEVICES=${TRAIN_DEVICES:-8}
  DESC_BACKEND=${DESC_BACKEND:-instructblip}
  [[ $DESC_BACKEND == instructblip ]] && DESC_MODEL=${DESC_MODEL:-Salesforce/instructblip-vicuna-7b}
else
  [[ -n $ROOT || -n $DESCRIPTIONS || -n $MODELS ]] && usage "--root, --descriptions and --models are for imagenet"
  MODEL_LIST=(resnet18)
  NSEEDS=${NSEEDS:-3}; TRAIN_DEVICES=${TRAIN_DEVICES:-1}
  DESC_BACKEND=${DESC_BACKEND:-blip2}
  [[ $DESC_BACKEND == blip2 ]] && DESC_MODEL=${DESC_MODEL:-Salesforce/blip2-opt-2.7b}
fi
EMB_BACKEND=${EMB_BACKEND:-open-clip}
[[ $EMB_BACKEND == open-clip ]] && EMB_MODEL=${EMB_MODEL:-RN50:openai}
DESC_BS=${DESC_BS:-64}
DESCRIBE_EXTRA=(); EMBED_EXTRA=(); TINY_SET=(); NOTE=""
if (( DRY )); then
  # Offline, on the CPU: the tiny random BLIP-2 and CLIP of the tests, a width-4 ResNet-18 for one epoch.
  [[ -n $CIFAR_ROOT && -n $BLIP2 && -n $CLIP ]] || usage "--dry-run-tiny needs --cifar-root, --blip2 and --clip"
  [[ $DESC_BACKEND == blip2 && $EMB_BACKEND == open-clip ]] || usage "--dry-run-tiny sets the backends itself"
  DESC_MODEL=$BLIP2; EMB_BACKEND=hf-clip; EMB_MODEL=$CLIP
  WORK=${WORK:-$PWD/runs/reproduce-dry-run}
  GPUS=${GPUS:-2}            # two describe shards on the CPU: the shard + merge path runs as on a GPU box
  [[ $DESC_BS == 64 ]] && DESC_BS=4
  DESCRIBE_EXTRA=(--device cpu --max-new-tokens 8); EMBED_EXTRA=(--device cpu --batch-size 16)
  [[ $ENGINE == ray ]] && DESCRIBE_EXTRA+=(--block-size 8)  # 5 blocks of 40 images: every worker gets some
  TINY_SET=(--set device_target=CPU --set amp_level=O0 --set loss_scale_type=none --set mode=graph
            --set epoch_size=1 --set warmup_epochs=0 --set batch_size=8 --set eval_batch_size=16 --set num_parallel_workers=1
            --set "model_kwargs={width: 4}" --set global_batch=null)  # (the ImageNet recipes' 1024-4096 rows)
  (( TRAIN_DEVICES == 1 )) || usage "--dry-run-tiny trains in one process (--train-devices 1)"
  NOTE="Dry run: tiny random BLIP-2 and CLIP, one epoch of a width-4 ResNet-18 on the CPU; these figures test the chain, not the paper."
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
else
  [[ -z $BLIP2 && -z $CLIP ]] || usage "--blip2 and --clip are for --dry-run-tiny"
fi
[[ -n $TARGET ]] && TINY_SET+=(--set "device_target=$TARGET")
WORK=${WORK:-$PWD/runs/reproduce}
export GLOG_v=${GLOG_v:-3}   # MindSpore: errors only (2 adds warnings)

SEEDS=(42); for (( i = 1; i < NSEEDS; i++ )); do SEEDS+=("$i"); done
SEED_CSV=$(IFS=,; echo "${SEEDS[*]}")
MODEL_CSV=$(IFS=,; echo "${MODEL_LIST[*]}")
D=$WORK/$DS
DESC=$D/descriptions.jsonl
EMB=$D/embeddings           # prefix: .npy, .index.npy, .meta.json
DATA=$D/data
if [[ -n $STAGE ]]; then STAGES=("$STAGE"); else STAGES=(describe embed pack train report); fi
command -v "$PY" >/dev/null || die "no Python at '$PY' (run 'make setup', or set PY=/path/to/python)"
mkdir -p "$D"
echo "reproduce $DS: work $D, models $MODEL_CSV, seeds $SEED_CSV, stages ${STAGES[*]}"

# ---------------------------------------------------------------- helpers
md5_of() { if command -v md5sum >/dev/null; then md5sum "$1" | cut -d' ' -f1; else
  "$PY" -c 'import hashlib,sys; print(hashlib.md5(open(sys.argv[1],"rb").read()).hexdigest())' "$1"; fi; }

# The CIFAR python tarball: downloaded under a temporary name, checked against its md5, renamed, extracted.
# Sets SRC_ROOT. An existing download given with --cifar-root is used as it is.
fetch_cifar() {
  if [[ -n $CIFAR_ROOT ]]; then SRC_ROOT=$CIFAR_ROOT; return; fi
  local raw=$D/raw name md5 dir
  case $DS in
    cifar10) name=cifar-10-python.tar.gz; md5=c58f30108f718f92721af3b95e74349a; dir=cifar-10-batches-py ;;
    cifar100) name=cifar-100-python.tar.gz; md5=eb9058c3a382ffc7106e4002c42a8d85; dir=cifar-100-python ;;
  esac
  SRC_ROOT=$raw
  [[ -d $raw/$dir ]] && return
  mkdir -p "$raw"
  if [[ ! -f $raw/$name ]]; then
    local url=https://www.cs.toronto.edu/~kriz/$name
    step "download $url"
    rm -f "$raw/$name.download"
    if command -v curl >/dev/null; then curl -fL --retry 3 -o "$raw/$name.download" "$url"
    else wget -O "$raw/$name.download" "$url"; fi
    local got; got=$(md5_of "$raw/$name.download")
    [[ $got == "$md5" ]] || { rm -f "$raw/$name.download"; die "$name: md5 $got, expected $md5 (download removed)"; }
    mv "$raw/$name.download" "$raw/$name"
  fi
  rm -rf "$raw/.extract"; mkdir "$raw/.extract"
  tar -xzf "$raw/$name" -C "$raw/.extract"
  mv "$raw/.extract/$dir" "$raw/$dir"; rmdir "$raw/.extract"
  echo "CIFAR: $raw/$dir"
}

# DEVICES: the CUDA device ids to describe on (CUDA_VISIBLE_DEVICES, else nvidia-smi), cut to --gpus N.
detect_devices() {
  DEVICES=()
  if [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then IFS=, read -ra DEVICES <<< "$CUDA_VISIBLE_DEVICES"
  elif command -v nvidia-smi >/dev/null; then
    local n; n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    for (( i = 0; i < n; i++ )); do DEVICES+=("$i"); done
  fi
  if [[ -n $GPUS ]]; then
    if (( ${#DEVICES[@]} == 0 )); then DEVICES=(); for (( i = 0; i < GPUS; i++ )); do DEVICES+=("$i"); done
    elif (( GPUS <= ${#DEVICES[@]} )); then DEVICES=("${DEVICES[@]:0:GPUS}")
    else die "--gpus $GPUS, but only ${#DEVICES[@]} GPU(s) visible (${DEVICES[*]})"; fi
  fi
}

# What to copy where after a stage run on its own (--stage).
next_hint() {
  [[ -n $STAGE ]] || return 0
  echo; echo "--- stage $STAGE done. Next: ---"; echo "$*"
}
set_source() {  # SRC: the source options of describe/pack for this dataset (CIFAR: downloaded if needed)
  if [[ $DS == imagenet ]]; then SRC=(--source imagefolder --root "$ROOT"); else fetch_cifar; SRC=(--source "$DS" --root "$SRC_ROOT"); fi
}

# ---------------------------------------------------------------- stages
stage_describe() {
  if [[ -f $DESC && -f $DESC.meta.json ]]; then
    echo "describe: $DESC exists, skipped (delete it to describe again)"
  elif [[ $DS == imagenet && -n $DESCRIPTIONS ]]; then
    step "describe: import the released description set $DESCRIPTIONS"
    "$PY" -m export import-descriptions --source imagefolder --root "$ROOT" --split train --src "$DESCRIPTIONS" \
      --format auto --out "$DESC"
  elif [[ $ENGINE == ray ]]; then
    set_source
    step "describe: $DESC_BACKEND ($DESC_MODEL), prompt $PROMPT, on Ray (${RAY_ARGS[*]})"
    # one command for the whole cluster: blocks of images go to whichever worker is free, finished blocks are
    # kept in $DESC.parts/ (a re-run goes on from there) and assembled into $DESC in index order at the end
    local cmd=("$PY" -m export describe "${SRC[@]}" --split train --backend "$DESC_BACKEND" --prompt "$PROMPT"
               --batch-size "$DESC_BS" "${RAY_ARGS[@]}" --out "$DESC" "${DESCRIBE_EXTRA[@]}")
    [[ -n $DESC_MODEL ]] && cmd+=(--model "$DESC_MODEL")
    "${cmd[@]}"
  else
    set_source
    if (( DRY )); then DEVICES=(); for (( i = 0; i < GPUS; i++ )); do DEVICES+=(""); done
    else detect_devices; fi
    local n=${#DEVICES[@]} parts=() pids=() failed=() i
    if (( n == 0 )); then echo "describe: no GPU found, one process on the CPU (slow)"; n=1; DEVICES=(""); fi
    step "describe: $DESC_BACKEND ($DESC_MODEL), prompt $PROMPT, $n process(es)"
    mkdir -p "$D/describe"
    for (( i = 0; i < n; i++ )); do
      # part names carry n: another process count later starts new parts (the description cache,
      # shared by every part, keeps images already captioned from being captioned again)
      local part=$D/describe/part_${i}_of_${n}.jsonl
      parts+=("$part")
      local cmd=("$PY" -m export describe "${SRC[@]}" --split train --backend "$DESC_BACKEND" --prompt "$PROMPT"
                 --batch-size "$DESC_BS" --shard "$i/$n" --out "$part" "${DESCRIBE_EXTRA[@]}")
      [[ -n $DESC_MODEL ]] && cmd+=(--model "$DESC_MODEL")
      if (( n == 1 )); then
        CUDA_VISIBLE_DEVICES=${DEVICES[0]} "${cmd[@]}"
      else
        CUDA_VISIBLE_DEVICES=${DEVICES[i]} "${cmd[@]}" > "${part%.jsonl}.log" 2>&1 &
        pids+=($!)
      fi
    done
    if (( n > 1 )); then
      trap 'kill "${pids[@]}" 2>/dev/null; exit 130' INT TERM
      echo "describe: progress in $D/describe/part_*_of_${n}.log"
      for (( i = 0; i < n; i++ )); do wait "${pids[i]}" || failed+=("$i"); done
      trap - INT TERM
      for i in "${failed[@]}"; do echo "--- shard $i/$n failed: ${parts[i]%.jsonl}.log ---" >&2; tail -n 15 "${parts[i]%.jsonl}.log" >&2; done
      (( ${#failed[@]} == 0 )) || die "describe: ${#failed[@]} of $n shard(s) failed; re-run to resume"
    fi
    step "describe: merge $n part(s) -> $DESC"
    "$PY" -m export merge "${parts[@]}" --out "$DESC"
  fi
  next_hint "Copy $DESC and $DESC.meta.json to the host that embeds, as $DS/ under its --work, and run there:
  scripts/reproduce.sh $DS --stage embed --work WORK"
}

stage_embed() {
  [[ -f $DESC ]] || die "embed: $DESC missing (run --stage describe, or copy it here)"
  if [[ -f $EMB.meta.json && ! -d $EMB.parts ]]; then
    echo "embed: $EMB.npy exists, skipped (delete $EMB.* to embed again)"
  else
    step "embed: $EMB_BACKEND ($EMB_MODEL)"
    local cmd=("$PY" -m export embed --descriptions "$DESC" --backend "$EMB_BACKEND" --out "$EMB" "${EMBED_EXTRA[@]}"
               "${RAY_ARGS[@]}")
    [[ -n $EMB_MODEL ]] && cmd+=(--model "$EMB_MODEL")
    "${cmd[@]}"
  fi
  next_hint "Copy $EMB.npy, $EMB.index.npy, $EMB.meta.json (and $DESC + .meta.json) to the host that packs, as
$DS/ under its --work; it also needs the images ($( [[ $DS == imagenet ]] && echo "--root IMAGENET" || echo "downloaded again there, or --cifar-root DIR")). There:
  scripts/reproduce.sh $DS --stage pack --work WORK --train-devices N"
}

stage_pack() {
  if [[ -f $DATA/manifest.json && -f $D/.pack_verified ]]; then
    echo "pack: $DATA exists and was verified, skipped (delete it to pack again)"
  else
    set_source
    if [[ ! -f $DATA/manifest.json ]]; then
      [[ -f $DESC && -f $EMB.npy ]] || die "pack: $DESC or $EMB.npy missing (run describe and embed, or copy them here)"
      step "pack: MindRecord + manifest -> $DATA (at least $TRAIN_DEVICES file(s) per split)"
      local eval_split=test; [[ $DS == imagenet ]] && eval_split=val
      "$PY" -m export pack "${SRC[@]}" --descriptions "$DESC" --embeddings "$EMB" --eval-split "$eval_split" \
        --shards "$TRAIN_DEVICES" --out "$DATA" --overwrite
    fi
    step "verify $DATA"
    "$PY" -m export verify "$DATA"
    touch "$D/.pack_verified"
  fi
  next_hint "Copy the folder $DATA/ ($(du -sh "$DATA" | cut -f1)) to the training cluster, as $DS/data/ under its --work, and run there:
  scripts/reproduce.sh $DS --stage train --work WORK --device-target Ascend|GPU --train-devices N$([[ $DS == imagenet ]] && echo " --models $MODEL_CSV")"
}

stage_train() {
  [[ -f $DATA/manifest.json ]] || die "train: $DATA/manifest.json missing (run --stage pack, or copy data/ here)"
  local m seed arm cfg run
  for m in "${MODEL_LIST[@]}"; do
    for seed in "${SEEDS[@]}"; do
      for arm in baseline gpt4image; do
        cfg=configs/${DS}_${m}.yaml; [[ $arm == baseline ]] && cfg=${cfg%.yaml}_baseline.yaml
        run=$D/train/$m/seed_$seed/$arm
        if [[ -f $run/eval.json ]]; then echo "train: $run/eval.json exists, skipped"; continue; fi
        local set=(--set "data_dir=$DATA" --set "output_dir=$run" --set "seed=$seed" "${TINY_SET[@]}" "${USER_SET[@]}")
        step "train $m $arm, seed $seed ($cfg$( (( TRAIN_DEVICES > 1 )) && echo ", $TRAIN_DEVICES devices"))"
        if (( TRAIN_DEVICES > 1 )); then
          LOG_DIR=$run/msrun_logs PY=$PY scripts/run_distribute_train.sh "$TRAIN_DEVICES" "$cfg" "${set[@]}" --resume
        else
          "$PY" -m ms_gpt4image train -c "$cfg" "${set[@]}" --resume
        fi
        step "evaluate $m $arm, seed $seed (last epoch)"
        "$PY" -m ms_gpt4image evaluate -c "$cfg" "${set[@]}" --ckpt "$run/last.ckpt" > "$run/eval.json.tmp"
        mv "$run/eval.json.tmp" "$run/eval.json"; cat "$run/eval.json"
      done
    done
  done
  next_hint "Copy $D/train/ back to the host that reports, as $DS/train/ under its --work (the checkpoints are not
needed: rsync -a --exclude '*.ckpt' ...), and run there:
  scripts/reproduce.sh $DS --stage report --work WORK --seeds $NSEEDS$([[ $DS == imagenet ]] && echo " --models $MODEL_CSV")"
}

stage_report() {
  local m title
  for m in "${MODEL_LIST[@]}"; do
    title="GPT4Image reproduction, $DS, $m"
    step "report: $m, seeds $SEED_CSV -> $D/train/$m/report.md"
    "$PY" -m ms_gpt4image.report "$D/train/$m" --title "$title" --seeds "$SEED_CSV"
  done
  step "table: ours beside the paper's -> $D/table.md"
  "$PY" scripts/reproduce_table.py --dataset "$DS" --dir "$D" --models "$MODEL_CSV" --note "$NOTE"
  next_hint "The table: $D/table.md; per model, seed by seed: $D/train/<model>/report.md (+ report.json, accuracy.png)."
}

# ---------------------------------------------------------------- run
# Fail before hours of captioning, not after: the embedding stage's encoder must be importable.
if [[ " ${STAGES[*]} " == *" embed "* && $EMB_BACKEND == open-clip && ! -f $EMB.meta.json ]]; then
  "$PY" -c "import open_clip" 2>/dev/null || die "the open-clip encoder needs open_clip_torch: $PY -m pip install open_clip_torch"
fi
for s in "${STAGES[@]}"; do
  start=$SECONDS
  "stage_$s"
  echo "[$s: $((SECONDS - start)) s]"
done
[[ -n $STAGE ]] || echo "written: $D/table.md, $D/train/<model>/report.{json,md}"
