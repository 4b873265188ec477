"""Per-frame latency of SCD-MSC vs SCD-dense vs the causal DiT, and training
throughput, at matched parameters (one run, side by side).

Run from the repository root::

    python -m tools.bench_latency                 # GPU, ~3 minutes on an H100
    python -m tools.bench_latency --device cpu --size tiny --steps 2 --context 2 --batch 1 \
        --frames 2 --warmup 1 --curve-frames 3 --train-batch 1 --train-frames 2 \
        --train-iters 1 --train-warmup 1 --out /tmp/bench   # CPU smoke run, seconds

Per model and batch size: a session is primed with a ``context``-frame prompt, a few
frames are made untimed (warm-up; CUDA-graph capture when on), then every frame is
timed with CUDA events in two parts: the denoising loop (``S`` steps) and the commit
(SCD: one encoder pass; DiT: one pass at t=0 writing the KV cache). End to end =
both. A second run of SCD-MSC from an empty cache out to ``curve_frames`` gives latency
and memory against frame index. The training step (forward + backward + the optimizer
step of ``scd-msc train``: ``scd_msc.training.optim.build_optimizer``) is timed per
model on clips of ``train_frames`` frames. Needs CUDA; ``--device cpu`` runs the same
code on a CPU (fp32) as a smoke test, not a measurement.

Shapes: ``B`` batch · ``F`` frames · ``C`` channels · ``H, W`` pixels · ``S`` steps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from scd_msc.checks import choice, positive_int, positive_ints
from scd_msc.config import TrainConfig
from scd_msc.diffusion import Sampler
from scd_msc.models import SIZES, build_model, count_parameters
from scd_msc.media import check_writable_folder
from scd_msc.streaming import StreamingSession
from scd_msc.training.optim import build_optimizer
from tools.bench.report import command_line, report_stem, write_report
from tools.bench.timing import peak_memory_gib, reset_peak_memory, summarize_ms, sync

ENTRY = "tools.bench_latency"  # the module users run: python -m tools.bench_latency
PROG = f"python -m {ENTRY}"

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def make_model(name: str, args: argparse.Namespace, device: str) -> torch.nn.Module:
    """Dense models attend the last ``context`` frames, as many as the prompt holds."""
    over = {} if name.startswith("scd-msc") else {"dense_window_frames": args.context + 1}
    model = build_model(name, **over)
    return model.to(device=device, dtype=DTYPES[args.dtype]).eval()


def _events(n: int) -> list[torch.cuda.Event]:
    return [torch.cuda.Event(enable_timing=True) for _ in range(n)]


def time_frames(session: StreamingSession, frames: int, device: str) -> tuple[list[float], list[float]]:
    """Per frame: (denoise ms, end-to-end ms)."""
    den, e2e = [], []
    for _ in range(frames):
        if device == "cuda":
            a, b, c = _events(3)
            a.record()
            x = session.denoise()
            b.record()
            session.commit(x)
            c.record()
            torch.cuda.synchronize()
            den.append(a.elapsed_time(b))
            e2e.append(a.elapsed_time(c))
        else:
            t0 = time.perf_counter()
            x = session.denoise()
            t1 = time.perf_counter()
            session.commit(x)
            t2 = time.perf_counter()
            den.append((t1 - t0) * 1e3)
            e2e.append((t2 - t0) * 1e3)
    return den, e2e


@torch.no_grad()
def bench_inference(name: str, batch: int, args: argparse.Namespace, device: str,
                    graphs: bool) -> dict[str, Any]:
    model = make_model(name, args, device)
    cfg = model.cfg
    g = torch.Generator(device=device).manual_seed(0)
    prompt = torch.randn(batch, args.context, cfg.channels, cfg.image_size, cfg.image_size,
                         device=device, dtype=DTYPES[args.dtype], generator=g)
    reset_peak_memory(device)
    session = model.stream(batch, args.steps, prompt=prompt, generator=g)
    if graphs:
        session.use_cuda_graphs()
    time_frames(session, args.warmup, device)  # warm-up (and graph capture), untimed
    den, e2e = time_frames(session, args.frames, device)
    d, e = summarize_ms(den), summarize_ms(e2e)
    return {"model": name, "graphs": graphs, "batch": batch, "steps": args.steps,
            "denoise_ms": d["median_ms"], "denoise_p90_ms": d["p90_ms"],
            "e2e_ms": e["median_ms"], "e2e_p90_ms": e["p90_ms"],
            "frames_per_s": 1e3 * batch / e["median_ms"],
            "peak_gib": peak_memory_gib(device), "cache_mib": session.cache_bytes() / 2**20,
            "params_m": count_parameters(model) / 1e6}


@torch.no_grad()
def graph_check(name: str, args: argparse.Namespace, device: str, frames: int = 3) -> float:
    """Max |graphed − eager| over ``frames`` frames made after capture, same seeds."""
    model = make_model(name, args, device)
    cfg = model.cfg
    outs = []
    for graphs in (False, True):
        g = torch.Generator(device=device).manual_seed(2)
        prompt = torch.randn(1, args.context, cfg.channels, cfg.image_size, cfg.image_size,
                             device=device, dtype=DTYPES[args.dtype], generator=g)
        session = model.stream(1, args.steps, prompt=prompt, generator=g)
        if graphs:
            session.use_cuda_graphs()
        outs.append(torch.stack([session.step() for _ in range(args.warmup + frames)])[-frames:])
    return (outs[0].float() - outs[1].float()).abs().max().item()


@torch.no_grad()
def latency_curve(name: str, args: argparse.Namespace, device: str, graphs: bool) -> dict[str, Any]:
    """End-to-end latency, cache bytes and peak memory per frame index, empty cache."""
    model = make_model(name, args, device)
    session = model.stream(1, args.steps, generator=torch.Generator(device=device).manual_seed(1))
    if graphs:
        session.use_cuda_graphs()
    reset_peak_memory(device)
    ms, cache, peak = [], [], []
    for _ in range(args.curve_frames):
        _, e2e = time_frames(session, 1, device)
        ms.append(e2e[0])
        cache.append(session.cache_bytes())
        peak.append(peak_memory_gib(device))
    return {"model": name, "graphs": graphs, "ms": ms, "cache_bytes": cache, "peak_gib": peak}


def window_median(values: list[float], at: int, half: int = 4) -> float:
    """Median around frame ``at`` (1-based) to damp single-frame noise."""
    lo, hi = max(0, at - 1 - half), min(len(values), at + half)
    return statistics.median(values[lo:hi])


def bench_training(name: str, args: argparse.Namespace, device: str) -> dict[str, Any]:
    """One training step as ``scd-msc train`` runs it (bf16 autocast on CUDA, the
    training optimizer and warm-up schedule), timed after ``train_warmup`` steps."""
    model = build_model(name).to(device).train()
    cfg = model.cfg
    opt, schedule = build_optimizer(model, TrainConfig())
    video = torch.rand(args.train_batch, args.train_frames, cfg.channels, cfg.image_size,
                       cfg.image_size, device=device) * 2 - 1
    amp = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def step() -> None:
        with amp:
            loss = model.training_loss(video)["loss"]
        loss.backward()
        opt.step()
        schedule.step()
        opt.zero_grad(set_to_none=True)

    reset_peak_memory(device)
    for _ in range(args.train_warmup):
        step()
    sync(device)
    times = []
    for _ in range(args.train_iters):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    t = summarize_ms(times)
    return {"model": name, "batch": args.train_batch, "frames": args.train_frames,
            "step_ms": t["median_ms"], "samples_per_s": 1e3 * args.train_batch / t["median_ms"],
            "peak_gib": peak_memory_gib(device)}


def plot_curve(curves: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for c in curves:
        ax.plot(range(1, len(c["ms"]) + 1), c["ms"], lw=0.8,
                label=f"{c['model']}{' (CUDA graphs)' if c['graphs'] else ''}")
    ax.set_xlabel("frame index")
    ax.set_ylabel("end-to-end ms / frame")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default="small", help="preset size of all three families")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--context", type=int, default=64, help="prompt frames before timing")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--frames", type=int, default=16, help="timed frames per case")
    p.add_argument("--warmup", type=int, default=3, help="untimed frames per case")
    p.add_argument("--curve-frames", type=int, default=512)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--no-graphs", action="store_true", help="skip the CUDA-graph SCD rows")
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-frames", type=int, default=16)
    p.add_argument("--train-iters", type=int, default=10)
    p.add_argument("--train-warmup", type=int, default=3)
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="cuda (the default; required for the numbers) or cpu (a smoke run)")


def check_args(args: argparse.Namespace) -> str:
    """The device to time on, or a ValueError naming the argument, its value and what
    was expected. The numbers need CUDA; a CPU runs only when asked for (``--device cpu``)."""
    for name in ("steps", "context", "frames", "curve_frames", "train_batch", "train_frames",
                 "train_iters"):
        positive_int(f"--{name.replace('_', '-')}", getattr(args, name))
    positive_ints("--batch", args.batch)
    choice("--size", args.size, SIZES)
    check_writable_folder(args.out, "--out")
    if args.device != "cpu" and not torch.cuda.is_available():
        raise ValueError(f"no CUDA GPU (torch {torch.__version__} sees none): the latency benchmark "
                         "times GPU inference; --device cpu runs it on this CPU as a smoke test")
    return args.device or "cuda"


def run_bench(args: argparse.Namespace, device: str) -> int:
    if device == "cpu" and args.dtype != "fp32":
        args.dtype = "fp32"  # bf16 matmuls on CPU measure nothing useful
    names = [f"{f}-{args.size}" for f in ("scd-msc", "scd-dense", "causal-dit")]
    graphs = [False] + ([True] if device == "cuda" and not args.no_graphs else [])
    rows = []
    for batch in args.batch:
        for name in names:
            for gr in graphs:
                rows.append(bench_inference(name, batch, args, device, gr))
                print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    checks = {n: graph_check(n, args, device) for n in names} if True in graphs else {}
    print("graphed vs eager max |diff|:", checks, flush=True)
    curves = [latency_curve(names[0], args, device, graphs[-1])]  # graphed when on CUDA
    train = [bench_training(n, args, device) for n in (names[0], names[2])]
    return write_latency_report(args, device, names, rows, curves, train, checks)


def write_latency_report(args, device, names, rows, curves, train, checks) -> int:
    def pick(name, graphs=False, batch=None):
        batch = args.batch[0] if batch is None else batch
        return next(r for r in rows if r["model"] == name and r["graphs"] == graphs and r["batch"] == batch)

    best = curves[-1]
    at32, atn = window_median(best["ms"], min(32, len(best["ms"]))), window_median(best["ms"], len(best["ms"]))
    scd, dense, dit = (pick(n)["e2e_ms"] for n in names)
    graphed = curves[-1]["graphs"]
    gscd, gdense, gdit = (pick(n, graphs=True)["e2e_ms"] if graphed else None for n in names)
    model0 = build_model(names[0])
    data = {
        "scd_msc_ms_per_frame": gscd or scd, "scd_dense_ms_per_frame": gdense or dense,
        "causal_dit_ms_per_frame": gdit or dit, "cuda_graphs": graphed,
        "eager_ms_per_frame": {"scd_msc": scd, "scd_dense": dense, "causal_dit": dit},
        "speedup_vs_causal_dit": (gdit or dit) / (gscd or scd), "speedup_vs_causal_dit_eager": dit / scd,
        "graphed_vs_eager_max_abs_diff": checks,
        "scd_msc_growth_32_to_512": (atn - at32) / at32,
        "scd_msc_peak_gib_32": best["peak_gib"][min(31, len(best["peak_gib"]) - 1)],
        "scd_msc_peak_gib_last": best["peak_gib"][-1],
        "scd_msc_cache_bytes_32": best["cache_bytes"][min(31, len(best["cache_bytes"]) - 1)],
        "scd_msc_cache_bytes_last": best["cache_bytes"][-1],
        "train_samples_per_s": {t["model"]: t["samples_per_s"] for t in train},
        "train_speedup": train[0]["samples_per_s"] / train[1]["samples_per_s"],
        "curves": curves, "train": train,
    }
    config = {"presets": names, "tokens_per_frame": model0.cfg.grid ** 2,
              "image": f"{model0.cfg.channels}x{model0.cfg.image_size}x{model0.cfg.image_size}",
              "context_frames": args.context, "steps": args.steps, "sampler": Sampler().config.name,
              "dtype": args.dtype, "batches": args.batch, "timed_frames": args.frames,
              "warmup_frames": args.warmup, "curve_frames": args.curve_frames,
              "params_m": {r["model"]: round(r["params_m"], 2) for r in rows if r["batch"] == args.batch[0]},
              "train": f"batch {args.train_batch} × {args.train_frames} frames, bf16 autocast, "
                       "AdamW of scd-msc train (build_optimizer)",
              "dense_attention_window": args.context + 1}
    stem = report_stem(args.out, "latency", device)
    plot = stem.with_name(stem.name + ".png")
    plot.parent.mkdir(parents=True, exist_ok=True)
    plot_curve(curves, plot)
    cols = ["model", "graphs", "batch", "denoise_ms", "denoise_p90_ms", "e2e_ms", "e2e_p90_ms",
            "frames_per_s", "peak_gib", "cache_mib", "params_m"]
    mode = "CUDA graphs (all three models)" if graphed else "eager"
    extra = "\n".join([
        "## Summary (batch 1, end to end, steady-state median; warm-up and graph capture excluded)", "",
        f"- {mode}: SCD-MSC {gscd or scd:.1f}, SCD-dense {gdense or dense:.1f}, causal DiT {gdit or dit:.1f} ms/frame"
        f" → SCD-MSC {data['speedup_vs_causal_dit']:.2f}× faster than the causal DiT",
        f"- eager: SCD-MSC {scd:.1f}, SCD-dense {dense:.1f}, causal DiT {dit:.1f} ms/frame ({dit / scd:.2f}×)",
        f"- graphed vs eager frames, max |diff|: {checks}",
        f"- SCD-MSC latency frame 32 → {len(best['ms'])}: {at32:.1f} → {atn:.1f} ms ({100 * (atn - at32) / at32:+.1f}%); "
        f"cache {data['scd_msc_cache_bytes_32'] / 2**20:.2f} → {data['scd_msc_cache_bytes_last'] / 2**20:.2f} MiB; "
        f"peak memory {data['scd_msc_peak_gib_32']} → {data['scd_msc_peak_gib_last']} GiB",
        "- training: " + ", ".join(f"{t['model']} {t['samples_per_s']:.2f} clips/s ({t['step_ms']:.0f} ms/step, "
                                    f"peak {t['peak_gib']} GiB)" for t in train)
        + f"; ratio {data['train_speedup']:.2f}×",
        f"- plot: `{plot.name}`", ""])
    write_report(stem, "Per-frame latency: SCD-MSC vs SCD-dense vs causal DiT", args.command, config,
                 rows, extra, data, columns=cols)
    print(extra)
    print(f"wrote {stem}.md, .json and {plot.name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_bench_arguments(parser)
    args = parser.parse_args(argv)
    args.command = command_line(ENTRY, argv)
    try:
        device = check_args(args)
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    try:
        return run_bench(args, device)
    except torch.OutOfMemoryError as err:
        print(f"{PROG}: error: --size={args.size!r} ran out of memory on {device} "
              f"({str(err).strip().splitlines()[0][:200]}); try a smaller --size, --batch or --context",
              file=sys.stderr)
        return 1
