#!/usr/bin/env bash
# The Doom showcase on one GPU (issue 16): SCD-MSC against the causal DiT (and SCD-dense) on
# ViZDoom clips with their recorded actions, from shards to benchmarks/showcase_doom_<gpu>_<date>.*
#   1. shards: training (seed 0), validation (seed 1), held-out clips of 4 + 16 frames (seed 2)
#      and held-out long clips of 4 + LONG_FRAMES frames (seed 3) of the same scenarios; other seeds
#      give other episodes, spawn points and action sequences than training saw;
#   2. (LATENT=1) the autoencoder and latent shards;
#   3. training: configs/doom_small.yaml (SCD-MSC), causal_dit_doom_small.yaml and (DENSE=1)
#      scd_dense_doom_small.yaml on the same shards for the same TRAIN_STEPS, the default fast
#      training path (train.compile=auto: every block compiled on CUDA, bf16-mixed);
#   4. scd-msc eval per family on CLIPS held-out clips: autoregressive PSNR/SSIM at horizons 1-16 with
#      the true actions, with shuffled actions, the repeat-last floor, teacher-forced next-frame PSNR;
#   5. scd-msc eval per family on LONG_CLIPS long clips: a LONG_FRAMES-frame rollout under the recorded
#      actions (mean colour against the data's; the example clips for the recording);
#   6. (PLAY=1, the default) scd-msc play on the SCD-MSC checkpoint with EVAL_STEPS steps, driven over its
#      WebSocket as the page drives it (python -m tools.bench_play): frames/s at the page and the server's
#      ms per frame -> REPORT/showcase_doom_play_<gpu>_<date>.{md,json};
#   7. python -m tools.showcase_report -> REPORT/showcase_doom_<gpu>_<date>.{md,json,gif,png} and a table.
# Frames: pixels 64x64 RGB (the fallback of issue 16; LATENT=1: latent 128x128).
# Policy (scd_msc/data/games/doom.py): held actions (3-9 steps), drawn with weights that give the
# player's moves 93% (no-op and attack 1/28 each), so the actions, not a standing view, decide the frames.
# Scenarios: SCENARIOS (default my_way_home,health_gathering,health_gathering_supreme, those whose
# episodes outlast the long clips under this policy; defend_the_center and deadly_corridor do not).
#
# Usage: bash tools/showcase_doom.sh   Environment (defaults): TRAIN_STEPS (3000), CLIPS (128),
# LONG_CLIPS (8), LONG_FRAMES (512), EVAL_STEPS (25: denoising steps), CTX (0.1: eval --context-noise),
# TRAIN_CLIPS (20000), BATCH (the configs' data.batch_size), DENSE (0), LATENT (0; with it AE_MINUTES (4),
# AE_STEPS, SIZE), SCENARIOS, WORKERS (CPU count), PLAY (1), PLAY_FRAMES (600), OUT (outputs/showcase_doom;
# where the environment already exports an OUT of its own, set it here explicitly), REPORT (benchmarks),
# PYTHON (python3), FAMILIES (every family: scd_msc causal_dit [scd_dense]; a subset trains and scores only
# those, and no report is made: two such runs can share one GPU at the same time, after one run has made the
# shards; FAMILIES=none makes only the shards, autoencoder and latents), PARALLEL (0; 1: after the shards, the
# families train and are scored side by side on the one GPU, each as a FAMILIES run, then play and the report),
# BASELINE (an earlier report's JSON on the same held-out clips, say the one-GPU run: the report pairs each
# family's scores with it). Several GPUs: each training runs DDP over every visible GPU (train.devices=auto);
# with PARALLEL=1 the families split them, each its own share (CUDA_VISIBLE_DEVICES).
# SMOKE=1: the same pipeline on a CPU in minutes (tiny models, 32x32, few clips and steps; OUT
# outputs/showcase_doom_smoke, REPORT $OUT/report): a check of the pipeline, not a result.
# Resumable: a step whose outputs exist is skipped (shards, a finished training, a complete eval); an
# interrupted training continues from last.ckpt. Every step logs to $OUT/logs/<step>.log. SIGTERM or Ctrl-C
# (e.g. `timeout 580 bash tools/showcase_doom.sh` under a per-command limit) stops the running step
# cleanly (a training saves last.ckpt) and exits 143; the same command again continues.
set -euo pipefail
self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"  # PARALLEL=1 runs it once per family
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
cli=("$py" -m scd_msc.cli)
smoke=${SMOKE:-0}
steps=${TRAIN_STEPS:-3000} clips=${CLIPS:-128} long_clips=${LONG_CLIPS:-8} long_frames=${LONG_FRAMES:-512}
eval_steps=${EVAL_STEPS:-25} ctx=${CTX:-0.1} train_clips=${TRAIN_CLIPS:-20000} dense=${DENSE:-0}
play=${PLAY:-1} play_frames=${PLAY_FRAMES:-600} only=${FAMILIES:-}
latent=${LATENT:-0} scenarios=${SCENARIOS:-my_way_home,health_gathering,health_gathering_supreme}
out=${OUT:-outputs/showcase_doom} size=64 val_clips=512 batch_eval=64 batch_long=8 space="pixels 64x64 RGB"
configs=(scd_msc:configs/doom_small.yaml causal_dit:configs/causal_dit_doom_small.yaml)
# a run of thousands of steps, not the config's 100k: warm-up and EMA as tools/quality_moving_digits.sh
common=(train.compile=auto train.progress_bar=false train.sample_every_n_steps=0 train.warmup_steps=200
        train.ema_decay=0.995 train.checkpoint_every_n_steps=500 train.val_every_n_steps=500)
