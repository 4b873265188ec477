"""SCD-MSC against the causal DiT on moving digits: one report from the files that
``tools/quality_moving_digits.sh`` leaves behind.

Reads, for each model, the ``scd-msc eval`` folder (``eval.json``), the long
``scd-msc generate`` GIF (prompt frames first, videos tiled side by side) and the
training run folder (``timing.json``, ``metrics.csv``, ``config.yaml``), plus the
training shards and any ``--variant`` (another long GIF, optionally with its eval and
run: an ablation or another inference setting), and writes ``benchmarks/<what>_<gpu>_<date>.md`` + ``.json``, a
digit-mass plot ``..._mass.png`` and ``..._long.gif`` (the first four long videos of
each model, SCD-MSC on top).

Digit mass of a frame: its mean intensity in [0, 1] (digits are bright on black).
The reference is the mean over the training clips; each generated video is also
compared with its own prompt frames (the digits it was shown), which removes the
clip-to-clip spread (1–3 digits per clip).

Shapes: ``T`` frames · ``V`` videos · ``H, W`` pixels.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageSequence

from scd_msc.data.dataset import ClipDataset
from scd_msc.media import save_gif
from tools.bench.env import env_info
from tools.bench.report import command_line, fmt, markdown_table, report_stem, write_report
from tools.bench.stats import paired_gap

ROOT = Path(__file__).resolve().parent.parent  # the checkout: reports go to its benchmarks/

PSNR_BAR_DB = 0.5  # SCD-MSC within 0.5 dB of the DiT, horizons 1-8
MASS_BAR = 0.30  # digit mass within ±30% of the training data's at 4× the clip length
MODELS = (("scd_msc", "SCD-MSC"), ("causal_dit", "causal DiT"))


def gif_videos(path: Path, size: int) -> np.ndarray:
    """The GIF's frames split into its side-by-side videos: ``(V, T, H, W)`` in [0, 1]."""
    with Image.open(path) as im:
        frames = np.stack([np.asarray(f.convert("L"), np.float32) / 255 for f in ImageSequence.Iterator(im)])
    t, h, w = frames.shape  # (T, H, V·W)
    if h != size or w % size:
        raise ValueError(f"{path}: frames are {h}x{w}, expected {size} rows and a multiple of {size} columns")
    return frames.reshape(t, h, w // size, size).transpose(2, 0, 1, 3)  # (V, T, H, W)


def comparison_gif(videos: dict[str, np.ndarray], count: int, path: Path, gap: int = 2) -> None:
    """The first ``count`` videos of each model, one row per model (white gaps), as a GIF."""
    rows = []
    for video in videos.values():  # (V, T, H, W)
        v, t, h, w = video.shape
        row = np.ones((t, h, count * (w + gap) - gap), np.float32)  # (T, H, count·(W+gap)-gap)
        for i in range(min(count, v)):
            row[:, :, i * (w + gap):i * (w + gap) + w] = video[i]
        rows += [row, np.ones((t, gap, row.shape[2]), np.float32)]
    frames = (np.concatenate(rows[:-1], axis=1) * 255).round().astype(np.uint8)  # (T, rows·(H+gap)-gap, ...)
    save_gif(list(frames[..., None]), path, fps=8)


def training_mass(shards: str, frames: int, size: int, clips: int) -> dict[str, float]:
    """Mean and spread of the per-clip digit mass of the first ``clips`` training clips."""
    data = ClipDataset(shards, frames, 1, size, resampled=False)
    masses = []
    for sample in data:
        masses.append(float(((sample["video"] + 1) / 2).mean()))
        if len(masses) == clips:
            break
    if not masses:
        return {"clips": 0, "mean": float("nan"), "std": float("nan")}
    return {"clips": len(masses), "mean": statistics.fmean(masses), "std": statistics.pstdev(masses)}


def mass_curves(video: np.ndarray, prompt: int) -> dict[str, Any]:
    """Per-frame mass (mean over videos) and per-frame ratio to each video's prompt mass."""
    mass = video.mean(axis=(2, 3))  # (V, T)
    own = mass[:, :prompt].mean(1, keepdims=True)  # (V, 1)
    return {"videos": int(mass.shape[0]), "frames": int(mass.shape[1]), "mass": mass.mean(0).tolist(),
            "ratio_to_prompt": (mass / own).mean(0).tolist(),
            "bright_fraction": (video > 0.5).mean(axis=(0, 2, 3)).tolist()}


def run_info(run: Path) -> dict[str, Any]:
    """Steps, final losses and throughput of a training run folder."""
    rows: list[dict[str, str]] = []
    # <run>/metrics.csv; runs made before it was one file per run: csv/version_N/metrics.csv
    legacy = sorted(glob.glob(str(run / "csv" / "version_*" / "metrics.csv")))
    for path in glob.glob(str(run / "metrics.csv")) + legacy:
        with open(path) as f:
            rows += list(csv.DictReader(f))
    last = lambda key: next((float(r[key]) for r in reversed(rows) if r.get(key)), None)
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    timing = json.loads((run / "timing.json").read_text()) if (run / "timing.json").exists() else {}
    config = run / "config.yaml"
    noise_max = None
    if config.exists():
        from omegaconf import OmegaConf

        loaded = OmegaConf.load(config)
        old_layout = OmegaConf.select(loaded, "model.flow.context_noise_max", default=0.0)  # before 2026-12
        noise_max = OmegaConf.select(loaded, "flow.context_noise_max", default=old_layout)
        if OmegaConf.select(loaded, "model.family") == "causal-dit":
            noise_max = "diffusion forcing"  # every frame at its own level; context_noise_max unused
    return {"steps": _global_step(run, rows), "context_noise_max": noise_max,
            "train_loss_last10_logged": statistics.fmean(losses[-10:]) if losses else None,
            "val_loss": last("val/loss"), "step_ms_median": timing.get("step_ms_median"),
            "loader_wait_fraction": timing.get("loader_wait_fraction")}


def _global_step(run: Path, rows: list[dict[str, str]]) -> int:
    """Optimizer steps done: ``last.ckpt``'s ``global_step`` (the logged step counts from 0)."""
    last = run / "checkpoints" / "last.ckpt"
    if last.exists():
        import torch

        return int(torch.load(last, map_location="cpu", mmap=True, weights_only=False)["global_step"])
    return 1 + max((int(r["step"]) for r in rows if r.get("step")), default=-1)


def plot(curves: dict[str, dict[str, Any]], variants: dict[str, dict[str, Any]], ref: dict[str, float],
         prompt: int, clip_frames: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=120)
    for (key, label), colour in zip(MODELS, ("tab:blue", "tab:orange")):
        ax.plot(curves[key]["mass"], label=label, color=colour)
    for label, v in variants.items():
        ax.plot(v["curve"]["mass"], label=label, lw=0.9, ls="--")
    lo, hi = ref["mean"] * (1 - MASS_BAR), ref["mean"] * (1 + MASS_BAR)
    ax.axhspan(lo, hi, color="grey", alpha=0.15, label="training data ±30%")
    ax.axhline(ref["mean"], color="grey", lw=1)
    ax.axvline(prompt - 0.5, color="k", lw=0.8, ls=":")
    ax.axvline(clip_frames - 0.5, color="k", lw=0.8, ls="--", label="training clip length")
    ax.set(xlabel="frame (prompt first)", ylabel="digit mass (mean intensity)", ylim=(0, None))
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.quality_report", description=__doc__.split("\n\n")[0])
    for key, label in MODELS:
        p.add_argument(f"--{key.replace('_', '-')}", nargs=3, required=True, metavar=("EVAL_DIR", "GIF", "RUN_DIR"),
                       help=f"{label}: scd-msc eval folder, long generation GIF, training run folder")
    p.add_argument("--variant", nargs="+", action="append", default=[], metavar="LABEL GIF [EVAL_DIR [RUN_DIR]]",
                   help="another long-generation GIF (an ablation, another --context-noise), with its eval "
                   "folder and training run when given; repeatable")
    p.add_argument("--train-shards", required=True, help="training shards (reference digit mass)")
    p.add_argument("--clip-frames", type=int, default=16, help="training clip length (default 16)")
    p.add_argument("--prompt-frames", type=int, default=4, help="prompt frames at the GIFs' start (default 4)")
    p.add_argument("--size", type=int, default=64, help="frame side in pixels (default 64)")
    p.add_argument("--reference-clips", type=int, default=1000, help="training clips for the reference (1000)")
    p.add_argument("--what", default="quality_moving_digits", help="report name")
    p.add_argument("--out", default=str(ROOT / "benchmarks"), help="report folder (default benchmarks/)")
    p.add_argument("--notes", default="", help="markdown appended to the report (how it was run)")
    args = p.parse_args(argv)

    evals, curves, runs, videos = {}, {}, {}, {}
    for key, _ in MODELS:
        eval_dir, gif, run = (Path(x) for x in getattr(args, key))
        evals[key] = json.loads((eval_dir / "eval.json").read_text())
        videos[key] = gif_videos(gif, args.size)  # (V, T, H, W)
        curves[key] = mass_curves(videos[key], args.prompt_frames)
        runs[key] = run_info(run)
    long_len = 4 * args.clip_frames
    variants = {}
    for spec in args.variant:
        if not 2 <= len(spec) <= 4:
            p.error(f"--variant {' '.join(spec)}: expected LABEL GIF [EVAL_DIR [RUN_DIR]], got {len(spec)} values")
        eval_dir, run = (Path(x) if x else None for x in (spec[2:] + [None, None])[:2])
        variants[spec[0]] = {"curve": mass_curves(gif_videos(Path(spec[1]), args.size), args.prompt_frames),
                             "eval": json.loads((eval_dir / "eval.json").read_text()) if eval_dir else None,
                             "run": run_info(run) if run else None}
    lengths = {f"--{key.replace('_', '-')}": curves[key]["frames"] for key, _ in MODELS}
    lengths.update({f"--variant {label}": v["curve"]["frames"] for label, v in variants.items()})
    for name, frames in lengths.items():
        if frames < long_len:  # e.g. a GIF writer that merged repeated frames
            p.error(f"{name} GIF: {frames} frames, expected at least {long_len} "
                    f"(4 × --clip-frames {args.clip_frames})")
    ref = training_mass(args.train_shards, args.clip_frames, args.size, args.reference_clips)
    if ref["clips"] == 0:
        p.error(f"--train-shards {args.train_shards!r}: no clip of {args.clip_frames} frames at "
                f"{args.size}x{args.size} (--clip-frames, --size)")
    data: dict[str, Any] = {"reference_mass": ref, "runs": runs, "mass_curves": curves}
    tail = slice(long_len - args.clip_frames, long_len)  # the last training-length stretch of 4x
    mass_at_4x = lambda c: (statistics.fmean(c["mass"][tail]) / ref["mean"],
                            statistics.fmean(c["ratio_to_prompt"][tail]))
    for key, _ in MODELS:
        data[f"{key}_psnr"] = evals[key]["mean_psnr_1_8"]
        data[f"{key}_ssim"] = evals[key]["mean_ssim_1_8"]
        data[f"{key}_per_horizon"] = evals[key]["per_horizon"]
        data[f"{key}_mass_ratio_at_4x"], data[f"{key}_mass_ratio_to_prompt_at_4x"] = mass_at_4x(curves[key])
    settings = [_setting(label, evals[key], runs[key], mass_at_4x(curves[key])) for key, label in MODELS]
    settings += [_setting(label, v["eval"], v["run"], mass_at_4x(v["curve"])) for label, v in variants.items()]
    data["settings"] = settings
    data["variants"] = {label: {"mass_curve": v["curve"], "eval": v["eval"], "run": v["run"]}
                        for label, v in variants.items()}
    if evals["scd_msc"]["clip_keys"] != evals["causal_dit"]["clip_keys"]:
        p.error("--scd-msc/--causal-dit: the two evals scored different clips (clip_keys differ); "
                "run both on the same --shards with the same --clips")
    gap = paired_gap(evals["scd_msc"]["clip_psnr_1_8"], evals["causal_dit"]["clip_psnr_1_8"])
    data["psnr_gap_db"] = gap
    psnr_ok = data["scd_msc_psnr"] >= data["causal_dit_psnr"] - PSNR_BAR_DB
    mass_ok, dit_ok = (abs(data[f"{k}_mass_ratio_at_4x"] - 1) <= MASS_BAR for k, _ in MODELS)
    checks = [f"- PSNR, mean of horizons 1–8: SCD-MSC **{fmt(data['scd_msc_psnr'])} dB**, causal DiT "
              f"**{fmt(data['causal_dit_psnr'])} dB**; gap {gap['mean']:+.2f} ± {gap['stderr']:.2f} dB "
              f"(paired over {gap['clips']} clips, ± one standard error); bar: SCD-MSC at most "
              f"{PSNR_BAR_DB} dB below: {'PASS' if psnr_ok else 'FAIL'}",
              f"- digit mass over frames {long_len - args.clip_frames}–{long_len - 1} (the last stretch of "
              f"4× the clip length) ÷ training mean {fmt(ref['mean'])}: SCD-MSC "
              f"**{fmt(data['scd_msc_mass_ratio_at_4x'])}**, causal DiT **{fmt(data['causal_dit_mass_ratio_at_4x'])}** "
              f"(÷ own prompt: {fmt(data['scd_msc_mass_ratio_to_prompt_at_4x'])}, "
              f"{fmt(data['causal_dit_mass_ratio_to_prompt_at_4x'])}); bar 1 ± {MASS_BAR} for SCD-MSC: "
              f"{'PASS' if mass_ok else 'FAIL'} (the baseline, for reference: {'within' if dit_ok else 'outside'})"]
    data["checks"] = checks
    device = "cuda" if _cuda() else "cpu"
    stem = report_stem(args.out, args.what, device)
    stem.parent.mkdir(parents=True, exist_ok=True)
    plot(curves, variants, ref, args.prompt_frames, args.clip_frames, stem.parent / f"{stem.name}_mass.png")
    comparison_gif(videos, 4, stem.parent / f"{stem.name}_long.gif")
    train_rows = [{"model": label, **runs[key]} for key, label in MODELS]
    every = max(1, curves["scd_msc"]["frames"] // 16)
    mass_rows = [{"frame": t, **{f"{key}_mass": curves[key]["mass"][t] for key, _ in MODELS},
                  **{f"{key}_bright": curves[key]["bright_fraction"][t] for key, _ in MODELS}}
                 for t in range(0, curves["scd_msc"]["frames"], every)]
    train_rows += [{"model": label, **v["run"]} for label, v in variants.items() if v["run"]]
    extra = "\n".join(["## Checks", "", *checks, "", "## Every model and setting", "",
                       "`train t_ctx max`: context-noise training (`flow.context_noise_max`); "
                       "`t_c`: the level context frames are committed at in eval/generate (`--context-noise`); "
                       f"mass over frames {tail.start}–{tail.stop - 1}.", "", markdown_table(settings),
                       "## Training", "", markdown_table(train_rows),
                       f"## Digit mass per frame (every {every} frame(s); all in the .json)", "",
                       f"Training data: {fmt(ref['mean'])} ± {fmt(ref['std'])} (per-clip std, "
                       f"{ref['clips']} clips). `bright` = share of pixels above 0.5. "
                       f"Plot: `{stem.name}_mass.png`; videos: `{stem.name}_long.gif`.", "",
                       markdown_table(mass_rows), args.notes,
                       "Table: PSNR (dB) / SSIM per horizon step, mean over the held-out clips."])
    rows = [{"step": a["step"], "scd_msc_psnr": a["psnr"], "causal_dit_psnr": b["psnr"],
             "scd_msc_ssim": a["ssim"], "causal_dit_ssim": b["ssim"]}
            for a, b in zip(evals["scd_msc"]["per_horizon"], evals["causal_dit"]["per_horizon"])]
    config = {"clips_scored": evals["scd_msc"]["clips"], "context": evals["scd_msc"]["context"],
              "horizon": evals["scd_msc"]["horizon"], "denoising_steps": evals["scd_msc"]["steps"],
              "eval_shards": evals["scd_msc"]["shards"], "train_shards": args.train_shards,
              "long_generation_frames": curves["scd_msc"]["frames"],
              "long_generation_videos": curves["scd_msc"]["videos"]}
    md, js = write_report(stem, "Moving digits: SCD-MSC small against the causal DiT small",
                          command_line(__spec__.name, argv), config, rows, extra_md=extra, data_json=data,
                          env=env_info(device))
    print("\n".join(checks))
    print(f"wrote {md}, {js}")
    return 0


def _setting(label: str, evaluation: dict | None, run: dict | None, mass: tuple[float, float]) -> dict[str, Any]:
    """One row of the side-by-side table: training and inference setting, PSNR/SSIM, mass."""
    ev = evaluation or {}
    return {"model": label, "train t_ctx max": (run or {}).get("context_noise_max"),
            "t_c": ev.get("context_noise"), "psnr_1_8": ev.get("mean_psnr_1_8"),
            "ssim_1_8": ev.get("mean_ssim_1_8"), "mass ÷ training": mass[0], "mass ÷ prompt": mass[1]}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
