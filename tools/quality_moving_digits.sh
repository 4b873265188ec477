#!/usr/bin/env bash
# SCD-MSC small against the causal DiT small on moving digits (GPU):
#   1. shards: 20k training clips (16 frames, 64x64), validation (seed 1), held-out (seed 2, 20 frames);
#   2. train on the same shards for the same number of steps: SCD-MSC with context-noise training
#      (flow.context_noise_max=$CTX_TRAIN), the causal DiT, and (ABLATE=1) SCD-MSC trained on
#      clean context. With two GPUs: both SCD-MSC runs side by side on GPU 0, the DiT on GPU 1, and
#      each model is scored as soon as it has trained; with one GPU, one after the other;
#   3. scd-msc eval on held-out clips: 4 context frames, horizons 1-16, context frames committed at
#      --context-noise $CTX (the clean-context ablation at 0);
#   4. scd-msc generate 4x the clip length (4 prompt frames + 60) as GIFs, also at the other
#      --context-noise levels in $SWEEP (SCD-MSC) and $DIT_SWEEP (DiT);
#   5. python -m tools.quality_report -> benchmarks/quality_moving_digits_<gpu>_<date>.{md,json}, _mass.png
#      (digit mass per frame) and _long.gif (SCD-MSC's long videos above the DiT's).
# Time on 2 H200s, 1500 steps: 17 min of training (660 ms per step for each SCD-MSC run sharing
# GPU 0, 626 ms for the DiT on GPU 1), then about 5 min of scoring.
#
# Usage: bash tools/quality_moving_digits.sh [STEPS] [key=value ...]   (default 1500 steps; the
# overrides go to every training). Environment: CTX_TRAIN (0.3), CTX (0.1), SWEEP ("0 0.2"),
# DIT_SWEEP ("0"), ABLATE (1), EVAL_CLIPS (128), PYTHON (python3). SMOKE=1 runs the whole
# pipeline in minutes on a CPU (tiny models at 64x64, few clips and steps; outputs under
# runs/quality_smoke, outputs/quality_smoke) to check it before spending GPU time.
# Re-running continues: shards that exist are kept, training resumes from last.ckpt (--resume auto)
# and stops at STEPS, eval and generate run again.
# Outputs: runs/quality/<model>/ (checkpoints, logs, samples), outputs/quality/ (logs, evals, GIFs).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-1500}
shift $(( $# > 0 ? 1 : 0 ))
py=${PYTHON:-python3}
cli=("$py" -m scd_msc.cli)
ctx_train=${CTX_TRAIN:-0.3} ctx=${CTX:-0.1} sweep=${SWEEP:-0 0.2} dit_sweep=${DIT_SWEEP:-0} ablate=${ABLATE:-1}
data=shards/moving_digits_64 runs=runs/quality out=outputs/quality report=()
train_clips=20000 val_clips=1000 heldout_clips=256 clips=${EVAL_CLIPS:-128} steps_eval=25 batch_eval=64 batch_gen=16
common=(train.warmup_steps=200 train.ema_decay=0.995 train.val_every_n_steps=500
        train.checkpoint_every_n_steps=500 train.sample_every_n_steps=1000 train.sample_frames=16
        train.sample_steps=20 train.progress_bar=false)
scd_model=() dit_model=()
if [ "${SMOKE:-0}" = 1 ]; then  # the same steps, tiny and fast: a check of the pipeline, not a result
  data=shards/moving_digits_64_smoke runs=runs/quality_smoke out=outputs/quality_smoke
  report=(--out "$out/report" --reference-clips 32)
  train_clips=64 val_clips=8 heldout_clips=8 clips=${EVAL_CLIPS:-4} steps_eval=2 batch_eval=4 batch_gen=2
  common+=(data.batch_size=2 data.num_workers=1 data.val_batches=1 data.pin_memory=false
           train.val_every_n_steps=2 train.checkpoint_every_n_steps=2 train.sample_every_n_steps=0)
  scd_model=(preset=scd-msc-tiny model.image_size=64 runtime.backend=reference)
  dit_model=(preset=causal-dit-tiny model.image_size=64 runtime.backend=reference)
fi
mkdir -p "$out"

shards() {  # name frames clips per-shard seed
  local last; last=$(printf "%s/%s/shard-%06d.tar" "$data" "$1" $(( ($3 + $4 - 1) / $4 - 1 )))
  [ -f "$last" ] || "${cli[@]}" make-shards moving-digits --out "$data/$1" --frames "$2" --size 64 \
    --clips "$3" --shard-size "$4" --seed "$5" --overwrite --no-progress
}
shards train 16 "$train_clips" 1000 0
shards val 16 "$val_clips" 250 1
shards heldout 20 "$heldout_clips" 256 2
train_shards=$(printf "%s/train/shard-{000000..%06d}.tar" "$data" $(( (train_clips + 999) / 1000 - 1 )))
val_shards=$(printf "%s/val/shard-{000000..%06d}.tar" "$data" $(( (val_clips + 249) / 250 - 1 )))

train() {  # name config gpu [key=value ...]
  local name=$1 config=$2 gpu=$3
  shift 3
  CUDA_VISIBLE_DEVICES=$gpu "${cli[@]}" train --config "$config" --resume auto \
    "data.train_shards=$train_shards" "data.val_shards=$val_shards" \
    train.devices=1 train.max_steps="$steps" "${common[@]}" train.out_dir="$runs/$name" "$@" \
    >>"$out/train_$name.log" 2>&1
}
evaluate() {  # name gpu t_c
  CUDA_VISIBLE_DEVICES=$2 "${cli[@]}" eval --checkpoint "$runs/$1/checkpoints/last.ckpt" \
    --shards "$data/heldout/shard-000000.tar" --context 4 --horizon 16 --clips "$clips" \
    --steps "$steps_eval" --batch "$batch_eval" --context-noise "$3" --out "$out/eval_$1" --no-progress \
    >"$out/eval_$1.log" 2>&1
}
long() {  # name gpu t_c gif
  CUDA_VISIBLE_DEVICES=$2 "${cli[@]}" generate --checkpoint "$runs/$1/checkpoints/last.ckpt" --frames 60 \
    --steps "$steps_eval" --batch "$batch_gen" --prompt-shards "$data/heldout/shard-000000.tar" \
    --prompt-frames 4 --context-noise "$3" --out "$4" --no-progress >"${4%.gif}.log" 2>&1
}
score() {  # name gpu t_c sweep...: eval and a long video at t_c, then long videos at each sweep level
  local name=$1 gpu=$2 t_c=$3
  shift 3
  evaluate "$name" "$gpu" "$t_c"
  long "$name" "$gpu" "$t_c" "$out/long_$name.gif"
  for level in "$@"; do long "$name" "$gpu" "$level" "$out/long_${name}_tc$level.gif"; done
}
scd() {  # GPU: SCD-MSC with context-noise training (and the clean-context ablation beside it), scored
  train scd_msc configs/moving_digits_small.yaml "$1" "${scd_model[@]}" \
    flow.context_noise_max="$ctx_train" "${@:2}" &
  local pid=$!
  if [ "$ablate" = 1 ]; then
    train scd_msc_clean configs/moving_digits_small.yaml "$1" "${scd_model[@]}" flow.context_noise_max=0 "${@:2}"
  fi
  wait "$pid"
  score scd_msc "$1" "$ctx" $sweep
  if [ "$ablate" = 1 ]; then score scd_msc_clean "$1" 0; fi
}
dit() {  # GPU: the causal DiT, scored
  train causal_dit configs/causal_dit_small.yaml "$1" "${dit_model[@]}" "${@:2}"
  score causal_dit "$1" "$ctx" $dit_sweep
}
ngpu=$("$py" -c "import torch; print(torch.cuda.device_count())")
echo "training $steps steps on $ngpu GPU(s) (SCD-MSC context noise max $ctx_train, ablation $ablate)," \
  "then scoring $clips held-out clips at t_c=$ctx and generating 64 frames; logs in $out/"
if [ "$ngpu" -gt 1 ]; then  # one GPU per family: each scores as soon as it has trained
  scd 0 "$@" &  # set -e holds in the subshell
  pid=$!
  dit 1 "$@"
  wait "$pid"
else
  scd 0 "$@"
  dit 0 "$@"
fi

settings=$(env | grep -oE '^(CTX_TRAIN|CTX|SWEEP|DIT_SWEEP|ABLATE|EVAL_CLIPS|SMOKE)=.*' | sed -E 's/=(.* .*)/="\1"/' | tr '\n' ' ' || true)
variants=()
for level in $sweep; do variants+=(--variant "SCD-MSC, t_c=$level" "$out/long_scd_msc_tc$level.gif"); done
for level in $dit_sweep; do variants+=(--variant "causal DiT, t_c=$level" "$out/long_causal_dit_tc$level.gif"); done
if [ "$ablate" = 1 ]; then
  variants+=(--variant "SCD-MSC, clean-context training" "$out/long_scd_msc_clean.gif" "$out/eval_scd_msc_clean"
             "$runs/scd_msc_clean")
fi
"$py" -m tools.quality_report --scd-msc "$out/eval_scd_msc" "$out/long_scd_msc.gif" "$runs/scd_msc" \
  --causal-dit "$out/eval_causal_dit" "$out/long_causal_dit.gif" "$runs/causal_dit" "${variants[@]}" \
  --train-shards "$train_shards" "${report[@]}" \
  --notes "Run: \`${settings}bash tools/quality_moving_digits.sh $steps $*\` on $ngpu GPU(s)."
