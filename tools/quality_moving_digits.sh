#!/usr/bin/env bash
# SCD-MSC small against the causal DiT small on moving digits (GPU):
#   1. shards: 20k training clips (16 frames, 64x64), validation (seed 1), held-out (seed 2, 20 frames);
#   2. train both on the same shards for the same number of steps: side by side on GPUs 0 and 1
#      when there are two (each model is scored as soon as it has trained), else one after the other;
#   3. scd-msc eval on held-out clips: 4 context frames, horizons 1-16;
#   4. scd-msc generate 4x the clip length (4 prompt frames + 60) as GIFs;
#   5. tools/quality_report.py -> benchmarks/quality_moving_digits_<gpu>_<date>.{md,json}, _mass.png
#      (digit mass per frame) and _long.gif (SCD-MSC's long videos above the DiT's).
# Time on one H200: 330 + 627 ms per training step, about 4 minutes of scoring.
#
# Usage: bash tools/quality_moving_digits.sh [STEPS] [key=value ...]   (default 1200 steps; the
# overrides go to both trainings). Re-running continues: shards that exist are kept, training
# resumes from last.ckpt (--resume auto) and stops at STEPS, eval and generate run again.
# Outputs: runs/quality/{scd_msc,causal_dit}/ (checkpoints, logs, samples), outputs/quality/.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-1200}
shift $(( $# > 0 ? 1 : 0 ))
py=${PYTHON:-python3}
cli=("$py" -m scd_msc.cli)
data=shards/moving_digits_64
out=outputs/quality
clips=${EVAL_CLIPS:-128}
mkdir -p "$out"

shards() {  # name frames clips per-shard seed
  local last; last=$(printf "%s/%s/shard-%06d.tar" "$data" "$1" $(( ($3 + $4 - 1) / $4 - 1 )))
  [ -f "$last" ] || "${cli[@]}" make-shards moving-digits --out "$data/$1" --frames "$2" --size 64 \
    --clips "$3" --shard-size "$4" --seed "$5" --overwrite --no-progress
}
shards train 16 20000 1000 0
shards val 16 1000 250 1
shards heldout 20 256 256 2

train() {  # name config gpu
  CUDA_VISIBLE_DEVICES=$3 "${cli[@]}" train --config "$2" --resume auto \
    "data.train_shards=$data/train/shard-{000000..000019}.tar" train.devices=1 \
    train.max_steps="$steps" train.warmup_steps=200 train.ema_decay=0.995 train.val_every_n_steps=500 \
    train.checkpoint_every_n_steps=500 train.sample_every_n_steps=1000 train.sample_frames=16 \
    train.sample_steps=20 train.progress_bar=false \
    train.out_dir="runs/quality/$1" "${@:4}" >>"$out/train_$1.log" 2>&1
}
score() {  # name gpu
  local ckpt=runs/quality/$1/checkpoints/last.ckpt
  CUDA_VISIBLE_DEVICES=$2 "${cli[@]}" eval --checkpoint "$ckpt" --shards "$data/heldout/shard-000000.tar" \
    --context 4 --horizon 16 --clips "$clips" --steps 25 --batch 64 --out "$out/eval_$1" --no-progress \
    >"$out/eval_$1.log" 2>&1
  CUDA_VISIBLE_DEVICES=$2 "${cli[@]}" generate --checkpoint "$ckpt" --frames 60 --steps 25 --batch 16 \
    --prompt-shards "$data/heldout/shard-000000.tar" --prompt-frames 4 --out "$out/long_$1.gif" --no-progress \
    >"$out/generate_$1.log" 2>&1
}
ngpu=$("$py" -c "import torch; print(torch.cuda.device_count())")
echo "training $steps steps on $ngpu GPU(s), then scoring $clips held-out clips and generating 64 frames;" \
  "logs in $out/"
if [ "$ngpu" -gt 1 ]; then  # one GPU per model: each scores as soon as it has trained
  (train scd_msc configs/moving_digits_small.yaml 0 "$@"; score scd_msc 0) &  # set -e holds in the subshell
  pid=$!
  train causal_dit configs/causal_dit_small.yaml 1 "$@"
  score causal_dit 1
  wait "$pid"
else
  train scd_msc configs/moving_digits_small.yaml 0 "$@"
  train causal_dit configs/causal_dit_small.yaml 0 "$@"
  score scd_msc 0 &
  pid=$!
  score causal_dit 0
  wait "$pid"
fi

"$py" tools/quality_report.py --scd-msc "$out/eval_scd_msc" "$out/long_scd_msc.gif" runs/quality/scd_msc \
  --causal-dit "$out/eval_causal_dit" "$out/long_causal_dit.gif" runs/quality/causal_dit \
  --train-shards "$data/train/shard-{000000..000019}.tar" \
  --notes "Run: \`bash tools/quality_moving_digits.sh $steps $*\` on $ngpu GPU(s)."
