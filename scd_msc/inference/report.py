"""Files written by ``scd-msc eval``: ``eval.json``, ``eval.md``, ``strip.png``, ``strip.gif``,
``examples.npz``.

The strip shows a few clips, two rows each (ground truth, then generated; a third, for a
model conditioned on actions, generated with the shuffled actions), one column per
frame; a gap separates the ``k`` context frames (identical in every row) from the
``n`` horizon frames. The GIF plays the same rows over time, side by side, ground truth left.

``eval.json`` keeps the true-action scores at the top level (``per_horizon``,
``mean_psnr_1_8``, ``mean_ssim_1_8``, ``clip_psnr_1_8``: what ``tools/quality_report.py``
reads) and adds ``repeat_last``, ``shuffled_actions`` (null without actions or with
``--no-shuffled``), ``teacher_forced`` (null without ``--teacher-forced``) and
``autoencoder_ceiling`` (null unless a latent model was scored against the true frames),
each with the same four keys, and ``mean_colour``: the per-step mean colour of the generated and
the true frames (means over clips) and their ratio per window of ``COLOUR_WINDOW`` steps.
``examples.npz`` holds the strip's clips as uint8 ``(E, F, H, W, C)`` (``truth``,
``generated``, ``shuffled`` when there) and their ``keys``, for side-by-side recordings.

Shapes: ``E`` example clips · ``R`` rows per clip · ``F`` frames · ``C`` channels · ``H, W`` pixels.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from einops import rearrange

from scd_msc.inference.evaluate import (COLOUR_WINDOW, PSNR_MAX, EvalResult, Scores, colour_ratios, finite,
                                        worst_ratio)
from scd_msc.media import save_gif, save_png, to_uint8

GAP = 2  # pixels between tiles
GAP_VALUE = 255  # white


def scores_dict(scores: Optional[Scores]) -> Optional[dict[str, Any]]:
    """The four keys of one set of scores (None stays None)."""
    if scores is None:
        return None
    psnr, ssim = scores.mean_1_8()
    return {"per_horizon": scores.per_horizon(), "mean_psnr_1_8": psnr, "mean_ssim_1_8": ssim,
            "clip_psnr_1_8": scores.clip_psnr_1_8(), "clips": scores.clips}


def summary_dict(result: EvalResult, info: dict[str, Any]) -> dict[str, Any]:
    """The content of ``eval.json``: ``info`` (model, arguments) plus the metrics."""
    main = scores_dict(result.scores)
    return {**info, "clips": result.clips, "interrupted": result.interrupted,
            "context": result.context, "horizon": result.horizon,
            "per_horizon": main["per_horizon"], "mean_psnr_1_8": main["mean_psnr_1_8"],
            "mean_ssim_1_8": main["mean_ssim_1_8"], "clip_keys": result.keys,
            "clip_psnr_1_8": main["clip_psnr_1_8"],
            "shuffled_actions": scores_dict(result.shuffled), "repeat_last": scores_dict(result.repeat_last),
            "teacher_forced": scores_dict(result.teacher_forced), "mean_colour": colour_dict(result),
            "autoencoder_ceiling": scores_dict(result.ceiling),
            "metrics": "PSNR (dB) and SSIM on [0, 1] frames, mean over clips per horizon step; identical "
            f"frames count as PSNR {PSNR_MAX:g} dB. Top level: the model with each clip's true actions "
            "(and label); shuffled_actions: the same clips, prompts and noise with the horizon actions of "
            "another clip; repeat_last: the last context frame repeated (no model); teacher_forced: each horizon "
            "frame predicted from the true frames before it; autoencoder_ceiling: decode(encode(true frame)) against "
            "the true frame (no model)",
            "versions": {"torch": torch.__version__, "python": platform.python_version()}}


def colour_dict(result: EvalResult) -> Optional[dict[str, Any]]:
    """Mean colour per horizon step ``(n, C)`` of the generated and the true frames (means
    over clips), their ratio per window of steps ``(W, C)`` and the ratio farthest from 1."""
    if result.colour is None or result.colour_truth is None:
        return None
    ratios = colour_ratios(result.colour, result.colour_truth)
    return {"generated": result.colour.mean(0).tolist(), "data": result.colour_truth.mean(0).tolist(),
            "window": COLOUR_WINDOW, "ratios": ratios.tolist(), "worst_ratio": finite(worst_ratio(ratios))}


# the extra sets of eval.json: key, words, table column, whether the model's lead over it is shown
SETS = (("shuffled_actions", "shuffled actions", "shuffled", True),
        ("repeat_last", "repeat last context frame", "repeat-last", True),
        ("teacher_forced", "teacher-forced (true history, one frame)", "teacher-forced", False),
        ("autoencoder_ceiling", "autoencoder ceiling, decode(encode(true frames))", "ae-ceiling", False))


def fmt(x: Any, digits: int) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def markdown(summary: dict[str, Any]) -> str:
    """``eval.md``: the setting, then one table row per horizon step (columns per set)."""
    model = summary["model"]
    sets = [(label, summary[key]) for key, _, label, _ in SETS if summary.get(key)]
    header = ["step", "PSNR (dB)", "SSIM"] + [f"{label} {m}" for label, _ in sets for m in ("PSNR", "SSIM")]
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
             *mean_lines(summary, "- "),
             "", "| " + " | ".join(header) + " |", "|---:" * len(header) + "|"]
    for i, r in enumerate(summary["per_horizon"]):
        extra = "".join(f" {fmt(s['per_horizon'][i]['psnr'], 2)} | {fmt(s['per_horizon'][i]['ssim'], 4)} |"
                        for _, s in sets)
        lines.append(f"| {r['step']} | {fmt(r['psnr'], 2)} | {fmt(r['ssim'], 4)} |{extra}")
    rows = "ground truth, generated" + (", generated with shuffled actions" if summary.get("shuffled_actions")
                                        else "")
    lines += ["", f"Strip: `strip.png` / `strip.gif` (rows: {rows}; the gap separates the context from the "
              "horizon).", ""]
    return "\n".join(lines)


def mean_lines(summary: dict[str, Any], bullet: str = "") -> list[str]:
    """One line per set: its mean over horizon steps 1..8 (and the model's lead over it)."""
    m = min(8, summary["horizon"])
    main = " (true actions)" if summary.get("shuffled_actions") else ""
    lines = [f"{bullet}mean over steps 1..{m}{main}: PSNR {fmt(summary['mean_psnr_1_8'], 2)} dB, "
             f"SSIM {fmt(summary['mean_ssim_1_8'], 4)}"]
    for key, what, _, lead in SETS:
        s = summary.get(key)
        if s:
            lines.append(f"{bullet}mean over steps 1..{m}, {what}: PSNR {fmt(s['mean_psnr_1_8'], 2)} dB, "
                         f"SSIM {fmt(s['mean_ssim_1_8'], 4)}" + (gap(summary, s) if lead else ""))
    colour = summary.get("mean_colour")
    if colour and colour["worst_ratio"] is not None:
        lines.append(f"{bullet}mean colour of the generated frames ÷ the data's, per window of "
                     f"{min(colour['window'], summary['horizon'])} steps and channel: farthest from 1: "
                     f"{colour['worst_ratio']:.3f}")
    return lines


def gap(summary: dict[str, Any], other: dict[str, Any]) -> str:
    """``" (the model leads by +1.23 dB)"``, or "" when either mean is missing."""
    a, b = summary["mean_psnr_1_8"], other["mean_psnr_1_8"]
    return "" if a is None or b is None else f" (the model leads by {a - b:+.2f} dB)"


def _pad(images: np.ndarray) -> np.ndarray:
    """``(..., H, W, C)`` -> with a ``GAP``-pixel white border at the bottom and right."""
    pad = [(0, 0)] * (images.ndim - 3) + [(0, GAP), (0, GAP), (0, 0)]
    return np.pad(images, pad, constant_values=GAP_VALUE)


def _rows(result: EvalResult) -> torch.Tensor:
    """``(E, R, F, C, H, W)``: truth, generated and, when there, generated with shuffled actions."""
    rows = [result.truth, result.generated] + ([] if result.shuffled_generated is None
                                               else [result.shuffled_generated])
    return torch.stack(rows, dim=1)


def strip(result: EvalResult) -> np.ndarray:
    """uint8 image ``(rows, cols, C)``: per clip a truth row over the generated row(s), one
    tile per frame, a wider gap after the context and between clips."""
    tiles = _pad(to_uint8(_rows(result), "... c h w -> ... h w c"))  # (E, R, F, H+g, W+g, C)
    k, (h, c) = result.context, (tiles.shape[3], tiles.shape[5])
    rows = []
    for clip in tiles:
        for row in clip:  # (F, H+g, W+g, C)
            context, horizon = [np.concatenate(list(part), axis=1) for part in (row[:k], row[k:])]
            rows.append(np.concatenate([context, np.full((h, 3 * GAP, c), GAP_VALUE, np.uint8), horizon], 1))
        rows.append(np.full((2 * GAP, rows[-1].shape[1], c), GAP_VALUE, np.uint8))  # between clips
    return np.concatenate(rows[:-1], axis=0)


def strip_frames(result: EvalResult) -> list[np.ndarray]:
    """One uint8 image per time step: the example clips stacked, ``[truth | generated | ...]``."""
    tiles = _pad(to_uint8(_rows(result), "... c h w -> ... h w c"))  # (E, R, F, H+g, W+g, C)
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
    write_examples(result, out / "examples.npz")
    return summary


def write_examples(result: EvalResult, path: Path) -> None:
    """The strip's clips as uint8 ``(E, F, H, W, C)`` arrays (and their keys) in ``path``."""
    rows = {"truth": result.truth, "generated": result.generated}
    if result.shuffled_generated is not None:
        rows["shuffled"] = result.shuffled_generated
    arrays = {name: to_uint8(row, "e f c h w -> e f h w c") for name, row in rows.items()}
    np.savez_compressed(path, keys=np.asarray(result.keys[:len(result.truth)]), **arrays)
