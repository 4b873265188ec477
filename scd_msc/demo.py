"""``scd-msc demo``: build one MSC layer, run it on every backend, print what ran.

Shows which attention backends this machine can use (and why the others were
refused), checks each against the reference, and times the forward pass.
"""

from __future__ import annotations

import time

import torch

from scd_msc.models import seeded_init
from scd_msc.ops import explain_backends, hires_spec
from scd_msc.ops.backends import BACKENDS, BackendUnavailableError
from scd_msc.ops.msc import MSCAttention, MSCAttentionConfig
from scd_msc.ops.schedule import MSCLayerSpec


def _time(fn, repeats: int) -> float:
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e3


def run_demo(frames: int = 8, grid: int = 16, dim: int = 128, heads: int = 4,
             device: str | None = None, repeats: int = 3) -> int:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    spec = MSCLayerSpec(down=2, window=5, frames=3, stride=2, strided_frames=4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, frames, grid, grid, dim, generator=g).to(device)
    t = torch.rand(1, frames, generator=g).to(device)
    fi = torch.arange(frames, device=device)
    print(f"MSC layer: D={dim}, heads={heads} (half hi-res, half low-res), {spec}")
    print(f"input: {frames} frames of {grid}×{grid} tokens on {device}\n")
    probe = torch.zeros(1, frames, grid, grid, heads // 2, dim // heads, device=device)
    for name, reason in explain_backends(probe, probe, hires_spec(5, 3, True)).items():
        print(f"  auto {'would use' if reason is None else 'refuses'} {name:9s} {reason or ''}")
    print()
    with seeded_init(0):  # the same layer every run; the caller's RNG untouched
        layer = MSCAttention(MSCAttentionConfig(dim=dim, heads=heads, backend="reference"), spec).to(device)
    with torch.no_grad():
        ref = layer(x, t, fi)
        print(f"  {'backend':10s} {'ms/forward':>10s} {'max |diff| vs reference':>24s}")
        for name in BACKENDS + ("auto",):
            layer.cfg.backend = name
            try:
                out = layer(x, t, fi)
                ms = _time(lambda: layer(x, t, fi), repeats)
            except BackendUnavailableError as err:
                print(f"  {name:10s} {'-':>10s}   not run: {err}")
                continue
            print(f"  {name:10s} {ms:10.1f} {(out - ref).abs().max().item():24.2e}")
    return 0
