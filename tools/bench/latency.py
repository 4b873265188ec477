"""Per-frame latency of SCD-MSC vs SCD-dense vs the causal DiT, and training
throughput, at matched parameters (one run, side by side).

Run from the repository root::

    python -m tools.bench_latency                 # GPU, ~3 minutes on an H100
    python -m tools.bench_latency --device cpu --size tiny --steps 2 --context 2 --batch 1 \
        --frames 2 --warmup 1 --curve-frames 3 --train-batch 1 --train-frames 2 \
        --train-iters 1 --train-warmup 1 --out /tmp/bench   # CPU smoke run, seconds

Per model, mode and batch size: a session is primed with a ``context``-frame prompt, a
few frames are made untimed (warm-up: compile and CUDA-graph capture when on), then
every frame is timed with CUDA events in two parts: the denoising loop (``S`` steps) and
the commit (SCD: one encoder pass; DiT: one pass at t=0 writing the KV cache). End to
end = both. Modes (``--modes``), the same for every family: ``eager``; ``graphs`` (the
eager calls replayed from CUDA graphs); ``fast`` — what ``model.stream`` and ``scd-msc
generate`` run by default on CUDA: compiled once per model and graph-replayed.
``--prefix`` adds the SCD models with ``decoder_context='prefix'``; ``--families`` times
a subset (the figures and ratios of the others are left empty, not guessed). A second run of
SCD-MSC from an empty cache out to ``curve_frames`` gives latency and memory against
frame index; ``scd-msc generate`` itself is timed on the same preset (its own
steady-state report); kernels per decoder call (per DiT pass) are counted with the
profiler. The training step (forward + backward + the optimizer step of ``scd-msc
train``: ``scd_msc.training.optim.build_optimizer``) is timed per model on clips of
``train_frames`` frames. Needs CUDA; ``--device cpu`` runs the same code on a CPU (fp32)
as a smoke test, not a measurement.

Shapes: ``B`` batch · ``F`` frames · ``C`` channels · ``H, W`` pixels · ``S`` steps.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

from scd_msc.checks import choice, non_negative_int, positive_int, positive_ints
from scd_msc.config import TrainConfig
from scd_msc.models import SIZES, build_model, count_parameters, randomize_zero_init
from scd_msc.media import check_writable_folder
from scd_msc.streaming import StreamingSession
from scd_msc.training.optim import build_optimizer
from tools.bench.kernels import count_kernels, generate_cli_ms
from tools.bench.latency_report import write_latency_report
from tools.bench.report import command_line
from tools.bench.timing import peak_memory_gib, reset_peak_memory, summarize_ms, sync

ENTRY = "tools.bench_latency"  # the module users run: python -m tools.bench_latency
PROG = f"python -m {ENTRY}"

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


MODES = ("eager", "graphs", "fast")
FAMILIES = ("scd-msc", "scd-dense", "causal-dit")
PREFIX = "+prefix"  # a case name suffix: the SCD model with decoder_context='prefix'


def make_model(name: str, args: argparse.Namespace, device: str) -> torch.nn.Module:
    """``name``: a preset, optionally with :data:`PREFIX`. Dense models attend the last
    ``context`` frames, as many as the prompt holds. Zero-initialised layers are drawn
    (:func:`randomize_zero_init`): a fresh adaLN-zero model returns its starting noise, on
    which the modes-vs-eager check would compare nothing (the time is the same either way)."""
    preset, prefix = name.removesuffix(PREFIX), name.endswith(PREFIX)
    over = {} if preset.startswith("scd-msc") else {"dense_window_frames": args.context + 1}
    model = build_model(preset, **over, **({"decoder_context": "prefix"} if prefix else {}))
    randomize_zero_init(model)
    return model.to(device=device, dtype=DTYPES[args.dtype]).eval()


def open_session(model: torch.nn.Module, batch: int, args: argparse.Namespace, mode: str,
                 generator: torch.Generator, prompt: torch.Tensor | None = None) -> StreamingSession:
    """A session of ``mode``: eager, eager calls replayed from CUDA graphs, or the
    default fast path (compiled, graph-replayed)."""
    session = model.stream(batch, args.steps, prompt=prompt, generator=generator,
                           compile=None if mode == "fast" else False)
    return session.use_cuda_graphs() if mode == "graphs" else session


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
def bench_inference(name: str, batch: int, args: argparse.Namespace, device: str, mode: str,
                    model: torch.nn.Module) -> dict[str, Any]:
    cfg = model.cfg
    g = torch.Generator(device=device).manual_seed(0)
    prompt = torch.randn(batch, args.context, cfg.channels, cfg.image_size, cfg.image_size,
                         device=device, dtype=DTYPES[args.dtype], generator=g)
    reset_peak_memory(device)
    session = open_session(model, batch, args, mode, g, prompt)
    start = time.perf_counter()
    time_frames(session, args.warmup, device)  # warm-up (compile, graph capture), untimed
    warm_s = time.perf_counter() - start
    den, e2e = time_frames(session, args.frames, device)
    d, e = summarize_ms(den), summarize_ms(e2e)
    return {"model": name, "mode": mode, "batch": batch, "steps": args.steps,
            "setup_s": round(getattr(session, "setup_seconds", 0.0), 2), "warmup_s": round(warm_s, 2),
            "denoise_ms": d["median_ms"], "denoise_p90_ms": d["p90_ms"],
            "e2e_ms": e["median_ms"], "e2e_p90_ms": e["p90_ms"],
            "frames_per_s": 1e3 * batch / e["median_ms"],
            "peak_gib": peak_memory_gib(device), "cache_mib": session.cache_bytes() / 2**20,
            "params_m": count_parameters(model) / 1e6}


@torch.no_grad()
def mode_check(model: torch.nn.Module, args: argparse.Namespace, device: str, mode: str,
               frames: int = 3) -> float:
    """Max |``mode`` − eager| over ``frames`` frames made after warm-up, same seeds."""
    cfg = model.cfg
    outs = []
    for m in ("eager", mode):
        g = torch.Generator(device=device).manual_seed(2)
        prompt = torch.randn(1, args.context, cfg.channels, cfg.image_size, cfg.image_size,
                             device=device, dtype=DTYPES[args.dtype], generator=g)
        session = open_session(model, 1, args, m, g, prompt)
        outs.append(torch.stack([session.step() for _ in range(args.warmup + frames)])[-frames:])
    return (outs[0].float() - outs[1].float()).abs().max().item()


@torch.no_grad()
def latency_curve(name: str, args: argparse.Namespace, device: str, mode: str,
                  model: torch.nn.Module) -> dict[str, Any]:
    """End-to-end latency, cache bytes and peak memory per frame index, empty cache."""
    session = open_session(model, 1, args, mode, torch.Generator(device=device).manual_seed(1))
    reset_peak_memory(device)
    ms, cache, peak = [], [], []
    for _ in range(args.curve_frames):
        _, e2e = time_frames(session, 1, device)
        ms.append(e2e[0])
        cache.append(session.cache_bytes())
        peak.append(peak_memory_gib(device))
    return {"model": name, "mode": mode, "ms": ms, "cache_bytes": cache, "peak_gib": peak}


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


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default="small", help="preset size of all three families")
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES),
                   help="the families timed (default all three; the ratios need both sides)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--context", type=int, default=64, help="prompt frames before timing")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--frames", type=int, default=16, help="timed frames per case")
    p.add_argument("--warmup", type=int, default=3, help="untimed frames per case")
    p.add_argument("--curve-frames", type=int, default=512, help="SCD-MSC from an empty cache (0: no curve)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                   help="eager; graphs (eager calls replayed); fast (compiled + graphs: the default path)")
    p.add_argument("--prefix", action="store_true", help="also time the SCD models with decoder_context=prefix")
    p.add_argument("--cli-frames", type=int, default=48, help="frames scd-msc generate makes (its median "
                   "leaves out the frames that compiled and captured; 0: not run)")
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-frames", type=int, default=16)
    p.add_argument("--train-iters", type=int, default=10, help="timed training steps (0: no training rows)")
    p.add_argument("--train-warmup", type=int, default=3)
    p.add_argument("--kernel-top", type=int, default=10, help="slowest kernels of a denoising step kept "
                   "per case (decoder_kernel_time)")
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="cuda (the default; required for the numbers) or cpu (a smoke run)")


def check_args(args: argparse.Namespace) -> str:
    """The device to time on, or a ValueError naming the argument, its value and what
    was expected. The numbers need CUDA; a CPU runs only when asked for (``--device cpu``)."""
    for name in ("steps", "context", "frames", "train_batch", "train_frames"):
        positive_int(f"--{name.replace('_', '-')}", getattr(args, name))
    for name in ("curve_frames", "train_iters", "cli_frames", "kernel_top"):  # 0: that part is not run / kept
        non_negative_int(f"--{name.replace('_', '-')}", getattr(args, name))
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
    families = [f"{f}-{args.size}" for f in FAMILIES if f in args.families]
    names = families + ([f"{n}{PREFIX}" for n in families if n.startswith("scd-")] if args.prefix else [])
    modes = [m for m in args.modes if device == "cuda" or m == "eager"]  # graphs and inductor: CUDA
    rows: list[dict[str, Any]] = []
    checks: dict[str, float] = {}
    kernels: dict[str, dict[str, float]] = {}
    kernel_times: dict[str, dict[str, dict]] = {}
    for name in names:
        model = make_model(name, args, device)  # one per case: compiled once, reused by every session
        for batch in args.batch:
            for mode in modes:
                rows.append(bench_inference(name, batch, args, device, mode, model))
                print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
        checks.update({f"{name} {m}": mode_check(model, args, device, m) for m in modes if m != "eager"})
        if device == "cuda":
            kernel_times[name] = count_kernels(model, args, device, modes)
            kernels[name] = {m: t["kernels_per_step"] for m, t in kernel_times[name].items()}
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    print(f"{' / '.join(m for m in modes if m != 'eager') or '-'} vs eager, max |diff|:", checks, flush=True)
    msc = f"scd-msc-{args.size}"
    run_curve = msc in names and args.curve_frames > 0
    curves = [latency_curve(msc, args, device, modes[-1], make_model(msc, args, device))] if run_curve else []
    cli = generate_cli_ms(args, device) if msc in names and args.cli_frames > 0 else None
    trained = [n for n in (msc, f"causal-dit-{args.size}") if n in names]
    train = [bench_training(n, args, device) for n in trained] if args.train_iters > 0 else []
    return write_latency_report(args, device, names, modes, rows, curves, train, checks, kernels, cli,
                                kernel_times)


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
