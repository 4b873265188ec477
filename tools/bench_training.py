"""Training throughput and loader wait: ``scd-msc train`` on 1, 2, … GPUs.

Each (config, device count) runs the real training command in a subprocess (Lightning
launches DDP itself when ``devices > 1``) for ``--warmup + --steps`` optimizer steps,
with sample strips, validation and step checkpoints off, and reads the run's
``timing.json`` (``scd_msc/training/timing.py``): steady-state step time, steps/s,
samples/s and the share of each step spent waiting for the data loader. Warm-up
(the first ``--warmup`` steps: allocator, workers, compile) is excluded.

``--strategies ddp fsdp`` runs each device count under each strategy (FSDP runs set
``train.ema_decay=0``: Lightning's EMA callback does not gather sharded weights) and
reports the scaling per strategy: samples/s at ``n`` GPUs ÷ ``n/m``× those at the least
count ``m`` (``ddp_efficiency_8`` in the JSON for 1 and 8 GPUs). The samples/s are
start-to-start step times, so the loader wait is included.

Writes ``benchmarks/<what>_<gpu>_<date>.md`` + ``.json``. Example (H100, loader wait of
both small presets; DDP scaling on a 2-GPU machine; DDP and FSDP on 1 to 8 GPUs)::

    python -m tools.bench_training --configs configs/moving_digits_small.yaml configs/causal_dit_small.yaml \\
        --devices 1 --steps 150 --what training_loader
    python -m tools.bench_training --configs configs/moving_digits_small.yaml --devices 1 2 --what training_ddp
    python -m tools.bench_training --configs configs/doom_small.yaml --devices 1 2 4 8 --strategies ddp fsdp \\
        --what training_scaling
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scd_msc.checks import choice, positive_int, positive_ints
from scd_msc.config import STRATEGIES, load_config
from tools.bench.env import env_info
from tools.bench.report import command_line, fmt, report_stem, write_report

ROOT = Path(__file__).resolve().parent.parent  # the checkout: runs start here

WAIT_BAR = 0.05  # issue #4: loader wait < 5% of the step


def run_one(config: str, devices: int, batch: int | None, strategy: str | None, args: argparse.Namespace,
            work: Path) -> dict:
    """One ``scd-msc train`` run of ``config`` on ``devices`` GPUs (``batch`` per GPU, or
    the config's; ``strategy``, or the config's) -> its row of the report."""
    out = work / (f"{Path(config).stem}_{devices}gpu" + ("" if batch is None else f"_b{batch}")
                  + ("" if strategy is None else f"_{strategy}"))
    overrides = [f"train.devices={devices}", f"train.max_steps={args.warmup + args.steps + 1}",
                 f"train.out_dir={out}", f"train.timing_warmup={args.warmup}",
                 "train.sample_every_n_steps=0", "train.val_every_n_steps=0",
                 "train.checkpoint_every_n_steps=1000000", "train.progress_bar=false", *args.overrides,
                 *([] if batch is None else [f"data.batch_size={batch}"]),
                 *([] if strategy is None else [f"train.strategy={strategy}"]),
                 *(["train.ema_decay=0"] if strategy == "fsdp" else [])]
    config = str(Path(config).resolve())  # the runs start in the checkout's root
    cfg = load_config(config, overrides)  # fails here, naming the key, before any launch
    cmd = [sys.executable, "-m", "scd_msc.training.cli", "--config", config, *overrides]
    log_path = work / f"{out.name}.log"
    print(f"[{out.name}] {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    wall = time.perf_counter() - start
    if code != 0:
        tail = log_path.read_text()[-3000:]
        raise SystemExit(f"[{out.name}] scd-msc train exited with {code}; log tail:\n{tail}")
    timing = json.loads((out / "timing.json").read_text())
    return {"config": Path(config).stem, "preset": cfg.preset, "strategy": cfg.train.strategy, "devices": devices,
            "batch_per_gpu": cfg.data.batch_size, "workers_per_gpu": cfg.data.num_workers,
            **{k: timing[k] for k in ("steps", "step_ms_median", "step_ms_mean", "steps_per_s", "samples_per_s",
                                      "loader_wait_ms_mean", "loader_wait_ms_p95", "loader_wait_fraction")},
            "model_tflops_per_s": timing.get("model_tflops_per_s"), "mfu": timing.get("mfu"),
            "compile": cfg.train.compile, "activation_checkpointing": cfg.train.activation_checkpointing,
            "wall_s": round(wall, 1)}


def headline(rows: list[dict]) -> dict:
    """Per preset at one GPU, the row of highest samples/s: ``<preset>_clips_per_s`` and
    ``<preset>_mfu`` (``scd_msc_small_clips_per_s``, ...), with its batch size."""
    out: dict = {}
    for row in rows:
        if row["devices"] != 1:
            continue
        key = row["preset"].replace("-", "_")
        if row["samples_per_s"] > out.get(f"{key}_clips_per_s", -1.0):
            out.update({f"{key}_clips_per_s": row["samples_per_s"], f"{key}_mfu": row["mfu"],
                        f"{key}_batch": row["batch_per_gpu"]})
    return out


def scaling(rows: list[dict]) -> dict:
    """Adds ``speedup`` and ``efficiency`` to each row: its samples/s over those of the row
    of the same config, batch and strategy at the least device count ``m`` (÷ ``n/m`` for
    the efficiency). Returns ``{"scaling": {strategy: {devices: samples/s}}}`` of the
    first config and batch, plus ``<strategy>_efficiency_<n>`` for each ``n`` when ``m`` is 1."""
    least = min(r["devices"] for r in rows)
    same = lambda a, b: all(a[k] == b[k] for k in ("config", "batch_per_gpu", "strategy"))  # noqa: E731
    for row in rows:
        one = next(r for r in rows if same(r, row) and r["devices"] == least)
        row["speedup"] = row["samples_per_s"] / one["samples_per_s"]
        row["efficiency"] = row["speedup"] / (row["devices"] / least)
    out: dict = {"scaling": {}}
    first = (rows[0]["config"], rows[0]["batch_per_gpu"])
    for row in (r for r in rows if (r["config"], r["batch_per_gpu"]) == first):
        out["scaling"].setdefault(row["strategy"], {})[str(row["devices"])] = row["samples_per_s"]
        if least == 1 and row["devices"] > 1:
            out[f"{row['strategy']}_efficiency_{row['devices']}"] = row["efficiency"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_training", description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", required=True, help="experiment yaml files (configs/*.yaml)")
    p.add_argument("--devices", nargs="+", type=int, default=[1], help="GPU counts to run (default 1)")
    p.add_argument("--steps", type=int, default=150, help="timed optimizer steps per run (default 150)")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first (default 20)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                   help="per-GPU batch sizes to sweep (default: each config's data.batch_size)")
    p.add_argument("--strategies", nargs="+", default=None, metavar="STRATEGY",
                   help="run each device count under each: ddp, fsdp (default: the config's train.strategy)")
    p.add_argument("--what", default="training", help="report name: benchmarks/<what>_<gpu>_<date>")
    p.add_argument("--out", default=str(ROOT / "benchmarks"), help="report folder (default benchmarks/)")
    p.add_argument("--work", default=None, help="folder for the runs and their logs (default: a temp folder)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = p.parse_args(argv)
    command = command_line(__spec__.name, argv)
    try:
        for name in ("steps", "warmup"):
            positive_int(f"--{name}", getattr(args, name))
        positive_ints("--devices", args.devices)
        if args.batch_sizes is not None:
            positive_ints("--batch-sizes", args.batch_sizes)
        for strategy in args.strategies or ():
            choice("--strategies", strategy, STRATEGIES[1:])
    except ValueError as err:
        p.error(str(err))
    import torch

    if not torch.cuda.is_available():
        p.error("no CUDA device: this benchmark times GPU training")
    if max(args.devices) > torch.cuda.device_count():
        p.error(f"--devices={args.devices}: only {torch.cuda.device_count()} GPU(s) visible")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_training_"))
    work.mkdir(parents=True, exist_ok=True)

    rows = [run_one(config, d, b, s, args, work) for config in args.configs for b in (args.batch_sizes or [None])
            for s in (args.strategies or [None]) for d in args.devices]
    scaled = scaling(rows)
    worst = max(r["loader_wait_fraction"] for r in rows)
    checks = [f"- loader wait, worst run: **{100 * worst:.2f}%** of the step (bar < {100 * WAIT_BAR:.0f}%): "
              f"{'PASS' if worst < WAIT_BAR else 'FAIL'}"]
    top = headline(rows)
    for key in sorted(k for k in top if k.endswith("_clips_per_s")):
        stem = key.removesuffix("_clips_per_s")
        mfu = top[f"{stem}_mfu"]
        checks.append(f"- {stem}: **{fmt(top[key])} clips/s** on 1 GPU at batch {top[f'{stem}_batch']}, MFU "
                      + ("unknown (GPU peak not in training/flops.py)" if mfu is None else f"**{fmt(100 * mfu)}%**"))
    for r in rows:
        if r["devices"] != min(args.devices):
            checks.append(f"- {r['config']} ({r['strategy']}): {r['devices']} GPUs give **{fmt(r['speedup'])}×** "
                          f"the samples/s of {min(args.devices)} ({fmt(100 * r['efficiency'])}% scaling efficiency)")
    notes = ("Steady state: the first `--warmup` steps excluded; every step syncs (finite-loss check), so "
             "host intervals are device step times. Loader wait = host time between one step's end and the "
             "next step's start (an upper bound of GPU starvation). Sample strips, validation and step "
             "checkpoints off; EMA, gradient clipping, bf16-mixed and compile on as configured. MFU = analytic "
             "model FLOPs (training/flops.py: matmuls and attention of forward + backward) per second over the "
             "GPU's dense bf16 peak. Samples/s = batch × GPUs ÷ the mean start-to-start step interval, loader "
             "wait included." + (" FSDP runs: `train.ema_decay=0` (Lightning's EMA callback does not gather "
                                 "sharded weights)." if "fsdp" in (args.strategies or ()) else ""))
    columns = ["config", "strategy", "devices", "batch_per_gpu", "workers_per_gpu", "steps", "step_ms_median",
               "steps_per_s", "samples_per_s", "model_tflops_per_s", "mfu", "speedup", "efficiency",
               "loader_wait_ms_mean", "loader_wait_ms_p95", "loader_wait_fraction", "wall_s"]
    config = {"configs": args.configs, "devices": args.devices, "batch_sizes": args.batch_sizes,
              "strategies": args.strategies, "steps": args.steps, "warmup": args.warmup, "overrides": args.overrides}
    md, js = write_report(report_stem(args.out, args.what), f"Training throughput and loader wait ({args.what})",
                          command, config, rows, extra_md="## Checks\n\n" + "\n".join(checks) + "\n\n" + notes,
                          data_json={"loader_wait_fraction_max": worst, **top, **scaled, "checks": checks},
                          columns=columns, env=env_info("cuda"))
    print("\n".join(checks))
    print(f"wrote {md} and {js}; runs and logs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
