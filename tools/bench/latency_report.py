"""The files of the latency benchmark: ``benchmarks/latency_<gpu>_<date>.{md,json,png}``.

The JSON holds every row and, at the top, the figures other documents cite: ``size``;
``scd_msc_ms_per_frame``, ``scd_dense_ms_per_frame``, ``causal_dit_ms_per_frame`` (batch
1, end to end, steady-state median, in the best mode run: ``fast`` when it ran);
``generate_cli_ms_per_frame`` (``scd-msc generate``'s own steady-state median) and its
ratio to the benchmark's SCD-MSC figure; ``decoder_kernels_per_call`` per case;
``compiled``, ``cuda_graphs``; ``scd_msc_growth_32_to_512``; training throughput.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any, Optional

from scd_msc.diffusion import Sampler
from scd_msc.models import build_model
from tools.bench.report import report_stem, write_report

COLUMNS = ["model", "mode", "batch", "denoise_ms", "denoise_p90_ms", "e2e_ms", "e2e_p90_ms", "frames_per_s",
           "setup_s", "peak_gib", "cache_mib", "params_m"]


def window_median(values: list[float], at: int, half: int = 4) -> float:
    """Median around frame ``at`` (1-based) to damp single-frame noise."""
    lo, hi = max(0, at - 1 - half), min(len(values), at + half)
    return statistics.median(values[lo:hi])


def plot_curve(curves: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for c in curves:
        ax.plot(range(1, len(c["ms"]) + 1), c["ms"], lw=0.8, label=f"{c['model']} ({c['mode']})")
    ax.set_xlabel("frame index")
    ax.set_ylabel("end-to-end ms / frame (log)")
    ax.set_yscale("log")  # compile and capture (seconds, while the cache fills) beside steady state (ms)
    ax.set_title("from an empty cache: the spikes are compile + capture (excluded from steady state)",
                 fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
    """``num / den``, or None when either side was not run."""
    return None if num is None or den is None else num / den


def write_latency_report(args: argparse.Namespace, device: str, names: list[str], modes: list[str],
                         rows: list[dict[str, Any]], curves: list[dict[str, Any]], train: list[dict[str, Any]],
                         checks: dict[str, float], kernels: dict[str, dict[str, float]],
                         cli: Optional[dict], kernel_times: Optional[dict[str, dict[str, dict]]] = None) -> int:
    """``names``: the cases run (a subset of the families with ``--families``; figures of a
    family not run, and ratios with it, are None; the curve, ``scd-msc generate`` and the
    training rows only where they ran)."""
    batch = args.batch[0]

    def row(name: str, mode: str) -> Optional[dict[str, Any]]:
        return next((r for r in rows if r["model"] == name and r["mode"] == mode and r["batch"] == batch), None)

    def e2e(name: str, mode: str) -> Optional[float]:
        return None if row(name, mode) is None else row(name, mode)["e2e_ms"]

    def denoise(name: str, mode: str) -> Optional[float]:
        return None if row(name, mode) is None else row(name, mode)["denoise_ms"]

    best = modes[-1]
    family = {k: f"{f}-{args.size}" for k, f in (("scd_msc", "scd-msc"), ("scd_dense", "scd-dense"),
                                                  ("causal_dit", "causal-dit"))}
    scd, dense, dit = family.values()
    per_mode = {m: {k: e2e(nm, m) for k, nm in family.items() if nm in names} for m in modes}
    cli_ms = None if cli is None else cli["steady_ms_per_frame_median"]
    data = {
        "size": args.size, "families": [n for n in names if n in family.values()], "mode": best,
        "compiled": best == "fast", "cuda_graphs": best in ("graphs", "fast"),
        "scd_msc_ms_per_frame": e2e(scd, best), "scd_dense_ms_per_frame": e2e(dense, best),
        "causal_dit_ms_per_frame": e2e(dit, best), "ms_per_frame_by_mode": per_mode,
        "speedup_vs_causal_dit": ratio(e2e(dit, best), e2e(scd, best)),
        "speedup_vs_scd_dense": ratio(e2e(dense, best), e2e(scd, best)),
        "generate_cli_ms_per_frame": cli_ms, "generate_cli_vs_benchmark": ratio(cli_ms, e2e(scd, best)),
        "generate_cli": cli, "decoder_kernels_per_call": kernels,
        "decoder_kernel_time": kernel_times or {}, "mode_vs_eager_max_abs_diff": checks,
        "train_samples_per_s": {t["model"]: t["samples_per_s"] for t in train},
        "train_speedup": ratio(*[t["samples_per_s"] for t in train]) if len(train) == 2 else None,
        "curves": curves, "train": train,
    }
    curve = curves[-1] if curves else None
    if curve is not None:
        n = len(curve["ms"])
        at32, atn = window_median(curve["ms"], min(32, n)), window_median(curve["ms"], n)
        data.update({"scd_msc_growth_32_to_512": (atn - at32) / at32, "curve_frames": n,
                     "scd_msc_peak_gib_32": curve["peak_gib"][min(31, n - 1)],
                     "scd_msc_peak_gib_last": curve["peak_gib"][-1],
                     "scd_msc_cache_bytes_32": curve["cache_bytes"][min(31, n - 1)],
                     "scd_msc_cache_bytes_last": curve["cache_bytes"][-1]})
    prefix = {nm: {"denoise_ms": denoise(nm, best), "e2e_ms": e2e(nm, best),
                   "denoise_speedup_vs_recompute": ratio(denoise(nm.removesuffix("+prefix"), best),
                                                         denoise(nm, best))}
              for nm in names if nm.endswith("+prefix")}
    if prefix:
        data["prefix"] = prefix
    model0 = build_model(names[0])  # a family: the prefix cases follow them
    config = {"presets": names, "modes": modes, "tokens_per_frame": model0.cfg.grid ** 2,
              "image": f"{model0.cfg.channels}x{model0.cfg.image_size}x{model0.cfg.image_size}",
              "context_frames": args.context, "steps": args.steps, "sampler": Sampler().config.name,
              "dtype": args.dtype, "batches": args.batch, "timed_frames": args.frames,
              "warmup_frames": args.warmup, "curve_frames": args.curve_frames,
              "params_m": {r["model"]: round(r["params_m"], 2) for r in rows if r["batch"] == batch},
              "train": f"batch {args.train_batch} × {args.train_frames} frames, bf16 autocast, "
                       "AdamW of scd-msc train (build_optimizer)",
              "dense_attention_window": args.context + 1}
    stem = report_stem(args.out, "latency", device)
    lines = summary_lines(data, per_mode, modes, kernels, prefix, cli, train)
    lines += kernel_time_lines(kernel_times or {}, {nm: denoise(nm, best) for nm in names}, args.steps)
    if curve is not None:
        plot = stem.with_name(stem.name + ".png")
        plot.parent.mkdir(parents=True, exist_ok=True)
        plot_curve(curves, plot)
        lines += [f"- SCD-MSC ({curve['mode']}) latency frame 32 → {n}: {at32:.2f} → {atn:.2f} ms "
                  f"({100 * (atn - at32) / at32:+.1f}%); cache {data['scd_msc_cache_bytes_32'] / 2**20:.2f} → "
                  f"{data['scd_msc_cache_bytes_last'] / 2**20:.2f} MiB; peak memory "
                  f"{data['scd_msc_peak_gib_32']} → {data['scd_msc_peak_gib_last']} GiB", f"- plot: `{plot.name}`"]
    extra = "\n".join(lines + [""])
    write_report(stem, "Per-frame latency: SCD-MSC vs SCD-dense vs causal DiT", args.command, config,
                 rows, extra, data, columns=COLUMNS)
    print(extra)
    print(f"wrote {stem}.md and .json" + (" and its .png" if curve is not None else ""))
    return 0


def summary_lines(data, per_mode, modes, kernels, prefix, cli, train) -> list[str]:
    lines = ["## Summary (batch 1, end to end, steady-state median; warm-up, compile and capture excluded)", "",
             "Every family gets the same treatment in each mode (same compile, same CUDA graphs).", ""]
    labels = {"scd_msc": "SCD-MSC", "scd_dense": "SCD-dense", "causal_dit": "causal DiT"}
    for m in modes:
        v = per_mode[m]
        line = f"- {m}: " + ", ".join(f"{labels[k]} {ms:.2f}" for k, ms in v.items()) + " ms/frame"
        ratios = [f"{v[k] / v['scd_msc']:{f}}× {what}" for k, f, what in
                  (("causal_dit", ".1f", "the DiT"), ("scd_dense", ".2f", "SCD-dense")) if "scd_msc" in v and k in v]
        lines.append(line + (" → SCD-MSC " + ", ".join(ratios) if ratios else ""))
    for name, p in prefix.items():
        speedup = p["denoise_speedup_vs_recompute"]
        lines.append(f"- {name}: denoise {p['denoise_ms']:.2f} ms, end to end {p['e2e_ms']:.2f} ms/frame"
                     + (f"; denoising {speedup:.2f}× faster than recompute" if speedup is not None else ""))
    if cli is not None:
        lines.append(f"- `{cli['command']}`: {cli['steady_ms_per_frame_median']:.2f} ms/frame steady state "
                     f"({data['generate_cli_vs_benchmark']:.2f}× the benchmark's SCD-MSC figure; setup "
                     f"{cli['setup_seconds']:.1f} s over its first {cli['setup_frames']} frames, left out)")
    lines += ["- kernels per decoder call (DiT: per pass), eager / compiled: " + ", ".join(
                  f"{n} {k.get('eager', 0):.0f} / {k.get('compiled', float('nan')):.0f}" for n, k in kernels.items()),
              f"- {' / '.join(m for m in modes if m != 'eager') or 'no other mode'} vs eager frames, max |diff|: "
              + ", ".join(f"{k} {v:.3g}" for k, v in data['mode_vs_eager_max_abs_diff'].items())]
    if train:
        lines.append("- training: " + ", ".join(f"{t['model']} {t['samples_per_s']:.2f} clips/s ({t['step_ms']:.0f} "
                                                f"ms/step, peak {t['peak_gib']} GiB)" for t in train)
                     + (f"; ratio {data['train_speedup']:.2f}×" if data["train_speedup"] is not None else ""))
    return lines


def kernel_time_lines(kernel_times: dict[str, dict[str, dict]], denoise_ms: dict[str, Optional[float]],
                      steps: int) -> list[str]:
    """Per case, of its fastest profiled mode: the kernels' device time per step against the
    timed step (the rest is launch gaps), and the five slowest kernels."""
    lines = []
    for name, by_mode in kernel_times.items():
        mode, t = list(by_mode.items())[-1]
        step_us = None if denoise_ms.get(name) is None else 1e3 * denoise_ms[name] / steps
        share = "" if step_us is None else f" of {step_us:.0f} µs timed per step"
        top = "; ".join(f"{k['kernel'][:60]} {k['us_per_step']:.0f} µs ×{k['calls_per_step']:.3g}"
                        for k in t["top"][:5])
        lines.append(f"- {name} ({mode}): kernels {t['kernel_us_per_step']:.0f} µs per step{share}; slowest: {top}")
    return lines
