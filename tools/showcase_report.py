"""The Doom showcase report: SCD-MSC against the causal DiT (and SCD-dense) from the files
``tools/showcase_doom.sh`` leaves behind.

Reads, per family, two ``scd-msc eval`` folders and the training run folder:

* the **short eval** (``eval.json``, held-out clips, 4 context frames, horizons 1–16, with
  ``--teacher-forced``): autoregressive PSNR/SSIM per horizon with the true actions, the
  same with shuffled actions, the repeat-last-frame floor, teacher-forced next-frame PSNR,
  and each clip's mean PSNR over horizons 1–8 (``clip_psnr_1_8`` with ``clip_keys``);
* the **long eval** (a 512-frame rollout under the recorded actions, ``--no-shuffled``):
  ``mean_colour`` (the generated frames' mean colour against the data's, per window of
  64 frames and channel) and ``examples.npz`` (the example clips, engine and model);
* the run (``timing.json``, ``metrics.csv``, ``last.ckpt``): steps and step time;

and (``--play``) the JSON of ``python -m tools.bench_play`` on the SCD-MSC checkpoint:
frames/s at the page (``play_fps``) and the server's ms per frame; (``--baseline``) an
earlier report's JSON on the same held-out clips, say the one-GPU run against a longer
multi-GPU one: each family's PSNR against it, paired clip by clip (``baseline``), with the
GPUs and training clips of both runs.

Writes ``<out>/<what>_<gpu>_<date>.md`` + ``.json`` (keys ``scd_msc_psnr``,
``causal_dit_psnr``, ``repeat_last_psnr``, ``shuffled_actions_psnr`` (SCD-MSC),
``teacher_forced_psnr`` per family, ``rollout_mean_ratio`` (SCD-MSC),
``play_fps``, ``steps``, ``train_steps``, ``paired``, ``bars``, ``families``), a ``.gif``
(the engine and each model side by side under the same recorded actions) and a ``.png``
(PSNR vs horizon per family with the shuffled-action and repeat-last curves; the
rollout's mean colour against the data's).

Paired differences take the per-clip means over horizons 1–8 of the same clips (paired
by clip key): mean, standard deviation, standard error and a 95% interval (normal
approximation). The bars are decided on the means over clips.

Shapes: ``E`` example clips · ``F`` frames · ``H, W`` pixels · ``C`` channels.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np

from scd_msc.media import display_scale, save_gif, to_channels
from tools.bench.env import env_info
from tools.bench.report import check, command_line, fmt, markdown_table, report_stem, write_report
from tools.bench.stats import paired_gap
from tools.quality_report import run_info

ROOT = Path(__file__).resolve().parent.parent  # the checkout: reports go to its benchmarks/
FAMILIES = {"scd_msc": "SCD-MSC", "causal_dit": "causal DiT", "scd_dense": "SCD-dense"}
COLOURS = {"scd_msc": "tab:blue", "causal_dit": "tab:orange", "scd_dense": "tab:green"}
DIT_MARGIN_DB = 0.5  # SCD-MSC at most 0.5 dB below the DiT, horizons 1-8
FLOOR_LEAD_DB = 1.0  # SCD-MSC at least 1 dB above repeat-last, horizons 1-8
ACTION_LEAD_DB = 1.0  # true actions at least 1 dB above shuffled actions, horizons 1-8
COLOUR_BAR = 0.20  # the rollout's mean colour within ±20% of the data's
PLAY_FPS_BAR = 60.0  # scd-msc play at batch 1 on one H200 (a 60 Hz display)
PLAY_KEYS = ("play_fps", "page_fps_median", "server_ms_mean", "server_ms_p95", "server_fps", "frames", "steps")


def load_family(key: str, eval_dir: Path, long_dir: Path, run: Path) -> dict[str, Any]:
    """One family's numbers from its short eval, long eval and run folder."""
    short = json.loads((eval_dir / "eval.json").read_text())
    long = json.loads((long_dir / "eval.json").read_text())
    pick = lambda s, k: None if short.get(s) is None else short[s][k]
    colour = long.get("mean_colour") or {}
    return {"label": FAMILIES[key], "psnr": short["mean_psnr_1_8"], "ssim": short["mean_ssim_1_8"],
            "teacher_forced_psnr": pick("teacher_forced", "mean_psnr_1_8"),
            "shuffled_actions_psnr": pick("shuffled_actions", "mean_psnr_1_8"),
            "repeat_last_psnr": pick("repeat_last", "mean_psnr_1_8"),
            "autoencoder_ceiling_psnr": pick("autoencoder_ceiling", "mean_psnr_1_8"),  # latent models (issue 15)
            "per_horizon": short["per_horizon"], "shuffled_per_horizon": pick("shuffled_actions", "per_horizon"),
            "teacher_forced_per_horizon": pick("teacher_forced", "per_horizon"),
            "repeat_last_per_horizon": pick("repeat_last", "per_horizon"),
            "rollout_mean_ratio": colour.get("worst_ratio"), "rollout_ratios": colour.get("ratios"),
            "rollout_frames": long["horizon"], "rollout_clips": long["clips"],
            "rollout_colour": {"generated": colour.get("generated"), "data": colour.get("data")},
            "interrupted": bool(short.get("interrupted") or long.get("interrupted")),
            "clip_psnr_1_8": short["clip_psnr_1_8"], "clip_keys": short["clip_keys"],  # what --baseline pairs
            "run": clips_seen(run, run_info(run)), "_short": short, "_long": long, "_long_dir": long_dir}


