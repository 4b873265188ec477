"""What the latency benchmark measures beside its timed frames: kernels launched per
decoder call (per DiT pass), and ``scd-msc generate``'s own steady-state latency.

Kernels are counted with ``torch.profiler`` over one denoising loop of a session whose
caches are full, divided by its ``S`` steps (the sampler's own update adds 1–2 small
kernels per step). ``compiled`` is the fast path without CUDA graphs, so that each
kernel is seen: graph replay launches the same kernels at once. The kernels' summed
device time per step and the slowest kernels are kept beside the counts.

Shapes: ``B`` batch · ``S`` steps.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Optional

import torch
from torch.profiler import DeviceType, ProfilerActivity, profile


def kernel_time(events: Iterable, steps: int, top: int = 10) -> dict:
    """Of the CUDA kernels of ``steps`` denoising steps: how many per step, their summed
    device time per step (µs; against the step's wall time it says how launch-bound the
    step is) and the ``top`` kernels by device time (name, calls and µs per step)."""
    per: dict[str, list[float]] = {}
    for e in events:
        if e.device_type == DeviceType.CUDA:
            per.setdefault(e.name, []).append(e.time_range.elapsed_us())
    rows = sorted(((name, len(us), sum(us)) for name, us in per.items()), key=lambda r: -r[2])
    return {"kernels_per_step": sum(r[1] for r in rows) / steps, "kernel_us_per_step": sum(r[2] for r in rows) / steps,
            "top": [{"kernel": name[:120], "calls_per_step": n / steps, "us_per_step": us / steps}
                    for name, n, us in rows[:top]]}


def profile_calls(fn: Callable[[], object], calls: int, warmup: int, top: int) -> dict:
    """:func:`kernel_time` of ``calls`` calls of ``fn()`` (one "step" each) on the current
    CUDA device, after ``warmup`` calls that are not profiled."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return kernel_time(prof.events(), calls, top)


@torch.no_grad()
def count_kernels(model: torch.nn.Module, args: argparse.Namespace, device: str,
                  modes: list[str]) -> dict[str, dict]:
    """``{"eager": t, "compiled": t}``: the CUDA kernels of a denoising step at batch 1
    (:func:`kernel_time`: count, device time, the slowest)."""
    from tools.bench.latency import DTYPES, time_frames

    cfg = model.cfg
    times: dict[str, dict] = {}
    for mode in ["eager"] + (["compiled"] if "fast" in modes else []):
        g = torch.Generator(device=device).manual_seed(3)
        prompt = torch.randn(1, args.context, cfg.channels, cfg.image_size, cfg.image_size,
                             device=device, dtype=DTYPES[args.dtype], generator=g)
        session = model.stream(1, args.steps, prompt=prompt, generator=g, compile=mode == "compiled")
        session.graphs = False  # count each kernel: no replay
        time_frames(session, args.warmup, device)  # fill the caches, compile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            session.denoise()
            torch.cuda.synchronize(device)
        times[mode] = kernel_time(prof.events(), args.steps, args.kernel_top)
    return times


def generate_cli_ms(args: argparse.Namespace, device: str) -> Optional[dict]:
    """``scd-msc generate`` on SCD-MSC of ``--size`` at batch 1 and ``--steps`` (random
    weights, no prompt: its caches fill as it goes): the report it writes, whose steady
    state leaves out the frames that compiled and captured. None on a CPU."""
    if device != "cuda":
        return None
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "generate.json"
        cmd = [sys.executable, "-m", "scd_msc", "generate", "--preset", f"scd-msc-{args.size}",
               "--frames", str(args.cli_frames), "--steps", str(args.steps), "--batch", "1",
               "--out", str(Path(tmp) / "generate.gif"), "--report", str(report), "--no-progress"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"scd-msc generate failed ({proc.returncode}): {proc.stderr[-2000:]}", file=sys.stderr)
            return None
        data = json.loads(report.read_text())
    data["command"] = " ".join(["scd-msc"] + cmd[3:])
    return data