[ -n "${BATCH:-}" ] && common+=(data.batch_size="$BATCH")
model=()
if [ "$smoke" = 1 ]; then  # tiny and fast: a check of the pipeline, not a result
  steps=${TRAIN_STEPS:-4} clips=${CLIPS:-4} long_clips=${LONG_CLIPS:-2} long_frames=${LONG_FRAMES:-24}
  eval_steps=${EVAL_STEPS:-2} train_clips=${TRAIN_CLIPS:-16} out=${OUT:-outputs/showcase_doom_smoke}
  play_frames=${PLAY_FRAMES:-8}
  size=32 val_clips=4 batch_eval=4 batch_long=2 space="pixels 32x32 RGB (SMOKE=1)"
  common+=(data.batch_size=2 data.num_workers=0 data.val_batches=1 data.epoch_batches=4 data.pin_memory=false
           train.val_every_n_steps=0 train.checkpoint_every_n_steps="$steps" train.warmup_steps=1
           train.accelerator=cpu train.devices=1 train.precision=32-true runtime.backend=reference)
  model=(preset:scd_msc=scd-msc-tiny preset:causal_dit=causal-dit-tiny preset:scd_dense=scd-dense-tiny)
fi
[ "$dense" = 1 ] && configs+=(scd_dense:configs/scd_dense_doom_small.yaml)
# the autoencoder: trained by scd-msc train-ae inside tools.bench_autoencoder, which then measures it (held-out
# PSNR/SSIM, decode ms on the fast path) -> REPORT/showcase_doom_autoencoder_<gpu>_<date>.*; AE_MINUTES of
# training with the settings of benchmarks/autoencoder_h200_2026-12-02.md (EMA 0.995, not compiled)
ae_config=configs/ae_doom.yaml ae_budget=(--minutes "${AE_MINUTES:-4}") ae_common=(train.ema_decay=0.995 train.compile=false)
[ "$smoke" = 1 ] && ae_config=configs/ae_tiny.yaml ae_budget=(--steps "$steps" --eval-frames 16 --decode-iters 2) \
  ae_common=(data.num_workers=0)
if [ "$latent" = 1 ]; then
  # ---- LATENT (latent 128x128, issue 15; README "Latent diffusion") -------------------------------
  # Run end to end with SMOKE=1 on a CPU; on a GPU up to the latent shards. The pixel shards are made at
  # 128x128 (SIZE), scd-msc train-ae trains on them ($ae_config; AE_STEPS overrides its train.max_steps), the
  # training and validation sets are encoded to latents (make-shards latents --autoencoder --from), the
  # models train on those; eval and the recordings take the pixel held-out shards, which eval encodes
  # through the autoencoder the checkpoint names, and score against the true frames.
  size=${SIZE:-128} space="latents of a scd-msc train-ae autoencoder ($ae_config), scored on 128x128 RGB"
  if [ "$smoke" = 1 ]; then  # 8x8 latents: patches of 2 give the tiny model's windows room
    size=${SIZE:-32} space="latents ($ae_config, SMOKE=1), scored on 32x32 RGB"
    common+=(model.patch=2)
  else
    common+=(model.patch=1)  # 16x16 latents, one token each (as configs/doom_latent_small.yaml)
  fi
  [ -n "${AE_STEPS:-}" ] && ae_budget+=(--steps "$AE_STEPS")
fi
report=${REPORT:-$([ "$smoke" = 1 ] && echo "$out/report" || echo benchmarks)}
data=$out/shards logs=$out/logs
mkdir -p "$logs"

