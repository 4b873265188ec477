"""Probe: the pieces of one MSC layer in a ``prefix`` decoder step, one way against another.

Run on a GPU, from the repository root: ``python -m tools.probe_prefix_step --out DIR``.
Each case is compiled (``fullgraph=True``, static shapes) and replayed from a CUDA graph,
as the session's fast path runs it; µs per call from CUDA events over 100 replays (best
of 3 rounds), compile and capture excluded, plus the kernels of one compiled call without
the graph (``torch.profiler``). Base preset shapes: a 64×64 grid, 6 hi-res heads of 64,
a 768 → 2304 qkv projection included in every case. Cases:

* hi-res, one query frame (``P_*``: a prefix step, 2 key frames; ``E_*``: an encoder commit,
  4 key frames): NATTEN ``na2d`` over the key frames folded into the batch (the backend's
  path), two ``na2d`` calls merged, FlexAttention with the query frame alone;
* the same branch over the whole ``[c ; x_t]`` stack (``R_*``: a ``recompute`` step);
* q's RMSNorm + RoPE alone (``N_*``): the library's :func:`rope3d` (rotate-half pairs)
  with cos/sin made in the graph, the frame position on the device or constant; given
  cos/sin tables with pairs ``(2i, 2i+1)`` written back interleaved or as two halves, or
  rotate-half pairs; six consumers of one table;
* low-res pooling of q, k, v by ``avg_pool2d`` or a reshaped mean.

``--groups`` picks the groups (P, E, R, N, pool); ``--model`` instead times whole
denoising steps of ``scd-msc-base`` (a 2-layer encoder: only the decoder is timed),
recompute and prefix, through ``model.stream``'s fast path. Writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from scd_msc.ops.backends import _natten_one_frame, natten_attention
from scd_msc.ops.embed import rope3d, rope_tables
from scd_msc.ops.masks import hires_spec, window_mask_mod
from scd_msc.ops.msc import pool_tokens
from scd_msc.streaming.graphs import GraphedCall
from tools.bench.kernels import profile_calls

G, H, D, DIM, WIN = 64, 6, 64, 768, 7


def replay_us(fn, args, rounds: int = 3, calls: int = 100) -> float:
    graphed = GraphedCall(fn, warmup=2)
    graphed(*args)
    best = float("inf")
    for _ in range(rounds):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(calls):
            graphed(*args)
        b.record()
        torch.cuda.synchronize()
        best = min(best, a.elapsed_time(b) * 1e3 / calls)
    return best


def kernels(fn, args, top: int = 6) -> dict:
    return profile_calls(lambda: fn(*args), calls=5, warmup=2, top=top)


@torch.no_grad()
def model_probe(args) -> int:
    """scd-msc-base with a 2-layer encoder (only the decoder is timed), recompute and
    prefix, through ``model.stream``'s fast path: median denoise ms per frame (50 steps)
    and the compiled step's kernels."""
    from scd_msc.models import build_model, randomize_zero_init
    from tools.bench.kernels import count_kernels
    from tools.bench.latency import time_frames

    rows = []
    for ctx in ("recompute", "prefix"):
        model = build_model("scd-msc-base", enc_depth=2, decoder_context=ctx)
        randomize_zero_init(model)
        model = model.to("cuda", torch.bfloat16).eval()
        g = torch.Generator(device="cuda").manual_seed(0)
        prompt = torch.randn(1, 4, 3, 128, 128, device="cuda", dtype=torch.bfloat16, generator=g)
        session = model.stream(1, 50, prompt=prompt, generator=g)
        time_frames(session, 3, "cuda")
        den, _ = time_frames(session, 6, "cuda")
        ns = argparse.Namespace(context=4, steps=50, warmup=2, dtype="bf16", kernel_top=40)
        k = count_kernels(model, ns, "cuda", ["fast"])["compiled"]
        rows.append({"tag": args.tag, "context": ctx, "denoise_ms": sorted(den)[len(den) // 2],
                     "kernel_us_per_step": k["kernel_us_per_step"], "kernels_per_step": k["kernels_per_step"],
                     "top": [(r["kernel"][:90], round(r["us_per_step"], 1)) for r in k["top"]]})
        print(json.dumps(rows[-1]), flush=True)
        del model, session
        torch.cuda.empty_cache()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"probe_model_{args.tag}.json").write_text(json.dumps(rows, indent=1))
    r, p = rows
    print(f"{args.tag}: recompute {r['denoise_ms']:.2f} ms, prefix {p['denoise_ms']:.2f} ms, "
          f"ratio {r['denoise_ms'] / p['denoise_ms']:.3f}; kernels us/step {r['kernel_us_per_step']:.0f} / "
          f"{p['kernel_us_per_step']:.0f}")
    return 0


