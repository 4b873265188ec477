"""Probe: one causal query frame on NATTEN, na3d with the query padded to every key frame
against na2d over the key frames folded into the batch and merged (the backend's path).

Run on a GPU, from the repository root: ``python -m tools.probe_natten_one_frame --out DIR``.
Shapes are the hi-res branch of a ``prefix`` decoder step (2 frames) and of an encoder
commit (4 frames) at the small and base presets, batch 1, bf16, head dim 64. Per case:
CUDA kernels per call and their summed device time (``torch.profiler``, 20 calls, after
3 untimed ones), and the largest difference between the two outputs.
Writes ``natten_one_frame_<gpu>_<date>.md/.json``.
"""

import argparse
import sys

import torch
import torch.nn.functional as F

from scd_msc.ops.backends import natten_attention
from scd_msc.ops.masks import hires_spec
from tools.bench.kernels import profile_calls
from tools.bench.report import command_line, report_stem, write_report

CASES = [  # name, grid, heads, key frames, window
    ("small decoder step", 32, 3, 2, 7), ("small encoder commit", 32, 3, 4, 7),
    ("base decoder step", 64, 6, 2, 7), ("base encoder commit", 64, 6, 4, 7),
]


def padded_na3d(q, k, v, frames: int, window: int):
    """The former path: the query padded to every key frame, one causal na3d call."""
    import natten

    fkv = k.shape[1]
    qp = F.pad(q, (0, 0, 0, 0, 0, 0, 0, 0, fkv - 1, 0))
    out = natten.functional.na3d(qp, k, v, kernel_size=(min(frames, fkv), window, window),
                                 is_causal=(True, False, False))
    return out[:, -1:]


def device_us(fn, calls: int = 20) -> dict:
    t = profile_calls(fn, calls, warmup=3, top=3)
    return {"kernels": t["kernels_per_step"], "us": t["kernel_us_per_step"],
            "top": [r["kernel"][:60] for r in t["top"]]}


@torch.no_grad()
def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tools.probe_natten_one_frame", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks")
    args = p.parse_args()
    if not torch.cuda.is_available():
        p.error("no CUDA GPU: this probe times NATTEN's CUDA kernels")
    rows = []
    for name, grid, heads, fkv, window in CASES:
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(1, 1, grid, grid, heads, 64, device="cuda", dtype=torch.bfloat16, generator=g)
        k, v = (torch.randn(1, fkv, grid, grid, heads, 64, device="cuda", dtype=torch.bfloat16, generator=g)
                for _ in range(2))
        spec = hires_spec(window, fkv, True)
        old, new = padded_na3d(q, k, v, fkv, window), natten_attention(q, k, v, spec)
        a = device_us(lambda: padded_na3d(q, k, v, fkv, window))
        b = device_us(lambda: natten_attention(q, k, v, spec))
        rows.append({"case": name, "key_frames": fkv, "na3d_padded_us": a["us"], "na3d_kernels": a["kernels"],
                     "na2d_merged_us": b["us"], "na2d_kernels": b["kernels"],
                     "speedup": a["us"] / b["us"], "max_abs_diff": (old - new).abs().max().item(),
                     "na3d_top": a["top"], "na2d_top": b["top"]})
        print(rows[-1], flush=True)
    stem = report_stem(args.out, "natten_one_frame", "cuda")
    write_report(stem, "One causal query frame on NATTEN: na3d padded vs na2d merged", command_line(__spec__.name),
                 {"batch": 1, "head_dim": 64, "dtype": "bf16"}, rows,
                 columns=["case", "key_frames", "na3d_padded_us", "na3d_kernels", "na2d_merged_us", "na2d_kernels",
                          "speedup", "max_abs_diff"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