running=
stop() {  # SIGTERM/SIGINT (timeout, Ctrl-C): stop the running step the same way (training saves last.ckpt)
  # shellcheck disable=SC2086  # one pid, or one per family (PARALLEL=1)
  if [ -n "$running" ]; then kill -TERM $running 2>/dev/null || true; wait $running || true; fi
  echo "showcase_doom: stopped; run the same command again to continue" >&2
  exit 143
}
trap stop TERM INT
step() {  # name command...: run with its log; on failure say where the log is and stop
  run_step 1 "$@"
}
try_step() {  # name command...: as step, but a failure is reported and the pipeline goes on
  run_step 0 "$@"
}
run_step() {  # fatal name command...
  local fatal=$1 name=$2 rc=0
  shift 2
  echo "[$(date +%H:%M:%S)] $name (log: $logs/$name.log)"
  "$@" >"$logs/$name.log" 2>&1 &  # in the background, so that a signal reaches the trap at once
  running=$!
  wait "$running" || rc=$?
  running=
  if [ "$rc" != 0 ]; then
    echo "showcase_doom: step $name failed (exit $rc); the end of $logs/$name.log:" >&2
    tail -n 5 "$logs/$name.log" >&2
    [ "$fatal" = 1 ] && exit 1
  fi
  return 0
}
skip() { echo "[$(date +%H:%M:%S)] $1: done already ($2)"; }
last_shard() { printf "%s/shard-%06d.tar" "$1" $(( ($2 + $3 - 1) / $3 - 1 )); }  # folder clips per-shard
shard_set() { printf "%s/shard-{000000..%06d}.tar" "$1" $(( ($2 + $3 - 1) / $3 - 1 )); }

shards() {  # name frames clips per-shard seed clips-per-rollout
  local folder=$data/$1
  if [ -f "$(last_shard "$folder" "$3" "$4")" ]; then skip "shards_$1" "$folder"; return; fi
  step "shards_$1" "${cli[@]}" make-shards doom --scenario "$scenarios" --out "$folder" --frames "$2" \
    --size "$size" --clips "$3" --shard-size "$4" --seed "$5" --clips-per-rollout "$6" --overwrite --no-progress \
    ${WORKERS:+--workers "$WORKERS"}
}
shards train 32 "$train_clips" 1000 0 8
shards val 32 "$val_clips" 128 1 8
shards heldout 20 "$clips" 256 2 2
shards long $((4 + long_frames)) "$long_clips" 64 3 1
train_shards=$(shard_set "$data/train" "$train_clips" 1000)
val_shards=$(shard_set "$data/val" "$val_clips" 128)
heldout=$(shard_set "$data/heldout" "$clips" 256)
long=$(shard_set "$data/long" "$long_clips" 64)

if [ "$latent" = 1 ]; then  # LATENT, continued: the autoencoder, then latent training shards
  ae=$out/runs/ae/doom
  if [ -f "$ae/finished" ]; then skip train_ae "$ae"; else
    # a failed measurement is reported, not fatal; a missing checkpoint stops the run below
    try_step train_ae "$py" -m tools.bench_autoencoder --datasets "doom=$ae_config" --work "$out/runs/ae" \
      --out "$report" --what showcase_doom_autoencoder "${ae_budget[@]}" "data.train_shards=$train_shards" \
      "data.val_shards=$val_shards" "${ae_common[@]}"
    [ -f "$ae/checkpoints/last.ckpt" ] || { echo "showcase_doom: train_ae wrote no $ae/checkpoints/last.ckpt" >&2; exit 1; }
    touch "$ae/finished"
  fi
  latents() {  # name pixel-set clips per-shard
    local folder=$data/latent_$1
    if [ -f "$(last_shard "$folder" "$3" "$4")" ]; then skip "latents_$1" "$folder"; return; fi
    step "latents_$1" "${cli[@]}" make-shards latents --autoencoder "$ae/checkpoints/last.ckpt" --from "$2" \
      --out "$folder" --shard-size "$4" --overwrite --no-progress
  }
  latents train "$train_shards" "$train_clips" 1000
  latents val "$val_shards" "$val_clips" 128
  train_shards=$(shard_set "$data/latent_train" "$train_clips" 1000)
  val_shards=$(shard_set "$data/latent_val" "$val_clips" 128)
fi

