#!/usr/bin/env bash
# decoder_context: recompute against prefix (issue 14). Trains the same SCD-MSC twice, on the same
# shards, for the same steps and seed, once with model.decoder_context=recompute and once with
# prefix, scores both with scd-msc eval on the same held-out clips (same noise seed), and writes
# benchmarks/decoder_context_<device>_<date>.{md,json} (python -m tools.decoder_context_report):
# PSNR/SSIM over horizons 1-8 per setting and the paired per-clip PSNR difference.
#
# Usage: bash tools/decoder_context.sh [STEPS]          (default 1500: after 300 the prefix model still lags)
# Environment: CONFIG (configs/moving_digits_tiny.yaml: CPU, ~13 min per 1500-step training on 2 cores;
# configs/moving_digits_small.yaml on a GPU), SIZE (frame size of the shards: 32, or 64 for
# small), CLIPS (held-out clips scored, 64), EVAL_STEPS (denoising steps, 20), PYTHON (python3).
# Outputs: runs/decoder_context/<setting>/, outputs/decoder_context/ (logs, evals).
# Re-running continues: shards are kept, training resumes (--resume auto), eval runs again.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-1500}
py=${PYTHON:-python3}
cli=("$py" -m scd_msc.cli)
config=${CONFIG:-configs/moving_digits_tiny.yaml} size=${SIZE:-32} clips=${CLIPS:-64} eval_steps=${EVAL_STEPS:-20}
data=shards/decoder_context_$size runs=runs/decoder_context out=outputs/decoder_context
mkdir -p "$out"
[ -f "$data/train/shard-000003.tar" ] || "${cli[@]}" make-shards moving-digits --out "$data/train" --frames 16 \
  --size "$size" --clips 2000 --shard-size 500 --seed 0 --overwrite --no-progress
[ -f "$data/heldout/shard-000000.tar" ] || "${cli[@]}" make-shards moving-digits --out "$data/heldout" \
  --frames 12 --size "$size" --clips "$clips" --shard-size "$clips" --seed 2 --overwrite --no-progress
for setting in recompute prefix; do
  echo "[$setting] training $steps steps ($config); log: $out/train_$setting.log"
  "${cli[@]}" train --config "$config" --resume auto "data.train_shards=$data/train/shard-{000000..000003}.tar" \
    data.val_shards=null train.max_steps="$steps" train.seed=0 train.sample_every_n_steps=0 \
    train.progress_bar=false train.out_dir="$runs/$setting" model.decoder_context="$setting" \
    >>"$out/train_$setting.log" 2>&1
  echo "[$setting] scoring $clips held-out clips"
  "${cli[@]}" eval --checkpoint "$runs/$setting/checkpoints/last.ckpt" --shards "$data/heldout/shard-000000.tar" \
    --context 4 --horizon 8 --clips "$clips" --steps "$eval_steps" --batch 16 --seed 0 --out "$out/eval_$setting" \
    --no-progress >"$out/eval_$setting.log" 2>&1
done
"$py" -m tools.decoder_context_report --recompute "$out/eval_recompute" "$runs/recompute" \
  --prefix "$out/eval_prefix" "$runs/prefix" --notes "Run: \`CONFIG=$config SIZE=$size CLIPS=$clips bash tools/decoder_context.sh $steps\`."
