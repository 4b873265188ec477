"""What the latency benchmark measures beside its timed frames: kernels launched per
decoder call (per DiT pass), and ``scd-msc generate``'s own steady-state latency.

Kernels are counted with ``torch.profiler`` over one denoising loop of a session whose
caches are full, divided by its ``S`` steps (the sampler's own update adds 1–2 small
kernels per step). ``compiled`` is the fast path without CUDA graphs, so that each
kernel is seen: graph replay launches the same kernels at once.

Shapes: ``B`` batch · ``S`` steps.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import torch
from torch.profiler import DeviceType, ProfilerActivity, profile


@torch.no_grad()
def count_kernels(model: torch.nn.Module, args: argparse.Namespace, device: str,
                  modes: list[str]) -> dict[str, float]:
    """``{"eager": k, "compiled": k}``: CUDA kernels per denoising step at batch 1."""
    from tools.bench.latency import DTYPES, time_frames

    cfg = model.cfg
    out: dict[str, float] = {}
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
        out[mode] = sum(e.device_type == DeviceType.CUDA for e in prof.events()) / args.steps
    return out


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
