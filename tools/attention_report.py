"""Config and report half of ``python -m tools.bench_attention``: what is measured (sizes,
heads, MSC hyper-parameters, the bars), the exact and the paper's FLOP counts, and the
``.md`` / ``.json`` report (speed-ups, bar checks, ratio and FLOP tables).

Shapes: ``F`` frames · ``Hp, Wp`` grid · ``D`` width · ``h`` heads · ``d`` head dim ·
``r`` low-res down factor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from scd_msc.ops import BACKENDS
from scd_msc.ops.masks import frame_causal_pairs, hires_spec, lowres_spec, window_pairs
from scd_msc.ops.schedule import MSCLayerSpec
from tools.bench.env import gpu_slug
from tools.bench.report import check, dims, fastest, fmt, markdown_table, report_stem, write_report

Size = tuple[int, int, int]  # (F, Hp, Wp)


@dataclass
class BenchConfig:
    sizes: list[Size] = field(default_factory=lambda: [(32, 32, 32), (32, 64, 64)])
    heads: int = 16
    head_dim: int = 64
    batch: int = 1
    dtype: str = "bfloat16"
    device: str = "cuda"
    window: int = 7  # hi-res w
    frames: int = 4  # hi-res v
    down: int = 4  # low-res r
    stride: int = 2  # low-res s
    strided_frames: Optional[int] = 8  # low-res k
    backends: tuple[str, ...] = BACKENDS
    modes: tuple[str, ...] = ("fwd", "fwd+bwd")
    max_mask_gib: float = 2.0  # skip dense-mask cases above this
    budget_ms: float = 800.0  # timed calls per case ≈ budget / time of one call
    warmup: int = 3
    min_iters: int = 3
    max_iters: int = 50
    bar_small: Size = (32, 32, 32)  # flex within 1.5× of natten
    bar_large: Size = (32, 64, 64)  # hi-res ≥ 25×, layer ≥ 10×

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim

    def layer_spec(self) -> MSCLayerSpec:
        return MSCLayerSpec(self.down, self.window, self.frames, self.stride, self.strided_frames)


QUICK = dict(sizes=[(8, 8, 8)], heads=4, head_dim=16, dtype="float32", device="cpu",
             budget_ms=30.0, warmup=1, min_iters=2, max_iters=3,
             bar_small=(8, 8, 8), bar_large=(8, 8, 8))


# --------------------------------------------------------------------------- FLOPs

def attn_flops(pairs: int, heads: int, head_dim: int, batch: int = 1) -> float:
    """Forward FLOPs of attention over ``pairs`` allowed pairs per head: QKᵀ and PV, 2
    flops per multiply-add (backward ≈ 2.5× this)."""
    return 4.0 * head_dim * pairs * heads * batch


def paper_estimate(cfg: BenchConfig, size: Size) -> dict[str, float]:
    """The MSC paper's complexity estimate, formulas verbatim: b batch, s tokens, h width,
    w window, v frames, r down factor, d temporal stride."""
    f, hp, wp = size
    b, s, h = cfg.batch, f * hp * wp, cfg.dim
    w, v, r, d = cfg.window, cfg.frames, cfg.down, cfg.stride
    dense = 8 * b * s * h**2 + 2 * b * s**2 * h
    hi = 2 * b * s * h**2 + b * s**2 * h / (2 * w**2 * v)
    lo = 2 * b * s * h**2 / r**2 + b * s**2 * h / (2 * r**2 * d)
    return {"dense": float(dense), "hires": hi, "lowres": lo, "msc": hi + lo,
            "dense_over_msc": dense / (hi + lo)}


def branch_pairs(cfg: BenchConfig, size: Size) -> tuple[int, int]:
    """Allowed pairs per head of the hi-res and the low-res (pooled) branch."""
    f, hp, wp = size
    php, pwp = -(-hp // cfg.down), -(-wp // cfg.down)
    hi = window_pairs(hires_spec(cfg.window, cfg.frames, True), f, f, hp, wp)
    lo = window_pairs(lowres_spec((php, pwp), cfg.stride, cfg.strided_frames, f, True),
                      f, f, php, pwp)
    return hi, lo


# --------------------------------------------------------------------------- report

def add_speedups(rows: list[dict]) -> None:
    """``x_dense``: dense SDPA time / this time (same size and mode; layers against the
    dense-SDPA layer); ``x_fcausal``: the same against dense frame-causal attention."""
    for r in rows:
        if r["median_ms"] is None:
            continue
        group = "layer/" if r["case"].startswith("layer/") else "dense/"
        dense, _ = fastest(rows, r["size"], group + ("dense-sdpa" if group == "layer/" else "sdpa"),
                           r["mode"])
        fc, _ = fastest(rows, r["size"], group + "frame-causal-", r["mode"])
        r["x_dense"] = dense / r["median_ms"] if dense else None
        r["x_fcausal"] = fc / r["median_ms"] if fc else None


def bar_checks(rows: list[dict], cfg: BenchConfig) -> list[dict[str, Any]]:
    """The bars of the issue, each PASS / FAIL / N/A (a case missing or failed)."""
    small, large = dims(cfg.bar_small), dims(cfg.bar_large)
    bars = []

    def bar(what, size, mode, num, den, op, threshold):
        (a, a_name), (b, b_name) = (fastest(rows, size, p, mode) for p in (num, den))
        value = a / b if a and b else None
        bars.append({"check": what, "size": size, "mode": mode, "value": value,
                     "bar": f"{op} {threshold:g}", "result": check(value, op, threshold),
                     "detail": f"{a_name or num} {fmt(a)} ms / {b_name or den} {fmt(b)} ms"})
    for mode in cfg.modes:
        bar("hi-res branch on its best backend: speed-up over dense SDPA", large, mode,
            "dense/sdpa", "hires/", ">=", 25)
    for mode in cfg.modes:
        bar("hi-res branch: flex time / natten time", small, mode,
            "hires/flex", "hires/natten", "<=", 1.5)
    if "fwd+bwd" in cfg.modes:
        bar("MSC layer on its best backend: speed-up over the dense frame-causal layer",
            large, "fwd+bwd", "layer/frame-causal-", "layer/msc-", ">=", 10)
    return bars


_LOWRES = tuple(f"lowres/{be}" for be in BACKENDS)
RATIOS = {  # column: (case prefix of the numerator time, of the denominator time)
    "hires x dense": ("dense/sdpa", "hires/"),
    "hires x fcausal": ("dense/frame-causal-", "hires/"),
    "lowres x dense": ("dense/sdpa", _LOWRES),
    "lowres x pooled dense": ("lowres/sdpa-pooled", _LOWRES),
    "layer x dense layer": ("layer/dense-sdpa", "layer/msc-"),
    "layer x fcausal layer": ("layer/frame-causal-", "layer/msc-"),
    "hires flex/natten": ("hires/flex", "hires/natten"),
    "lowres flex/natten": ("lowres/flex", "lowres/natten"),
    "layer flex/natten": ("layer/msc-flex", "layer/msc-natten"),
}


def ratio_rows(rows: list[dict], cfg: BenchConfig) -> list[dict[str, Any]]:
    """Speed-ups of each MSC piece on its best backend, and flex / natten, per size, mode."""
    out = []
    for size in map(dims, cfg.sizes):
        for mode in cfg.modes:
            row: dict[str, Any] = {"size": size, "mode": mode}
            for column, (num, den) in RATIOS.items():
                a, b = fastest(rows, size, num, mode)[0], fastest(rows, size, den, mode)[0]
                row[column] = a / b if a and b else None
            out.append(row)
    return out


def flop_tables(cfg: BenchConfig) -> tuple[list[dict], list[dict]]:
    """Exact forward mask FLOPs per op, and the paper's estimate next to this
    implementation's exact forward FLOPs of a whole layer, per size."""
    ops, paper = [], []
    h, d, b, hh = cfg.heads, cfg.head_dim, cfg.batch, cfg.heads // 2
    for size in cfg.sizes:
        f, hp, wp = size
        length, (hi, lo) = f * hp * wp, branch_pairs(cfg, size)
        pooled = f * -(-hp // cfg.down) * -(-wp // cfg.down)
        dense, fc = attn_flops(length**2, h, d, b), frame_causal_pairs(f, f, hp * wp)
        for name, queries, pairs in [("dense SDPA", length, length**2),
                                     ("dense frame-causal", length, fc),
                                     ("hi-res branch", length, hi),
                                     ("low-res branch (pooled)", pooled, lo)]:
            ops.append({"size": dims(size), "op": name, "heads": h, "queries": queries,
                        "pairs/head": pairs, "keys/query": pairs / queries,
                        "share of dense": pairs / length**2,
                        "fwd GFLOP": attn_flops(pairs, h, d, b) / 1e9})
        msc = attn_flops(hi, hh, d, b) + attn_flops(lo, h - hh, d, b)
        ops.append({"size": dims(size), "op": f"MSC layer attention ({hh}+{h - hh} heads)",
                    "heads": h, "queries": length, "share of dense": msc / dense,
                    "fwd GFLOP": msc / 1e9})
        lin = 8.0 * b * length * cfg.dim**2
        p = paper_estimate(cfg, size)
        paper.append({"size": dims(size), "paper dense GFLOP": p["dense"] / 1e9,
                      "paper hi-res": p["hires"] / 1e9, "paper low-res": p["lowres"] / 1e9,
                      "paper MSC": p["msc"] / 1e9, "paper dense/MSC": p["dense_over_msc"],
                      "exact dense layer": (lin + dense) / 1e9,
                      "exact MSC layer": (lin + msc) / 1e9,
                      "exact dense/MSC": (lin + dense) / (lin + msc)})
    return ops, paper


NOTES = """\
* Times: median of `iters` calls timed with CUDA events (`perf_counter` on CPU). The first
  call (torch.compile of FlexAttention, block masks, NATTEN set-up) and the warm-up are
  excluded; the first call is reported apart (`first_call_s`). `fwd` runs under
  `torch.no_grad()`; `fwd+bwd` adds `torch.autograd.grad` w.r.t. q, k, v (branches) or
  the input and every parameter (layers).
* SDPA baselines (`dense/sdpa`, `lowres/sdpa-pooled`) get `(B, h, L, d)` tensors laid out
  beforehand; the MSC backends and the dense frame-causal baseline pay for their own
  layout changes. `reference` builds its dense mask on every call; it is skipped where that
  mask would exceed {max_mask_gib:g} GiB. Dense frame-causal attention runs through the
  project's backends (`scd_msc.ops.window_attention`, every token of frames <= f):
  FlexAttention with a block mask on CUDA, SDPA + dense mask on CPU. The dense layers are
  `scd_msc.ops.dense.DenseAttention`, with the MSC layer's qkv / q,k-RMSNorm / 3-D RoPE /
  proj (no gates).
* FLOPs: allowed (query, key) pairs counted exactly from the masks × 4·d (QKᵀ and PV, 2
  flops per multiply-add); `fwd+bwd` = 3.5× that (backward ≈ 2.5×) plus 3× the qkv + proj
  FLOPs (8·L·D², layers only). Pooling, RoPE, norms and gates are not counted.
* `x_dense` / `x_fcausal`: dense SDPA / dense frame-causal time over this time, same size
  and mode (layer rows: against the dense-SDPA / frame-causal layer). Low-res rows compare
  with the full-resolution tokens; `lowres/sdpa-pooled` is dense SDPA over pooled tokens.
* Paper estimate, verbatim, with b = batch, s = F·Hp·Wp, h = D, w = window, v = frames,
  r = down, d = temporal stride. Its attention term 2bs²h is half the exact 4·s²·D, and it
  assumes projecting after pooling; this implementation projects at full resolution
  (8·s·D² in every layer). Compare ratios, not absolute numbers.
* The flex backend raises torch.compile's recompile limit, so FlexAttention never falls
  back to eager.
"""


COLUMNS = ["size", "case", "mode", "tokens", "median_ms", "p90_ms", "iters", "gflop", "tflops",
           "x_dense", "x_fcausal", "first_call_s", "peak_gib", "status", "error"]
COMPACT = ["size", "case", "mode", "median_ms", "tflops", "x_dense", "x_fcausal",
           "first_call_s", "status"]


def config_dict(cfg: BenchConfig) -> dict[str, Any]:
    return {**asdict(cfg), "sizes": [dims(s) for s in cfg.sizes], "backends": list(cfg.backends),
            "modes": list(cfg.modes), "bar_small": dims(cfg.bar_small),
            "bar_large": dims(cfg.bar_large), "dim": cfg.dim, "hires_heads": cfg.heads // 2,
            "lowres_heads": cfg.heads - cfg.heads // 2,
            "pooled_grids": [f"{-(-hp // cfg.down)}x{-(-wp // cfg.down)}"
                             for _, hp, wp in cfg.sizes]}


def write(cfg: BenchConfig, rows: list[dict], out_dir: str, command: str,
          env: dict[str, Any], total: int) -> tuple[Path, Path]:
    """The .md and .json report of ``rows``, the first of ``total`` cases."""
    add_speedups(rows)
    bars, ratios = bar_checks(rows, cfg), ratio_rows(rows, cfg)
    flops, paper = flop_tables(cfg)
    extra = "\n".join([
        f"Cases run: {len(rows)} of {total}" + ("" if len(rows) == total else " (run incomplete)"),
        "", "## Defaults", "",
        f"Hi-res: window w={cfg.window}, frames v={cfg.frames}, causal in time. Low-res: "
        f"down r={cfg.down} (pooled {', '.join(config_dict(cfg)['pooled_grids'])}), stride "
        f"s={cfg.stride}, strided_frames k={cfg.strided_frames}. Branch cases: {cfg.heads} "
        f"heads of {cfg.head_dim}; layer: D={cfg.dim}, {cfg.heads // 2} hi-res + "
        f"{cfg.heads - cfg.heads // 2} low-res heads; batch {cfg.batch}, {cfg.dtype}.", "",
        "## Bar checks", "", markdown_table(bars),
        "## Speed-ups (best backend of each piece) and flex / natten", "",
        markdown_table(ratios),
        "## FLOPs the masks need (forward, attention only, exact pair counts)", "",
        markdown_table(flops),
        "## The MSC paper's complexity estimate vs exact (forward GFLOP, whole layer)", "",
        "Paper: dense `8bsh² + 2bs²h`; hi-res `2bsh² + bs²h/(2w²v)`; low-res "
        "`2bsh²/r² + bs²h/(2r²d)`.", "", markdown_table(paper),
        "## Notes", "", NOTES.format(max_mask_gib=cfg.max_mask_gib)])
    stem = report_stem(out_dir, "attention", cfg.device)
    return write_report(
        stem, f"MSC attention benchmark ({gpu_slug(cfg.device)})", command, config_dict(cfg),
        rows, extra, {"cases_run": len(rows), "cases_total": total, "bars": bars,
                      "ratios": ratios, "flops": flops, "paper_estimate": paper},
        columns=COLUMNS, env=env)
