"""Files written by ``scd-msc eval``: ``eval.json``, ``eval.md``, ``strip.png``, ``strip.gif``.

The strip shows a few clips, two rows each (ground truth, then generated), one column
per frame; a gap separates the ``k`` context frames (identical in both rows) from the
``n`` horizon frames. The GIF plays the same pairs over time, ground truth left.

Shapes: ``E`` example clips · ``F`` frames · ``C`` channels · ``H, W`` pixels.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange

from scd_msc.inference.evaluate import EvalResult, finite
from scd_msc.media import save_gif, save_png, to_uint8

GAP = 2  # pixels between tiles
GAP_VALUE = 255  # white


def summary_dict(result: EvalResult, info: dict[str, Any]) -> dict[str, Any]:
    """The content of ``eval.json``: ``info`` (model, arguments) plus the metrics."""
    psnr, ssim = result.mean_1_8()
    return {**info, "clips": result.clips, "interrupted": result.interrupted,
            "context": result.context, "horizon": result.horizon,
            "per_horizon": result.per_horizon(), "mean_psnr_1_8": psnr, "mean_ssim_1_8": ssim,
            "clip_keys": result.keys, "clip_psnr_1_8": [finite(v) for v in result.psnr[:, :8].mean(1).tolist()],
            "metrics": "PSNR (dB) and SSIM on [0, 1] frames, mean over clips "
            "per horizon step; null = infinite (identical frames)",
            "versions": {"torch": torch.__version__, "python": platform.python_version()}}


def fmt(x: Any, digits: int) -> str:
    return "inf" if x is None else f"{x:.{digits}f}"


def markdown(summary: dict[str, Any]) -> str:
    """``eval.md``: the setting, then one table row per horizon step."""
    model = summary["model"]
    choice = model.get("weights")  # scd_msc.ema.WeightChoice.as_dict() of a checkpoint
    weights = f", {choice['weights']} weights ({choice['reason']})" if choice else ""
    lines = [f"# Continuation quality: {model.get('preset') or model.get('checkpoint')}", "",
             f"- model family: `{model['family']}`, {model['parameters'] / 1e6:.2f}M parameters, "
             f"frames {model['channels']}×{model['image_size']}²",
             f"- checkpoint: `{model.get('checkpoint')}`, preset: `{model.get('preset')}`" + weights
             + (f", latents decoded by `{summary['decoder']}`" if summary.get("decoder") else ""),
             f"- shards: `{summary['shards']}`, clips: {summary['clips']}, context k={summary['context']}, "
             f"horizon n={summary['horizon']}, steps S={summary['steps']}, seed {summary['seed']}, "
             f"context noise t_c={summary.get('context_noise', 0.0)}, device {summary['device']}",
             *([f"- **interrupted** (Ctrl-C / SIGTERM) after {summary['clips']} of "
                f"{summary.get('clips_requested', '?')} clips: every number below covers those {summary['clips']}"]
               if summary.get("interrupted") else []),
             f"- mean over horizon 1..{min(8, summary['horizon'])}: "
             f"PSNR {fmt(summary['mean_psnr_1_8'], 2)} dB, SSIM {fmt(summary['mean_ssim_1_8'], 4)}",
             "", "| step | PSNR (dB) | SSIM |", "|---:|---:|---:|"]
    lines += [f"| {r['step']} | {fmt(r['psnr'], 2)} | {fmt(r['ssim'], 4)} |" for r in summary["per_horizon"]]
    lines += ["", "Strip: `strip.png` / `strip.gif` (rows: ground truth, generated; "
              "the gap separates the context from the horizon).", ""]
    return "\n".join(lines)


def _pad(images: np.ndarray) -> np.ndarray:
    """``(..., H, W, C)`` -> with a ``GAP``-pixel white border at the bottom and right."""
    pad = [(0, 0)] * (images.ndim - 3) + [(0, GAP), (0, GAP), (0, 0)]
    return np.pad(images, pad, constant_values=GAP_VALUE)


def strip(result: EvalResult) -> np.ndarray:
    """uint8 image ``(rows, cols, C)``: per clip a truth row over a generated row, one
    tile per frame, a wider gap after the context and between clips."""
    pair = torch.stack([result.truth, result.generated], dim=1)  # (E, 2, F, C, H, W)
    tiles = _pad(to_uint8(pair, "... c h w -> ... h w c"))  # (E, 2, F, H+g, W+g, C)
    k, (h, c) = result.context, (tiles.shape[3], tiles.shape[5])
    rows = []
    for clip in tiles:
        for row in clip:  # (F, H+g, W+g, C)
            context, horizon = [np.concatenate(list(part), axis=1) for part in (row[:k], row[k:])]
            rows.append(np.concatenate([context, np.full((h, 3 * GAP, c), GAP_VALUE, np.uint8), horizon], 1))
        rows.append(np.full((2 * GAP, rows[-1].shape[1], c), GAP_VALUE, np.uint8))  # between clips
    return np.concatenate(rows[:-1], axis=0)


def strip_frames(result: EvalResult) -> list[np.ndarray]:
    """One uint8 image per time step: the example clips stacked, ``[truth | generated]``."""
    pair = torch.stack([result.truth, result.generated], dim=1)  # (E, 2, F, C, H, W)
    tiles = _pad(to_uint8(pair, "... c h w -> ... h w c"))  # (E, 2, F, H+g, W+g, C)
    grid = rearrange(tiles, "e r f h w c -> f (e h) (r w) c")
    return list(grid)


def write_report(result: EvalResult, info: dict[str, Any], out: Path, fps: float = 4.0) -> dict[str, Any]:
    """Write the four files into ``out`` (created) and return the JSON summary."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summary_dict(result, info)
    (out / "eval.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    (out / "eval.md").write_text(markdown(summary))
    save_png(strip(result), out / "strip.png")
    save_gif(strip_frames(result), out / "strip.gif", fps)
    return summary
