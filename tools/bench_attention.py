"""GPU benchmark of the MSC attention op (Xu & Cao, arXiv 2412.09828; DESIGN.md §1).

Times both branches and the whole MSC layer, forward and forward+backward, per backend,
against dense SDPA (no mask) and dense frame-causal attention over the same tokens (the
project's flex backend on CUDA, its reference backend elsewhere), and writes
``benchmarks/attention_<gpu>_<date>.md`` + ``.json``. From the repository root::

    python -m tools.bench_attention --sizes 32x32x32 32x64x64 --out benchmarks/
    python -m tools.bench_attention --quick --out /tmp/bench      # tiny, CPU (tests)

Sizes are ``FxHpxWp`` (frames × token grid). Branch cases use ``h`` heads of ``d``
(default 16 of 64) on ``(B, F, Hp, Wp, h, d)`` tensors; the layer has width ``D = h·d``
split into ``h/2`` hi-res and ``h/2`` low-res heads; the dense layers are
:class:`scd_msc.ops.dense.DenseAttention` (SCD-dense's and the causal DiT's layer). FLOPs
are those the masks really need: allowed (query, key) pairs counted exactly
(``scd_msc.ops.masks``), times ``4·d`` (QKᵀ and PV, 2 flops per multiply-add); backward
is taken as 2.5× forward.

Shapes: ``B`` batch · ``F`` frames · ``Hp, Wp`` grid · ``N = Hp·Wp`` · ``L = F·N`` ·
``D`` width · ``h`` heads · ``d`` head dim · ``r`` low-res down factor.
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from scd_msc.ops import BACKENDS, BackendUnavailableError, hires_attention, lowres_attention, window_attention
from scd_msc.ops.dense import DenseAttention
from scd_msc.ops.masks import dense_spec, frame_causal_pairs
from scd_msc.ops.msc import MSCAttention, MSCAttentionConfig
from tools.attention_report import (  # the config and report half
    COMPACT, QUICK, BenchConfig, Size, attn_flops, bar_checks, branch_pairs, write)
from tools.bench.env import env_info
from tools.bench.report import command_line, dims, fmt, markdown_table, parse_dims
from tools.bench.timing import measure

BWD_OVER_FWD = 2.5  # backward FLOPs ≈ 2.5× forward (attention); linear layers: 2×


# --------------------------------------------------------------------------- cases

@dataclass
class Case:
    size: Size
    name: str  # "<group>/<impl>"
    mode: str  # "fwd" | "fwd+bwd"
    tokens: int  # query tokens the attention sees
    flops: float  # of this mode
    build: Callable[[], Callable[[], Any]]
    skip: Optional[str] = None


def _runner(op: Callable[..., Tensor], inputs: list[Tensor], mode: str,
            grad_wrt: Optional[list[Tensor]] = None) -> Callable[[], Any]:
    """``fn()`` running ``op(*inputs)`` (no grad) or forward+backward w.r.t. ``grad_wrt``."""
    if mode == "fwd":
        def fwd():
            with torch.no_grad():
                return op(*inputs)
        return fwd
    wrt = grad_wrt if grad_wrt is not None else inputs
    for t in wrt:
        t.requires_grad_(True)
    holder: dict[str, Tensor] = {}

    def fwd_bwd():
        out = op(*inputs)
        if "g" not in holder:
            holder["g"] = torch.randn_like(out)
        return torch.autograd.grad(out, wrt, holder["g"], allow_unused=True)
    return fwd_bwd


def size_cases(cfg: BenchConfig, size: Size) -> list[Case]:
    """Every case of one size; inputs and modules are made only when a case runs."""
    dt, dev = getattr(torch, cfg.dtype), cfg.device
    on_cuda = torch.device(dev).type == "cuda"
    b, h, d, dim = cfg.batch, cfg.heads, cfg.head_dim, cfg.dim
    f, hp, wp = size
    n, length = hp * wp, f * hp * wp
    php, pwp = -(-hp // cfg.down), -(-wp // cfg.down)  # pooled grid
    pooled = f * php * pwp
    mask_gib = length**2 / 2**30
    too_big = (f"dense mask would be {mask_gib:.1f} GiB (> {cfg.max_mask_gib:g} GiB)"
               if mask_gib > cfg.max_mask_gib else None)
    fc_impl = "flex" if on_cuda else "reference"
    hi_pairs, lo_pairs = branch_pairs(cfg, size)
    cases: list[Case] = []

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, dtype=dt, device=dev)

    def qkv(*shape: int) -> Callable[[], list[Tensor]]:
        return lambda: [randn(*shape) for _ in range(3)]

    def layer_inputs() -> list[Tensor]:  # x (B, F, Hp, Wp, D), t (B, F), frame_index (F,)
        return [randn(b, f, hp, wp, dim), torch.rand(b, f, device=dev), torch.arange(f, device=dev)]

    def add(name, tokens, attn_fl, make_op, make_inputs, lin_fl=0.0, skip=None, layer=False):
        for mode in cfg.modes:
            flops = (attn_fl + lin_fl if mode == "fwd"
                     else attn_fl * (1 + BWD_OVER_FWD) + lin_fl * 3)

            def build(mode=mode):
                op, inputs = make_op(), make_inputs()
                wrt = [inputs[0], *op.parameters()] if layer else None
                return _runner(op, inputs, mode, wrt)
            cases.append(Case(size, name, mode, tokens, flops, build, skip))

    def hires_op(be):
        return lambda: functools.partial(hires_attention, window=cfg.window, frames=cfg.frames,
                                         backend=be)

    def lowres_op(be):
        return lambda: functools.partial(lowres_attention, stride=cfg.stride,
                                         frames=cfg.strided_frames, backend=be)

    def msc_layer(be):
        mcfg = MSCAttentionConfig(dim, h, hires_heads=h // 2, backend=be)
        return lambda: MSCAttention(mcfg, cfg.layer_spec()).to(dev, dt)

    def dense_layer(causal):  # non-causal: every key, which the reference runs as plain SDPA
        mcfg = MSCAttentionConfig(dim, h, causal=causal, backend=fc_impl if causal else "reference")
        return lambda: DenseAttention(mcfg).to(dev, dt)

    def frame_causal_op():  # every token of frames <= f: the causal DiT's mask
        spec = dense_spec(None, f, (hp, wp), causal=True)
        return functools.partial(window_attention, spec=spec, backend=fc_impl)

    sdpa = lambda: F.scaled_dot_product_attention  # noqa: E731
    # attention alone: h heads of d
    add("dense/sdpa", length, attn_flops(length**2, h, d, b), sdpa, qkv(b, h, length, d))
    add(f"dense/frame-causal-{fc_impl}", length, attn_flops(frame_causal_pairs(f, f, n), h, d, b),
        frame_causal_op, qkv(b, f, hp, wp, h, d),
        skip=None if on_cuda else too_big)
    for be in cfg.backends:
        add(f"hires/{be}", length, attn_flops(hi_pairs, h, d, b), hires_op(be),
            qkv(b, f, hp, wp, h, d), skip=too_big if be == "reference" else None)
    add("lowres/sdpa-pooled", pooled, attn_flops(pooled**2, h, d, b), sdpa, qkv(b, h, pooled, d))
    for be in cfg.backends:
        add(f"lowres/{be}", pooled, attn_flops(lo_pairs, h, d, b), lowres_op(be),
            qkv(b, f, php, pwp, h, d))
    # the whole layer: width D = h·d, h/2 hi-res + h/2 low-res heads
    lin = 8.0 * b * length * dim**2  # qkv (6·L·D²) + proj (2·L·D²)
    msc_fl = attn_flops(hi_pairs, h // 2, d, b) + attn_flops(lo_pairs, h - h // 2, d, b)
    for be in cfg.backends:
        add(f"layer/msc-{be}", length, msc_fl, msc_layer(be), layer_inputs, lin,
            skip=too_big if be == "reference" else None, layer=True)
    add("layer/dense-sdpa", length, attn_flops(length**2, h, d, b), dense_layer(False),
        layer_inputs, lin, layer=True)
    add(f"layer/frame-causal-{fc_impl}", length, attn_flops(frame_causal_pairs(f, f, n), h, d, b),
        dense_layer(True), layer_inputs, lin, skip=None if on_cuda else too_big, layer=True)
    return cases


# --------------------------------------------------------------------------- running

def run_case(case: Case, cfg: BenchConfig) -> dict[str, Any]:
    """Time one case; a failure (OOM, a refused backend) is recorded, never raised."""
    row: dict[str, Any] = {
        "size": dims(case.size), "case": case.name, "mode": case.mode,
        "tokens": case.tokens, "median_ms": None, "p90_ms": None, "iters": None,
        "gflop": case.flops / 1e9, "tflops": None, "x_dense": None, "x_fcausal": None,
        "first_call_s": None, "peak_gib": None, "status": "skipped", "error": case.skip}
    if case.skip:
        return row
    row.update(measure(case.build, cfg.device, budget_ms=cfg.budget_ms, warmup=cfg.warmup,
                          min_iters=cfg.min_iters, max_iters=cfg.max_iters,
                          skip_errors=(BackendUnavailableError,)))
    if row["median_ms"]:
        row["tflops"] = case.flops / (row["median_ms"] * 1e-3) / 1e12
    return row


# --------------------------------------------------------------------------- CLI

def make_config(args: argparse.Namespace) -> BenchConfig:
    cfg = BenchConfig(**QUICK) if args.quick else BenchConfig()
    cfg.device = args.device or ("cpu" if args.quick or not torch.cuda.is_available() else "cuda")
    for name in ("backends", "modes", "dtype", "budget_ms"):
        if getattr(args, name) is not None:
            value = getattr(args, name)
            setattr(cfg, name, tuple(value) if isinstance(value, list) else value)
    if args.sizes:
        cfg.sizes = [parse_dims(s) for s in args.sizes]
    if torch.device(cfg.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    return cfg


def main(argv: Optional[list[str]] = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m tools.bench_attention", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", help="FxHpxWp, e.g. 32x32x32 32x64x64")
    p.add_argument("--out", default="benchmarks", help="folder of the .md / .json report")
    p.add_argument("--device", help="cuda (default when available) or cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes on CPU (tests)")
    p.add_argument("--backends", nargs="+", choices=BACKENDS)
    p.add_argument("--modes", nargs="+", choices=("fwd", "fwd+bwd"))
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--budget-ms", type=float, help="timed calls per case ≈ this / one call")
    p.add_argument("--only", nargs="+", help="run only cases whose name contains one of these")
    args = p.parse_args(argv)
    cfg = make_config(args)
    cases = [c for s in cfg.sizes for c in size_cases(cfg, s)
             if not args.only or any(o in c.name for o in args.only)]
    if not cases:
        raise SystemExit(f"no case matches --only {args.only}")
    command = command_line(__spec__.name, argv)
    env, rows = env_info(cfg.device), []
    for i, case in enumerate(cases, 1):
        row = run_case(case, cfg)
        rows.append(row)
        print(f"[{i}/{len(cases)}] {row['size']} {case.name} {case.mode}: {row['status']} "
              f"{fmt(row['median_ms'])} ms (first call {fmt(row['first_call_s'])} s)"
              + (f" — {row['error'][:120]}" if row["error"] else ""), flush=True)
        md, js = write(cfg, rows, args.out, command, env, len(cases))  # a killed run keeps it
    bars = bar_checks(rows, cfg)
    print(f"\nwrote {md} and {js}\n")
    print(markdown_table(bars, ["check", "size", "mode", "value", "bar", "result"]))
    print(markdown_table(rows, COMPACT))
    return rows


if __name__ == "__main__":
    main()
