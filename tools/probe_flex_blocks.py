"""Probe: FlexAttention block sizes for the hi-res mask against NATTEN (one size).

Run on a GPU, from the repository root: ``python -m tools.probe_flex_blocks --out DIR``.
Writes ``flex_blocks_<gpu>_<date>.md/.json``. Steady-state medians, compile excluded.
"""

import argparse
import sys

import torch
from einops import rearrange

from scd_msc.ops import hires_attention
from scd_msc.ops.backends import _compiled_flex
from scd_msc.ops.masks import hires_spec, window_mask_mod
from tools.bench.report import command_line, report_stem, write_report
from tools.bench.timing import measure


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tools.probe_flex_blocks", description=__doc__.splitlines()[0])
    p.add_argument("--size", default="32,32,32")
    p.add_argument("--out", default="benchmarks")
    args = p.parse_args()
    if not torch.cuda.is_available():
        p.error("no CUDA GPU: this probe times FlexAttention and NATTEN kernels on CUDA")
    f, hp, wp = (int(v) for v in args.size.split(","))
    from torch.nn.attention.flex_attention import create_block_mask

    q, k, v = (torch.randn(1, f, hp, wp, 16, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    spec, n = hires_spec(7, 4, True), f * hp * wp
    rows = []
    for mode in ("fwd", "fwd+bwd"):
        def natten_fn():
            o = hires_attention(q, k, v, window=7, frames=4, backend="natten")
            if mode != "fwd":
                o.sum().backward()
        rows.append({"case": "natten", "mode": mode, **measure(lambda: natten_fn, "cuda")})
        for blocks in [(128, 128), (128, 64), (64, 64), (64, 128)]:
            def build(blocks=blocks):
                bm = create_block_mask(window_mask_mod(spec, f, f, hp, wp), None, None, n, n,
                                       device="cuda", BLOCK_SIZE=blocks, _compile=True)
                qs, ks, vs = (rearrange(t, "b f y x h d -> b h (f y x) d") for t in (q, k, v))
                opts = {"BLOCK_M": blocks[0], "BLOCK_N": blocks[1]}

                def fn():
                    o = _compiled_flex()(qs, ks, vs, block_mask=bm, kernel_options=opts)
                    if mode != "fwd":
                        o.sum().backward()
                return fn
            rows.append({"case": f"flex {blocks}", "mode": mode, **measure(build, "cuda")})
        nat = rows[-5]["median_ms"]
        for r in rows[-4:]:
            r["x_natten"] = r["median_ms"] / nat if r["median_ms"] and nat else None
        print(rows[-5:], flush=True)
    stem = report_stem(args.out, "flex_blocks", "cuda")
    write_report(stem, "FlexAttention block sizes, hi-res w=7 v=4", command_line(__spec__.name),
                 {"size": args.size, "heads": 16, "head_dim": 64, "dtype": "bf16"}, rows,
                 columns=["case", "mode", "median_ms", "x_natten", "first_call_s", "status", "error"])
    for r in rows:
        print(r["case"], r["mode"], r["median_ms"], r.get("x_natten"), r["status"], (r["error"] or "")[:120])
    return 0


if __name__ == "__main__":
    sys.exit(main())
