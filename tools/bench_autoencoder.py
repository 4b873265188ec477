"""Frame autoencoder: held-out PSNR / SSIM after a time-boxed ``scd-msc train-ae`` run, and
the decoder's latency at batch 1 (issue 15: PSNR >= 32 dB at >= 24x compression within 15
minutes of training on one GPU; <= 1 ms per decoded frame on the fast path).

Each dataset (``doom`` reads ``configs/ae_doom.yaml``; ``name=path.yaml`` any config) runs
the real ``scd-msc train-ae`` in a subprocess for ``--minutes`` of training
(``train.max_minutes``: it stops cleanly and writes ``last.ckpt``; the cosine schedule ends
with it) or ``--steps`` steps, with validation and step checkpoints off. Datasets train
at the same time, one per GPU, when ``--gpus`` lists several (default: every visible GPU),
else one after another. Then this process loads each ``last.ckpt`` (EMA weights) and
measures it on the first ``--eval-frames`` frames of the config's ``data.val_shards``
(``tools/bench/autoencoder.py``: PSNR, SSIM, eager and compiled + CUDA-graph decode).

Writes ``benchmarks/autoencoder_<gpu>_<date>.md`` + ``.json`` (rewritten after every
dataset, so a run cut short keeps what it measured) and ``..._<dataset>.png`` (held-out
frames above their reconstructions). Examples::

    python -m tools.bench_autoencoder --datasets doom atari --minutes 5.5    # 2 GPUs: both at once
    python -m tools.bench_autoencoder --datasets doom --minutes 4 model.upsample=nearest doom:train.lr=5e-4
    python -m tools.bench_autoencoder --datasets tiny=configs/ae_tiny.yaml --steps 20 --eval-frames 64   # CPU

Overrides ``key=value`` apply to every dataset, ``name:key=value`` to one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from scd_msc.ae_config import AEExperimentConfig, load_ae_config
from scd_msc.checks import non_negative_int, number, positive_int
from tools.bench.env import env_info
from tools.bench.report import check, command_line, fmt, report_stem, write_report

ROOT = Path(__file__).resolve().parent.parent  # the checkout: runs start here
PSNR_BAR, COMPRESSION_BAR, MINUTES_BAR, DECODE_MS_BAR = 32.0, 24.0, 15.0, 1.0
COLUMNS = ["dataset", "factor", "channels", "compression", "psnr", "ssim", "psnr_fast", "decode_ms_per_frame",
           "decode_ms_eager", "decode_ms_fast", "decoder_gflop", "decoder_params_m", "train_minutes", "train_steps",
           "frames_per_s", "eval_frames", "weights", "status"]


@dataclass
class Job:
    """One dataset: its config file, its overrides (the bench's last), its run folder."""

    name: str
    config: str
    overrides: list[str]
    cfg: AEExperimentConfig
    out: Path
    row: dict[str, Any] = field(default_factory=dict)


def parse_datasets(specs: list[str]) -> list[tuple[str, str]]:
    """``["doom", "x=my.yaml"]`` -> ``[("doom", "<root>/configs/ae_doom.yaml"), ("x", "my.yaml")]``."""
    out = []
    for spec in specs:
        name, _, config = spec.partition("=")
        if not name.isidentifier():
            raise ValueError(f"--datasets={spec!r}: expected NAME or NAME=CONFIG.yaml, NAME a plain word")
        out.append((name, config or str(ROOT / "configs" / f"ae_{name}.yaml")))
    if len({n for n, _ in out}) != len(out):
        raise ValueError(f"--datasets={specs}: expected each name once")
    return out


def split_override(text: str) -> tuple[Optional[str], str]:
    """``"doom:train.lr=1e-3" -> ("doom", "train.lr=1e-3")``; ``"train.lr=1e-3" -> (None, ...)``."""
    key = text.partition("=")[0]
    return (key.partition(":")[0], text.partition(":")[2]) if ":" in key else (None, text)


def build_jobs(args: argparse.Namespace, work: Path) -> list[Job]:
    """Validate every dataset's config (before anything is launched): one-line ``ValueError``."""
    datasets = parse_datasets(args.datasets)
    names = [n for n, _ in datasets]
    for o in args.overrides:
        target = split_override(o)[0]
        if target is not None and target not in names:
            raise ValueError(f"override {o!r}: {target!r} is not one of --datasets ({', '.join(names)})")
    jobs = []
    for name, config in datasets:
        if not os.path.isfile(config):
            raise ValueError(f"--datasets {name}: config {config!r} does not exist")
        mine = [kv for target, kv in map(split_override, args.overrides) if target in (None, name)]
        out = work / name
        bench = [f"train.out_dir={out}", "train.val_every_n_steps=0", "train.progress_bar=false",
                 "train.checkpoint_every_n_steps=100000000"]
        bench += [f"train.max_minutes={args.minutes}"] if args.minutes else []
        bench += [f"train.max_steps={args.steps}"] if args.steps else []
        cfg = load_ae_config(config, mine + bench)
        if not cfg.data.val_shards:
            raise ValueError(f"--datasets {name}: data.val_shards is not set; expected held-out shards to measure on")
        jobs.append(Job(name, str(Path(config).resolve()), mine + bench, cfg, out, {"dataset": name}))
    return jobs


def train_all(jobs: list[Job], gpus: list[Optional[int]], work: Path) -> None:
    """Run ``scd-msc train-ae`` for every job, at most one per GPU at a time; fills
    ``status`` and ``train_minutes`` (wall time of the process: start-up and compile included)."""
    pending, running = list(jobs), {}
    while pending or running:
        for gpu in [g for g in gpus if g not in running]:
            if not pending:
                break
            job = pending.pop(0)
            env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": str(gpu)} if gpu is not None else {}))
            cmd = [sys.executable, "-m", "scd_msc", "train-ae", "--config", job.config, *job.overrides]
            print(f"[{job.name}] {'GPU ' + str(gpu) if gpu is not None else 'CPU'}: {' '.join(cmd[2:])}", flush=True)
            log = open(work / f"{job.name}.log", "w")
            running[gpu] = (job, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env),
                            time.perf_counter(), log)
        time.sleep(0.2)
        for gpu, (job, proc, start, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[gpu]
            job.row["train_minutes"] = (time.perf_counter() - start) / 60
            job.row["status"] = "ok" if proc.returncode == 0 else f"train-ae exited with {proc.returncode}"
            if proc.returncode != 0:
                tail = (work / f"{job.name}.log").read_text()[-3000:]
                print(f"[{job.name}] scd-msc train-ae exited with {proc.returncode}; log tail:\n{tail}", flush=True)


def measure(job: Job, args: argparse.Namespace, device: Any, png: Path) -> None:
    """Load the job's ``last.ckpt`` and fill its row (quality, latency, cost); write ``png``."""
    import torch

    from scd_msc.checkpoint import load_autoencoder
    from scd_msc.media import save_png
    from tools.bench.autoencoder import comparison_strip, decode_timing, decoder_cost, held_out_frames, \
        quality, reconstruct

    ckpt = job.out / "checkpoints" / "last.ckpt"
    loaded = load_autoencoder(str(ckpt), map_location=device, weights=args.weights)
    ae, m = loaded.model.to(device), loaded.config.model  # load_autoencoder builds it on the CPU
    frames = held_out_frames(job.cfg, args.eval_frames)  # (N, C, H, W)
    latents, recon = reconstruct(ae, frames, device)
    psnr, ssim = quality(recon, frames)
    timing = decode_timing(loaded, latents, frames, device, args.decode_iters)
    stats = json.loads((job.out / "timing.json").read_text()) if (job.out / "timing.json").is_file() else {}
    job.row.update(
        factor=m.factor, channels=m.latent_channels, compression=m.compression(),
        psnr=psnr, ssim=ssim, **timing,
        decode_ms_per_frame=timing["decode_ms_fast"] if timing["decode_ms_fast"] is not None
        else timing["decode_ms_eager"],
        **decoder_cost(ae, tuple(latents.shape[1:])),
        train_steps=int(torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)["global_step"]),
        frames_per_s=stats.get("samples_per_s"), eval_frames=frames.shape[0], weights=loaded.weights.weights,
        image_size=frames.shape[-1], config=os.path.relpath(job.config, ROOT))
    save_png(comparison_strip(frames, recon), png)