train() {  # family config
  local run=$out/runs/$1 extra=() m
  if [ -f "$run/finished_$steps" ]; then skip "train_$1" "$run"; return; fi
  for m in "${model[@]}"; do [ "${m#preset:$1=}" != "$m" ] && extra+=("preset=${m#preset:$1=}"); done
  step "train_$1" "${cli[@]}" train --config "$2" --resume auto "data.train_shards=$train_shards" \
    "data.val_shards=$val_shards" train.max_steps="$steps" train.out_dir="$run" "${common[@]}" "${extra[@]}"
  touch "$run/finished_$steps"
}
complete() {  # eval-folder checkpoint: a whole eval of this checkpoint (written after it)
  [ -f "$1/eval.json" ] && grep -q '"interrupted": false' "$1/eval.json" && [ "$1/eval.json" -nt "$2" ]
}
evaluate() {  # family name shards horizon clips batch extra...
  local folder=$out/$2/$1 ckpt=$out/runs/$1/checkpoints/last.ckpt
  if complete "$folder" "$ckpt"; then skip "$2_$1" "$folder"; return; fi
  step "$2_$1" "${cli[@]}" eval --checkpoint "$ckpt" --shards "$3" --context 4 \
    --horizon "$4" --clips "$5" --steps "$eval_steps" --batch "$6" --context-noise "$ctx" --out "$folder" \
    --no-progress "${@:7}"
}
selected() { [ -z "$only" ] || [[ " ${only//,/ } " == *" $1 "* ]]; }  # family: in FAMILIES (or no FAMILIES)
gpu_ids() {  # the visible GPUs' ids, one per line: CUDA_VISIBLE_DEVICES when set, else nvidia-smi's list
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -v '^$' || true
  else (nvidia-smi -L 2>/dev/null || true) | awk '/^GPU /{print n++}'; fi
}
if [ "${PARALLEL:-0}" = 1 ] && [ -z "$only" ]; then  # every family's training and evals at once, one run each
  pids=() failed=0 n=0
  mapfile -t gpus < <(gpu_ids)
  share=$(( ${#gpus[@]} / ${#configs[@]} ))  # with several GPUs each family gets its own (the rest stay idle)
  for entry in "${configs[@]}"; do
    family=${entry%%:*} own=()
    if [ "${#gpus[@]}" -ge 2 ] && [ "$share" -ge 1 ]; then
      own=("CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${gpus[*]:$((n * share)):$share}")")
    fi
    n=$((n + 1))
    echo "[$(date +%H:%M:%S)] $family: training and evals side by side${own[*]:+ (${own[*]})}" \
      "(log: $logs/parallel_$family.log)"
    env "${own[@]}" FAMILIES="$family" PLAY=0 bash "$self" >"$logs/parallel_$family.log" 2>&1 &
    pids+=($!)
  done
  running="${pids[*]}"
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  running=
  if [ "$failed" = 1 ]; then
    echo "showcase_doom: a family failed; the ends of $logs/parallel_*.log:" >&2
    tail -n 5 "$logs"/parallel_*.log >&2
    exit 1
  fi
fi
for entry in "${configs[@]}"; do
  family=${entry%%:*}
  selected "$family" || continue
  train "$family" "${entry#*:}"
  evaluate "$family" eval "$heldout" 16 "$clips" "$batch_eval" --teacher-forced
  evaluate "$family" long "$long" "$long_frames" "$long_clips" "$batch_long" --no-shuffled --examples 2
done

play_report=
fresh_play() {  # checkpoint: the newest play report written after it, or nothing
  local newest
  newest=$(ls -t "$report"/showcase_doom_play_*.json 2>/dev/null | head -n 1 || true)
  if [ -n "$newest" ] && [ "$newest" -nt "$1" ]; then echo "$newest"; fi
}
if [ "$play" = 1 ] && selected scd_msc; then  # the page's protocol over a WebSocket, as a player meets it
  ckpt=$out/runs/scd_msc/checkpoints/last.ckpt
  play_report=$(fresh_play "$ckpt")
  if [ -n "$play_report" ]; then skip play "$play_report"; else
    try_step play "$py" -m tools.bench_play --frames "$play_frames" --warmup "$([ "$smoke" = 1 ] && echo 2 || echo 50)" \
      --out "$report" --what showcase_doom_play -- --checkpoint "$ckpt" --prompt-shards "$heldout" --prompt-frames 4 \
      --steps "$eval_steps" --context-noise "$ctx"
    play_report=$(fresh_play "$ckpt")
  fi
fi
if [ -n "$only" ]; then
  echo "showcase_doom: FAMILIES=$only done; run without FAMILIES for the report"
  exit 0
fi

families=()
for entry in "${configs[@]}"; do
  family=${entry%%:*}
  families+=("--${family//_/-}" "$out/eval/$family" "$out/long/$family" "$out/runs/$family")
done
knobs='SMOKE|PARALLEL|BASELINE|LATENT|AE_MINUTES|AE_STEPS|TRAIN_STEPS|CLIPS|LONG_CLIPS|LONG_FRAMES|EVAL_STEPS|CTX|TRAIN_CLIPS|BATCH|DENSE|SCENARIOS'
settings=$(env | grep -oE "^($knobs)=.*" | tr '\n' ' ' || true)
step report "$py" -m tools.showcase_report "${families[@]}" --space "$space" --out "$report" \
  ${play_report:+--play "$play_report"} ${BASELINE:+--baseline "$BASELINE"} \
  --notes "Run: \`${settings}bash tools/showcase_doom.sh\`; scenarios $scenarios; policy: held actions \
(3-9 steps), the player's moves 93% of the draws."
cat "$logs/report.log"