@torch.no_grad()
def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tools.probe_prefix_step", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--model", action="store_true", help="time whole decoder steps of scd-msc-base instead")
    p.add_argument("--tag", default="", help="a name for this tree's rows (--model)")
    p.add_argument("--groups", nargs="+", default=["P", "E", "R", "N", "pool"], help="case groups to run")
    args = p.parse_args()
    if not torch.cuda.is_available():
        p.error("no CUDA GPU: this probe times CUDA kernels")
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    dev, bf = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    qkv = nn.Linear(DIM, 3 * DIM).to(dev, bf)
    qn, kn = nn.RMSNorm(D).to(dev, bf), nn.RMSNorm(D).to(dev, bf)
    ar = torch.arange(G, device=dev, dtype=torch.float32)

    def rnd(*shape):
        return torch.randn(*shape, device=dev, dtype=bf, generator=g)

    def hi(x):  # (1, F, G, G, DIM) -> q, k, v (1, F, G, G, H, D): the hi-res half of the heads
        t = rearrange(qkv(x), "b f y x (n h d) -> n b f y x h d", n=3, h=2 * H)[..., :H, :]
        return t.unbind(0)

    def prep(q, k, fi):  # the library's rotation, tables made in the graph
        tables = rope_tables(fi, ar, ar, D)
        return rope3d(qn(q), *tables), rope3d(kn(k), *tables)

    def block_mask(fq, fkv, causal):
        mod = window_mask_mod(hires_spec(WIN, fkv if not causal else fkv, causal), fq, fkv, G, G)
        return create_block_mask(mod, None, None, fq * G * G, fkv * G * G, device=dev, BLOCK_SIZE=(128, 64))

    def flex(q, k, v, bm):
        qs, ks, vs = (rearrange(t, "b f y x h d -> b h (f y x) d") for t in (q, k, v))
        o = flex_attention(qs, ks, vs, block_mask=bm, kernel_options={"BLOCK_M": 128, "BLOCK_N": 64})
        return rearrange(o, "b h (f y x) d -> b f y x h d", f=q.shape[1], y=G)

    def merge(outs):  # [(o (B, Hp, Wp, h, d), lse (B, Hp, Wp, h))] -> (B, 1, Hp, Wp, h, d)
        lse = torch.stack([l for _, l in outs]).float()
        w = torch.softmax(lse, dim=0)[..., None]
        return sum(o.float() * w[i] for i, (o, _) in enumerate(outs))[:, None].to(bf)

    def one_frame_cases(fkv):
        spec, bm = hires_spec(WIN, fkv, True), block_mask(1, fkv, True)
        pos = torch.tensor(fkv - 1, device=dev)

        def fold(x, ck, cv, pos):
            q, k, v = hi(x)
            q, k = prep(q, k, pos + torch.arange(1, device=dev))
            return _natten_one_frame(q, torch.cat([ck, k], 1), torch.cat([cv, v], 1), spec)

        def fold_const(x, ck, cv, pos):
            q, k, v = hi(x)
            q, k = prep(q, k, torch.full((1,), fkv - 1, device=dev))
            return _natten_one_frame(q, torch.cat([ck, k], 1), torch.cat([cv, v], 1), spec)

        def split(x, ck, cv, pos):
            import natten
            q, k, v = hi(x)
            q, k = prep(q, k, pos + torch.arange(1, device=dev))
            ks, vs = torch.cat([ck, k], 1), torch.cat([cv, v], 1)
            outs = [natten.functional.na2d(q[:, 0], ks[:, i], vs[:, i], kernel_size=(WIN, WIN), return_lse=True)
                    for i in range(fkv)]
            return merge(outs)

        def flexed(x, ck, cv, pos):
            q, k, v = hi(x)
            q, k = prep(q, k, pos + torch.arange(1, device=dev))
            return flex(q, torch.cat([ck, k], 1), torch.cat([cv, v], 1), bm)

        inputs = (rnd(1, 1, G, G, DIM), rnd(1, fkv - 1, G, G, H, D), rnd(1, fkv - 1, G, G, H, D), pos)
        return {"fold": fold, "fold_const_pos": fold_const, "split": split, "flex": flexed}, inputs

    def recompute_cases():
        spec, bm = hires_spec(WIN, 2, False), block_mask(2, 2, False)

        def na3d(x):
            q, k, v = hi(x)
            q, k = prep(q, k, torch.arange(2, device=dev))
            return natten_attention(q, k, v, spec)

        def flexed(x):
            q, k, v = hi(x)
            q, k = prep(q, k, torch.arange(2, device=dev))
            return flex(q, k, v, bm)

        return {"na3d": na3d, "flex": flexed}, (rnd(1, 2, G, G, DIM),)

    def norm_cases():
        def cur(x, pos):
            q, _, _ = hi(x)
            return rope3d(qn(q), *rope_tables(pos + torch.arange(1, device=dev), ar, ar, D))

        def const(x, pos):
            q, _, _ = hi(x)
            return rope3d(qn(q), *rope_tables(torch.ones(1, device=dev), ar, ar, D))

        def norm_only(x, pos):
            q, _, _ = hi(x)
            return qn(q)

        def rot_inter(x, cos, sin):  # interleaved pairs (the model's), given cos/sin (..., d/2)
            x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
            return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).to(x.dtype)

        def rot_half(x, cos, sin):  # rotate-half pairs (i, i + d/2)
            x1, x2 = x.float().chunk(2, dim=-1)
            return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)

        def pairs_cat(x, cos, sin):  # pairs (2i, 2i+1), written as two halves
            x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
            return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)

        def pairs_cat_in(x, pos, cos, sin):
            q, _, _ = hi(x)
            return pairs_cat(qn(q), cos, sin)

        def table_in(x, pos, cos, sin):
            q, _, _ = hi(x)
            return rot_inter(qn(q), cos, sin)

        def table_in_bf16_norm(x, pos, cos, sin):
            q, _, _ = hi(x)
            return rot_inter(qn(q).float(), cos, sin).to(x.dtype)

        def half_in(x, pos, cos, sin):
            q, _, _ = hi(x)
            return rot_half(qn(q), cos, sin)

        def rope_no_norm(x, pos, cos, sin):
            q, _, _ = hi(x)
            return rope3d(q, *rope_tables(pos + torch.arange(1, device=dev), ar, ar, D))

        def table_no_norm(x, pos, cos, sin):
            q, _, _ = hi(x)
            return rot_inter(q, cos, sin)

        def table_ingraph(x, pos, cos, sin):  # cos/sin of a small angle table made in the graph
            q, _, _ = hi(x)
            a = torch.atan2(sin, cos)
            return rot_inter(qn(q), torch.cos(a), torch.sin(a))

        def six(x, cos, sin):  # q and k of 3 frames: six consumers of one table
            q, k, _ = hi(x)
            outs = []
            for i in range(3):
                outs += [rot_inter(qn(q[:, i:i + 1]), cos, sin), rot_inter(kn(k[:, i:i + 1]), cos, sin)]
            return torch.stack(outs)

        def six_input(x, pos, cos, sin):
            return six(torch.cat([x] * 3, dim=1), cos, sin)

        def six_ingraph(x, pos, cos, sin):
            a = torch.atan2(sin, cos)
            return six(torch.cat([x] * 3, dim=1), torch.cos(a), torch.sin(a))

        ang = torch.rand(1, G, G, 1, D // 2, device=dev) * 6
        return {"rope_device_pos": lambda x, pos, c, s: cur(x, pos),
                "rope_const_pos": lambda x, pos, c, s: const(x, pos),
                "norm_only": lambda x, pos, c, s: norm_only(x, pos),
                "pairs_cat_table": pairs_cat_in, "table_input": table_in, "table_ingraph": table_ingraph,
                "six_table_input": six_input, "six_table_ingraph": six_ingraph,
                "table_input_f32": table_in_bf16_norm, "rotate_half_table": half_in,
                "rope_no_norm": rope_no_norm, "table_no_norm": table_no_norm}, \
            (rnd(1, 1, G, G, DIM), torch.tensor(1, device=dev), torch.cos(ang), torch.sin(ang))

    def pool_cases():
        def lo(x):
            t = rearrange(qkv(x), "b f y x (n h d) -> n b f y x h d", n=3, h=2 * H)[..., H:, :]
            return t.unbind(0)

        def avg(x):
            return torch.stack([pool_tokens(t, 4) for t in lo(x)])

        def mean(x):
            return torch.stack([t.unflatten(3, (G // 4, 4)).unflatten(2, (G // 4, 4)).mean((3, 5)) for t in lo(x)])

        return {"avg_pool2d": avg, "reshape_mean": mean}, (rnd(1, 1, G, G, DIM),)

    if args.model:
        return model_probe(args)
    groups = {"P": lambda: one_frame_cases(2), "E": lambda: one_frame_cases(4), "R": recompute_cases,
              "N": norm_cases, "pool": pool_cases}
    unknown = sorted(set(args.groups) - set(groups))
    if unknown:
        p.error(f"--groups: unknown {unknown}; expected some of {sorted(groups)}")
    groups = {k: v for k, v in groups.items() if k in args.groups}
    rows = []
    for group, make in groups.items():
        fns, inputs = make()
        ref = None
        for name, fn in fns.items():
            row = {"case": f"{group}_{name}"}
            try:
                c = torch.compile(fn, fullgraph=True, dynamic=False)
                out = c(*inputs)
                ref = out if ref is None else ref
                row["max_abs_diff_vs_first"] = (out.float() - ref.float()).abs().max().item()
                row["us_graphed"] = replay_us(c, inputs)
                k = kernels(c, inputs)
                row.update(kernels_per_call=k["kernels_per_step"], kernel_us=k["kernel_us_per_step"],
                           top=[(r["kernel"][:70], round(r["us_per_step"], 1)) for r in k["top"]])
            except Exception as err:  # one case failing does not end the probe
                row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "probe_prefix_step.json").write_text(json.dumps(rows, indent=1))
    print(f"\n{'case':28} {'us_graphed':>10} {'kernel_us':>10} {'kernels':>8} {'diff':>8}")
    for r in rows:
        print(f"{r['case']:28} {r.get('us_graphed', float('nan')):10.1f} {r.get('kernel_us', float('nan')):10.1f} "
              f"{r.get('kernels_per_call', float('nan')):8.1f} {r.get('max_abs_diff_vs_first', float('nan')):8.3f}"
              + (f"  {r['error'][:80]}" if "error" in r else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