def checks_of(rows: list[dict[str, Any]]) -> list[str]:
    """One line per dataset and bar."""
    lines = []
    for r in rows:
        if r.get("psnr") is None:
            lines.append(f"- {r['dataset']}: not measured ({r.get('status')})")
            continue
        lines.append(f"- {r['dataset']}: PSNR **{fmt(r['psnr'])} dB** (bar >= {PSNR_BAR:g}) at "
                     f"{fmt(r['compression'])}x compression (bar >= {COMPRESSION_BAR:g}) after "
                     f"{fmt(r['train_minutes'])} min of train-ae (bar <= {MINUTES_BAR:g}): "
                     f"{check(min(r['psnr'] - PSNR_BAR, r['compression'] - COMPRESSION_BAR, MINUTES_BAR - r['train_minutes']), '>=', 0)}")
        path = "fast path" if r.get("decode_ms_fast") is not None else "eager (no CUDA: no fast path)"
        lines.append(f"- {r['dataset']}: decode **{fmt(r['decode_ms_per_frame'])} ms**/frame at batch 1, {path} "
                     f"(bar <= {DECODE_MS_BAR:g}): {check(r['decode_ms_per_frame'], '<=', DECODE_MS_BAR)}")
    return lines


def write(jobs: list[Job], args: argparse.Namespace, command: str, device: Any, stem: Path) -> Path:
    rows = [j.row for j in jobs]
    checks = checks_of(rows)
    images = "\n".join(f"![{r['dataset']}]({stem.name}_{r['dataset']}.png)" for r in rows if r.get("psnr") is not None)
    notes = ("Quality: mean per-frame PSNR / SSIM (torchmetrics, frames in [0, 1], as `scd-msc eval`) of the "
             "EMA weights on the first `eval_frames` held-out frames, fp32. `psnr_fast`: the same frames "
             "decoded one by one through the fast path. Decode: batch 1, median of CUDA-event timings "
             "after warm-up; eager = fp32 `decode`; fast = the decoder of generate/eval/play "
             "(`AutoencoderCodec`: `decode` compiled and replayed from a CUDA graph, compile time `compile_s` "
             "apart). `train_minutes`: wall time of the "
             "`scd-msc train-ae` process, start-up and compile included.")
    config = {"datasets": args.datasets, "minutes": args.minutes, "steps": args.steps, "eval_frames": args.eval_frames,
              "weights": args.weights, "overrides": args.overrides,
              **{f"{j.name}.train_overrides": " ".join(j.overrides) for j in jobs}}
    md, js = write_report(stem, "Frame autoencoder: held-out reconstruction and decode latency", command, config,
                          rows, extra_md="## Checks\n\n" + "\n".join(checks) + "\n\n" + notes + "\n\n" + images,
                          data_json={"checks": checks, "bars": {"psnr_db": PSNR_BAR, "compression": COMPRESSION_BAR,
                                                                "train_minutes": MINUTES_BAR,
                                                                "decode_ms_per_frame": DECODE_MS_BAR}},
                          columns=COLUMNS, env=env_info(device))
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_autoencoder", description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", required=True, metavar="NAME[=CONFIG]",
                   help="datasets to train and measure: NAME reads configs/ae_NAME.yaml")
    p.add_argument("--minutes", type=float, default=None, help="training time per dataset (train.max_minutes)")
    p.add_argument("--steps", type=int, default=None, help="training steps per dataset (train.max_steps)")
    p.add_argument("--gpus", type=int, nargs="*", default=None,
                   help="GPU ids to train on, one dataset per GPU at a time (default: every visible GPU)")
    p.add_argument("--eval-frames", type=int, default=1024, help="held-out frames measured (default 1024)")
    p.add_argument("--decode-iters", type=int, default=200, help="timed batch-1 decodes (default 200)")
    p.add_argument("--weights", default="ema", choices=["ema", "trained", "auto"], help="weights measured (default ema)")
    p.add_argument("--what", default="autoencoder", help="report name: benchmarks/<what>_<gpu>_<date>")
    p.add_argument("--out", default=str(ROOT / "benchmarks"), help="report folder (default benchmarks/)")
    p.add_argument("--work", default=None, help="folder for the runs and their logs (default: a temp folder)")
    p.add_argument("overrides", nargs="*", metavar="[name:]key=value", help="config overrides")
    args = p.parse_args(argv)
    command = command_line(__spec__.name if __spec__ else "tools.bench_autoencoder", argv)
    import torch

    try:
        if args.minutes is None and args.steps is None:
            raise ValueError("--minutes and --steps are both unset: expected a training budget (one or both)")
        if args.minutes is not None:
            number("--minutes", args.minutes, low=0, low_open=True)
        if args.steps is not None:
            positive_int("--steps", args.steps)
        for name in ("eval_frames", "decode_iters"):
            positive_int(f"--{name.replace('_', '-')}", getattr(args, name))
        cuda = torch.cuda.is_available()
        gpus: list[Optional[int]] = list(range(torch.cuda.device_count())) if args.gpus is None and cuda \
            else list(args.gpus or [])
        for g in gpus:
            non_negative_int("--gpus", g)
            if not cuda or g >= torch.cuda.device_count():
                raise ValueError(f"--gpus={args.gpus}: only {torch.cuda.device_count()} GPU(s) visible")
        work = Path(args.work or tempfile.mkdtemp(prefix="bench_autoencoder_"))
        jobs = build_jobs(args, work)
    except ValueError as err:
        p.error(str(err))
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True  # the fastest conv algorithms for the decode shapes
    stem = report_stem(args.out, args.what, device)
    stem.parent.mkdir(parents=True, exist_ok=True)
    train_all(jobs, gpus or [None], work)
    for job in jobs:
        if job.row["status"] == "ok":
            try:
                measure(job, args, device, Path(f"{stem}_{job.name}.png"))
            except Exception as err:  # one dataset failing must not lose the others' numbers
                job.row["status"] = f"measure failed: {type(err).__name__}: {err}"[:300]
        md = write(jobs, args, command, device, stem)
    print("\n".join(checks_of([j.row for j in jobs])))
    print(f"wrote {md} and {md.with_suffix('.json')}; runs and logs in {work}")
    return 0 if all(j.row.get("status") == "ok" for j in jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
