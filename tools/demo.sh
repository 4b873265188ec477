#!/usr/bin/env bash
# The main job on a CPU: write moving-digit shards, train SCD-MSC tiny for a few minutes
# (300 steps; about 3.5 min on 2 cores), write runs/moving_digits_tiny/checkpoints/last.ckpt.
# Extra arguments are config overrides, e.g.  bash tools/demo.sh train.max_steps=100
# Run it again to resume (or, once finished, just to print where the checkpoint is).
set -euo pipefail
cd "$(dirname "$0")/.."
shards=shards/moving_digits_32
[ -f "$shards/train/shard-000003.tar" ] || scd-msc make-shards moving-digits --out "$shards/train" \
  --frames 16 --size 32 --clips 2000 --shard-size 500 --overwrite
[ -f "$shards/val/shard-000000.tar" ] || scd-msc make-shards moving-digits --out "$shards/val" \
  --frames 16 --size 32 --clips 64 --shard-size 64 --seed 1 --overwrite
scd-msc train --config configs/moving_digits_tiny.yaml --resume auto "$@"