def clips_seen(run: Path, info: dict[str, Any]) -> dict[str, Any]:
    """``info`` (:func:`run_info`) plus the GPUs (``world_size``), the clips per GPU per step
    and the training clips seen, from the run's ``timing.json`` and its steps (None where
    a file lacks them)."""
    timing = json.loads((run / "timing.json").read_text()) if (run / "timing.json").exists() else {}
    world, batch, steps = timing.get("world_size"), timing.get("batch_size"), info["steps"]
    seen = None if None in (world, batch, steps) else world * batch * steps
    return {**info, "world_size": world, "batch_size": batch, "clips_seen": seen}


def paired(families: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Paired differences of the per-clip PSNR over horizons 1–8 (same clips, by key)."""
    scd = families["scd_msc"]["_short"]
    out = {}

    def add(name: str, a: dict, a_set: Optional[str], b: dict, b_set: Optional[str]) -> None:
        values = lambda e, s: e["clip_psnr_1_8"] if s is None else (e.get(s) or {}).get("clip_psnr_1_8")
        va, vb = values(a, a_set), values(b, b_set)
        if va is not None and vb is not None:
            out[name] = paired_gap(va, vb, a["clip_keys"], b["clip_keys"])

    for key, fam in families.items():
        if key != "scd_msc":
            add(f"scd_msc - {key}", scd, None, fam["_short"], None)
    add("scd_msc - repeat_last", scd, None, scd, "repeat_last")
    add("scd_msc true - shuffled actions", scd, None, scd, "shuffled_actions")
    if "scd_dense" in families:
        add("scd_dense - causal_dit", families["scd_dense"]["_short"], None, families["causal_dit"]["_short"], None)
    return out


def bars(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The four bars of issue 16: value, threshold, PASS/FAIL/N/A."""
    sub = lambda a, b: None if a is None or b is None else a - b
    ratio = data["rollout_mean_ratio"]
    return [
        {"bar": f"SCD-MSC PSNR 1–8 ≥ causal DiT − {DIT_MARGIN_DB} dB", "value": sub(data["scd_msc_psnr"],
         data["causal_dit_psnr"]), "threshold": -DIT_MARGIN_DB},
        {"bar": f"SCD-MSC ≥ repeat-last + {FLOOR_LEAD_DB} dB", "value": sub(data["scd_msc_psnr"],
         data["repeat_last_psnr"]), "threshold": FLOOR_LEAD_DB},
        {"bar": f"true actions ≥ shuffled + {ACTION_LEAD_DB} dB (SCD-MSC)", "value": sub(data["scd_msc_psnr"],
         data["shuffled_actions_psnr"]), "threshold": ACTION_LEAD_DB},
        {"bar": f"rollout mean colour within ±{COLOUR_BAR:.0%} of the data's "
                "(SCD-MSC: |ratio - 1|, worst window/channel)",
         "value": None if ratio is None else abs(ratio - 1), "threshold": COLOUR_BAR, "op": "<="},
        {"bar": f"scd-msc play ≥ {PLAY_FPS_BAR:g} frames/s (SCD-MSC, the scores' steps)", "value": data["play_fps"],
         "threshold": PLAY_FPS_BAR},
    ]


def against(families: dict[str, dict[str, Any]], baseline: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per family in both runs: this run's and the baseline's PSNR over horizons 1–8, the
    paired difference (this − baseline, clip by clip) and the clips each saw in training."""
    out = {}
    for key, fam in families.items():
        base = (baseline.get("families") or {}).get(key)
        if base is None:
            continue
        gap = None
        if base.get("clip_psnr_1_8") is not None:
            gap = paired_gap(fam["clip_psnr_1_8"], base["clip_psnr_1_8"], fam["clip_keys"], base["clip_keys"])
        out[key] = {"psnr": fam["psnr"], "baseline_psnr": base["psnr"], "paired": gap,
                    "clips_seen": fam["run"].get("clips_seen"), "baseline_clips_seen": base["run"].get("clips_seen"),
                    "world_size": fam["run"].get("world_size"), "baseline_world_size": base["run"].get("world_size")}
    return out


def decide(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for r in rows:
        r["result"] = check(r["value"], r.pop("op", ">="), r["threshold"])
    return rows


def side_by_side(families: dict[str, dict[str, Any]], clips: int, stride: int) -> list[np.ndarray]:
    """GIF frames ``(rows, cols, 3)``: per example clip a row ``[engine | family ...]`` under a
    header naming the columns; every ``stride``-th frame of the long rollouts. Frames narrower
    than 64 pixels are enlarged (nearest neighbour, an integer factor) so the names fit."""
    examples = {k: np.load(f["_long_dir"] / "examples.npz") for k, f in families.items()}
    first = examples["scd_msc"]
    for key, ex in examples.items():
        if list(ex["keys"]) != list(first["keys"]):
            raise ValueError(f"--{key.replace('_', '-')}: its long rollout shows other clips "
                             f"({list(ex['keys'])}) than SCD-MSC's ({list(first['keys'])}); expected the same shards")
    columns = [("engine", first["truth"])] + [(families[k]["label"], ex["generated"]) for k, ex in examples.items()]
    e = min(clips, first["truth"].shape[0])
    f, h, w, _ = first["truth"].shape[1:]  # (E, F, H, W, C)
    scale = display_scale(w)
    h, w = h * scale, w * scale
    gap, head = 2, 12
    canvas = np.full((f, head + e * (h + gap), len(columns) * (w + gap), 3), 255, np.uint8)
    for j, (_, video) in enumerate(columns):
        for i in range(e):
            tile = to_channels(video[i], 3)  # (F, H, W, 3)
            tile = tile.repeat(scale, 1).repeat(scale, 2)  # (F, H·scale, W·scale, 3)
            canvas[:, head + i * (h + gap):head + i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = tile
    header = _header([name for name, _ in columns], w + gap, head, canvas.shape[2])
    canvas[:, :head] = header
    return list(canvas[::stride])


def _header(names: list[str], width: int, height: int, total: int) -> np.ndarray:
    """A white strip ``(height, total, 3)`` with each name at the left of its column."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (total, height), "white")
    draw = ImageDraw.Draw(image)
    for j, name in enumerate(names):
        draw.text((j * width + 1, 0), name[: max(1, width // 6)], fill="black")
    return np.asarray(image)


def plot(families: dict[str, dict[str, Any]], path: Path) -> None:
    """PSNR vs horizon per family (solid: true actions, dashed: shuffled, dotted: teacher-forced;
    grey: repeat-last) and the rollout's mean colour (mean of the channels) against the data's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.6), dpi=120)
    for key, fam in families.items():
        col = COLOURS[key]
        steps = [r["step"] for r in fam["per_horizon"]]
        ax.plot(steps, [r["psnr"] for r in fam["per_horizon"]], color=col, label=fam["label"])
        for name, style in (("shuffled_per_horizon", "--"), ("teacher_forced_per_horizon", ":")):
            if fam[name]:
                what = "shuffled actions" if name.startswith("shuffled") else "teacher-forced"
                ax.plot(steps, [r["psnr"] for r in fam[name]], color=col, ls=style, lw=1,
                        label=f"{fam['label']}, {what}")
        generated = fam["rollout_colour"]["generated"]
        if generated:
            bx.plot(np.asarray(generated).mean(1), color=col, lw=1, label=fam["label"])
    floor = families["scd_msc"]["repeat_last_per_horizon"]
    if floor:
        ax.plot([r["step"] for r in floor], [r["psnr"] for r in floor], color="grey", lw=2, label="repeat last frame")
    data = families["scd_msc"]["rollout_colour"]["data"]
    if data:
        ref = np.asarray(data).mean(1)
        bx.plot(ref, color="black", lw=1, label="data (engine)")
        bx.fill_between(range(len(ref)), ref * (1 - COLOUR_BAR), ref * (1 + COLOUR_BAR), color="grey", alpha=0.15,
                        label=f"data ±{COLOUR_BAR:.0%}")
    ax.set(xlabel="horizon step", ylabel="PSNR (dB)", title="held-out clips, 4 context frames")
    bx.set(xlabel="rollout frame", ylabel="mean colour (mean of RGB, [0, 1])", ylim=(0, None),
           title="rollout under the recorded actions")
    ax.legend(fontsize=6, ncol=2)
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.showcase_report", description=__doc__.split("\n\n")[0])
    for key, label in FAMILIES.items():
        p.add_argument(f"--{key.replace('_', '-')}", nargs=3, required=key != "scd_dense",
                       metavar=("EVAL_DIR", "LONG_EVAL_DIR", "RUN_DIR"),
                       help=f"{label}: short eval folder, long-rollout eval folder, training run folder")
    p.add_argument("--play", default=None, metavar="JSON", help="python -m tools.bench_play's JSON for the SCD-MSC "
                   "checkpoint (its play_fps and server ms per frame)")
    p.add_argument("--play-fps", type=float, default=None, help="frames/s measured by hand with scd-msc play, "
                   "without --play (default: not measured, null)")
    p.add_argument("--space", default="pixels 64x64", help="what the models make, for the report (default "
                   "'pixels 64x64')")
    p.add_argument("--gif-clips", type=int, default=2, help="example clips (rows) in the GIF (default 2)")
    p.add_argument("--gif-stride", type=int, default=2, help="every n-th rollout frame in the GIF (default 2)")
    p.add_argument("--what", default="showcase_doom", help="report name (default showcase_doom)")
    p.add_argument("--out", default=str(ROOT / "benchmarks"), help="report folder (default benchmarks/)")
    p.add_argument("--notes", default="", help="markdown appended to the report (how it was run)")
    p.add_argument("--baseline", default=None, metavar="JSON", help="an earlier report's JSON on the same held-out "
                   "clips (say the one-GPU run): each family's PSNR against it, clip by clip")
    args = p.parse_args(argv)
    for name in ("gif_clips", "gif_stride"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)}: expected an integer >= 1")

    play: dict[str, Any] = {}
    if args.play is not None:
        try:
            play = json.loads(Path(args.play).read_text())
            play = {k: play[k] for k in PLAY_KEYS}
        except (OSError, json.JSONDecodeError, KeyError) as err:
            p.error(f"--play={args.play!r}: {err}; expected the JSON of python -m tools.bench_play")
    baseline: Optional[dict[str, Any]] = None
    if args.baseline is not None:
        try:
            baseline = json.loads(Path(args.baseline).read_text())
            if not isinstance(baseline["families"]["scd_msc"]["psnr"], (int, float)):
                raise TypeError("families.scd_msc.psnr is not a number")
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            p.error(f"--baseline={args.baseline!r}: {err!r}; expected the JSON of an earlier python -m "
                    "tools.showcase_report")
    families = {}
    for key in FAMILIES:
        dirs = getattr(args, key)
        if dirs is not None:
            try:
                families[key] = load_family(key, *(Path(d) for d in dirs))
            except (OSError, json.JSONDecodeError, KeyError) as err:
                p.error(f"--{key.replace('_', '-')} {' '.join(dirs)}: {err}")
    keys = families["scd_msc"]["_short"]["clip_keys"]
    for key, fam in families.items():
        if fam["_short"]["clip_keys"] != keys:
            p.error(f"--{key.replace('_', '-')}: its eval scored other clips than SCD-MSC's (clip_keys differ); "
                    "expected the same --shards and --clips")
    scd = families["scd_msc"]
    data: dict[str, Any] = {
        "space": args.space,
        **{f"{k}_psnr": f["psnr"] for k, f in families.items()},
        "repeat_last_psnr": scd["repeat_last_psnr"], "shuffled_actions_psnr": scd["shuffled_actions_psnr"],
        "autoencoder_ceiling_psnr": scd["autoencoder_ceiling_psnr"],
        "teacher_forced_psnr": {k: f["teacher_forced_psnr"] for k, f in families.items()},
        "rollout_mean_ratio": scd["rollout_mean_ratio"],
        "rollout_mean_ratios": {k: f["rollout_mean_ratio"] for k, f in families.items()},
        "play_fps": play.get("play_fps", args.play_fps), "play": play or None, "steps": scd["_short"]["steps"],
        "train_steps": min(f["run"]["steps"] for f in families.values()),
        "paired": paired(families)}
    if baseline is not None:
        base_keys = baseline["families"]["scd_msc"].get("clip_keys")
        if base_keys is not None and base_keys != keys:
            p.error(f"--baseline={args.baseline!r}: it scored other clips (clip_keys differ); expected a run on "
                    "the same held-out shards and --clips")
        data["baseline"] = {"file": args.baseline, "families": against(families, baseline)}
    data["bars"] = decide(bars(data))
    data["families"] = {k: {n: v for n, v in f.items() if not n.startswith("_")} for k, f in families.items()}
    device = "cuda" if _cuda() else "cpu"
    stem = report_stem(args.out, args.what, device)
    stem.parent.mkdir(parents=True, exist_ok=True)
    plot(families, stem.with_suffix(".png"))
    try:
        save_gif(side_by_side(families, args.gif_clips, args.gif_stride), stem.with_suffix(".gif"), fps=8)
    except ValueError as err:
        p.error(str(err))
    md, js = write_report(stem, f"Doom showcase: SCD-MSC against the causal DiT ({args.space})",
                          command_line(__spec__.name, argv), _config(scd), _horizon_rows(families),
                          extra_md=_extra_md(data, families, stem.name, args.notes), data_json=data,
                          env=env_info(device))
    print(markdown_table([{"model": f["label"], "PSNR 1-8": f["psnr"], "teacher-forced": f["teacher_forced_psnr"],
                           "shuffled actions": f["shuffled_actions_psnr"], "repeat-last": f["repeat_last_psnr"],
                           "rollout colour ratio": f["rollout_mean_ratio"], "train steps": f["run"]["steps"],
                           "training clips": f["run"]["clips_seen"]}
                          for f in families.values()]))
    for r in data["bars"]:
        print(f"{r['result']:4}  {r['bar']}: {fmt(r['value'])}")
    print(f"wrote {md}, {js}, {stem.with_suffix('.gif')}, {stem.with_suffix('.png')}")
    return 0


def _config(scd: dict[str, Any]) -> dict[str, Any]:
    short, long = scd["_short"], scd["_long"]
    return {"clips_scored": short["clips"], "context": short["context"], "horizon": short["horizon"],
            "denoising_steps": short["steps"], "context_noise": short.get("context_noise"),
            "eval_shards": short["shards"], "rollout_shards": long["shards"], "rollout_frames": long["horizon"],
            "rollout_clips": long["clips"]}


def _horizon_rows(families: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    scd = families["scd_msc"]
    rows = []
    for j, r in enumerate(scd["per_horizon"]):
        row: dict[str, Any] = {"step": r["step"]}
        row.update({f"{k} PSNR": f["per_horizon"][j]["psnr"] for k, f in families.items()})
        for name, key in (("repeat-last", "repeat_last_per_horizon"), ("scd_msc shuffled", "shuffled_per_horizon"),
                          ("scd_msc teacher-forced", "teacher_forced_per_horizon")):
            row[f"{name} PSNR"] = scd[key][j]["psnr"] if scd[key] else None
        rows.append(row)
    return rows


def _play_line(data: dict[str, Any]) -> str:
    play = data["play"]
    if not play:
        return " (null: not measured)" if data["play_fps"] is None else " (entered by hand)"
    return (f" at the page (median of the page's read-out {fmt(play['page_fps_median'])}); the server's model time "
            f"{fmt(play['server_ms_mean'])} ms/frame mean, p95 {fmt(play['server_ms_p95'])} "
            f"({fmt(play['frames'])} frames, {play['steps']} steps, python -m tools.bench_play)")


def _extra_md(data: dict[str, Any], families: dict[str, dict[str, Any]], name: str, notes: str) -> str:
    rows = [{"model": f["label"], "PSNR 1–8": f["psnr"], "SSIM 1–8": f["ssim"],
             "teacher-forced PSNR 1–8": f["teacher_forced_psnr"],
             "shuffled-actions PSNR 1–8": f["shuffled_actions_psnr"],
             "rollout colour ratio (worst)": f["rollout_mean_ratio"], "train steps": f["run"]["steps"],
             "step ms": f["run"]["step_ms_median"], "interrupted eval": f["interrupted"]} for f in families.values()]
    pairs = [{"difference (dB, clip by clip)": k, "clips": v["clips"], "mean": v["mean"], "std": v["std"],
              "95% CI": f"[{fmt(v['ci95'][0])}, {fmt(v['ci95'][1])}]"} for k, v in data["paired"].items()]
    lines = ["## Bars", "", markdown_table(data["bars"], ["bar", "value", "threshold", "result"]),
             f"Repeat-last floor (horizons 1–8): {fmt(data['repeat_last_psnr'])} dB. Play: "
             f"{fmt(data['play_fps'])} frames/s{_play_line(data)}. Autoencoder ceiling (latent models): "
             f"{fmt(data['autoencoder_ceiling_psnr'])} dB.", "", "## Families", "", markdown_table(rows),
             "## Paired differences (per-clip PSNR over horizons 1–8, same clips)", "", markdown_table(pairs),
             *_baseline_lines(data.get("baseline"), families),
             f"Recordings: `{name}.gif` (engine, then each model, under the same recorded actions); "
             f"plot: `{name}.png`.", "", notes, "", "Table: PSNR (dB) per horizon step, mean over the held-out clips."]
    return "\n".join(lines)


def _baseline_lines(baseline: Optional[dict[str, Any]], families: dict[str, dict[str, Any]]) -> list[str]:
    if baseline is None:
        return []
    rows = []
    for key, b in baseline["families"].items():
        gap = b["paired"] or {}
        rows.append({"model": families[key]["label"], "PSNR 1–8": b["psnr"], "baseline PSNR 1–8": b["baseline_psnr"],
                     "paired difference (dB)": gap.get("mean"),
                     "95% CI": f"[{fmt(gap['ci95'][0])}, {fmt(gap['ci95'][1])}]" if gap else None,
                     "GPUs": b["world_size"], "baseline GPUs": b["baseline_world_size"],
                     "training clips": b["clips_seen"], "baseline training clips": b["baseline_clips_seen"]})
    return [f"## Against the baseline run (`{baseline['file']}`, same held-out clips)", "", markdown_table(rows)]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
