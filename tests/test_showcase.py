"""The Doom showcase (issue 16): the paired comparison, the report tool from hand-made eval
folders (keys, values, bars, recordings, errors), and the pipeline script's checks. The
script's whole SMOKE=1 run takes over a minute on 2 cores, so it is not run here; its pieces
are (``scd-msc eval`` itself: tests/test_eval.py, tests/test_conditioned_cli.py)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools import showcase_report as sr
from tools.bench.stats import Z95, paired_gap

ROOT = Path(__file__).resolve().parent.parent
N = 16  # horizon of the short evals


def test_paired_gap_pairs_by_key_and_drops_what_only_one_side_has():
    gap = paired_gap([10.0, 12.0, 9.0, None], [8.0, 9.0, 11.0, 1.0], ["a", "b", "c", "d"], ["c", "a", "b", "d"])
    diff = [10 - 9, 12 - 11, 9 - 8]  # a, b, c paired by key; d has no score on the left
    assert gap["clips"] == 3 and gap["mean"] == pytest.approx(statistics.fmean(diff))
    assert gap["std"] == pytest.approx(statistics.stdev(diff))
    se = statistics.stdev(diff) / 3 ** 0.5
    assert gap["stderr"] == pytest.approx(se) and gap["ci95"] == pytest.approx([1 - Z95 * se, 1 + Z95 * se])
    assert paired_gap([1.0, 2.0], [0.5, 0.5], ["a", "b"], ["x", "b"])["clips"] == 1  # "a" only on one side
    assert paired_gap([3.0, 1.0], [1.0, 0.0])["mean"] == pytest.approx(1.5)  # no keys: by position


def short_eval(folder: Path, psnr: list[float], shuffled: list[float], floor: list[float], forced: list[float],
               keys=("c0", "c1", "c2")) -> str:
    """An eval.json of three clips whose clip means over horizons 1-8 are the given lists."""
    def scores(clip):
        mean = statistics.fmean(clip)
        return {"per_horizon": [{"step": j + 1, "psnr": mean, "ssim": 0.5} for j in range(N)],
                "mean_psnr_1_8": mean, "mean_ssim_1_8": 0.5, "clip_psnr_1_8": clip, "clips": len(clip)}

    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps({
        **scores(psnr), "clip_keys": list(keys), "clips": 3, "context": 4, "horizon": N, "steps": 25,
        "context_noise": 0.1, "shards": "heldout", "interrupted": False, "shuffled_actions": scores(shuffled),
        "repeat_last": scores(floor), "teacher_forced": scores(forced)}))
    return str(folder)


def long_eval(folder: Path, ratio: float, frames: int = 12, size: int = 8, seed: int = 0) -> str:
    """A long-rollout eval folder: mean colour ``ratio`` × the data's, and two example clips."""
    folder.mkdir(parents=True)
    data = [[0.2, 0.3, 0.4]] * frames
    (folder / "eval.json").write_text(json.dumps({
        "clips": 2, "horizon": frames, "shards": "long", "interrupted": False,
        "mean_colour": {"generated": [[c * ratio for c in row] for row in data], "data": data, "window": 64,
                        "ratios": [[ratio] * 3], "worst_ratio": ratio}}))
    rng = np.random.default_rng(seed)
    shape = (2, 4 + frames, size, size, 3)  # 8 colours: the GIF's palette keeps them exact
    truth = np.random.default_rng(99).integers(0, 2, shape).astype(np.uint8) * 255
    np.savez_compressed(folder / "examples.npz", keys=np.asarray(["c0", "c1"]), truth=truth,
                        generated=rng.integers(0, 2, shape).astype(np.uint8) * 255)
    return str(folder)


def run_dir(folder: Path, steps: int, world_size: int | None = None, batch_size: int = 8) -> str:
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text("step,train/loss\n" + "".join(f"{s},0.5\n" for s in range(steps)))
    if world_size is not None:  # as training/timing.py writes it
        (folder / "timing.json").write_text(json.dumps({"steps": steps - 20, "world_size": world_size,
                                                        "batch_size": batch_size}))
    return str(folder)


@pytest.fixture()
def families(tmp_path) -> dict[str, list[str]]:
    return {"scd_msc": [short_eval(tmp_path / "e_scd", [20.0, 22.0, 24.0], [18.0, 19.0, 20.0], [17.0, 18.0, 19.0],
                                   [25.0, 26.0, 27.0]),
                        long_eval(tmp_path / "l_scd", 1.1), run_dir(tmp_path / "r_scd", 40)],
            "causal_dit": [short_eval(tmp_path / "e_dit", [21.0, 22.0, 22.0], [21.0, 22.0, 22.0], [17.0, 18.0, 19.0],
                                      [24.0, 24.0, 24.0]),
                           long_eval(tmp_path / "l_dit", 0.7, seed=1), run_dir(tmp_path / "r_dit", 40)]}


def argv(families: dict[str, list[str]], out: Path, *extra: str) -> list[str]:
    flags = [x for key, dirs in families.items() for x in (f"--{key.replace('_', '-')}", *dirs)]
    return [*flags, "--out", str(out), *extra]


def test_report_keys_values_bars_and_recordings(families, tmp_path, capsys):
    out = tmp_path / "bench"
    assert sr.main(argv(families, out, "--play-fps", "12.5", "--gif-stride", "3")) == 0
    stem = next(out.glob("showcase_doom_*.json")).with_suffix("")
    data = json.loads(stem.with_suffix(".json").read_text())
    for key in ("scd_msc_psnr", "causal_dit_psnr", "repeat_last_psnr", "shuffled_actions_psnr",
                "teacher_forced_psnr", "rollout_mean_ratio", "play_fps", "steps", "train_steps", "paired", "bars"):
        assert key in data, key
    assert (data["scd_msc_psnr"], data["causal_dit_psnr"]) == (22.0, pytest.approx(65 / 3))
    assert data["repeat_last_psnr"] == 18.0 and data["shuffled_actions_psnr"] == 19.0
    assert data["teacher_forced_psnr"] == {"scd_msc": 26.0, "causal_dit": 24.0}
    assert data["rollout_mean_ratio"] == 1.1 and data["rollout_mean_ratios"]["causal_dit"] == 0.7
    assert (data["play_fps"], data["steps"], data["train_steps"]) == (12.5, 25, 40)
    assert data["autoencoder_ceiling_psnr"] is None  # pixel models: no autoencoder
    dit = data["paired"]["scd_msc - causal_dit"]  # clip by clip: -1, 0, +2
    assert dit["clips"] == 3 and dit["mean"] == pytest.approx(1 / 3)
    assert dit["std"] == pytest.approx(statistics.stdev([-1, 0, 2]))
    assert data["paired"]["scd_msc - repeat_last"]["mean"] == pytest.approx(4.0)
    assert data["paired"]["scd_msc true - shuffled actions"]["mean"] == pytest.approx(3.0)
    results = [b["result"] for b in data["bars"]]
    assert results == ["PASS", "PASS", "PASS", "PASS", "FAIL"]  # +0.33 >= -0.5, +4 >= 1, +3 >= 1, |1.1 - 1| <= 0.2,
    # 12.5 < 60 frames/s
    md = stem.with_suffix(".md").read_text()
    assert "## Paired differences" in md and "| scd_msc - causal_dit" in md and "12.5 frames/s" in md
    gif = Image.open(stem.with_suffix(".gif"))
    assert gif.n_frames == len(range(0, 16, 3))  # 4 + 12 frames, every third
    # engine + 2 models; a header and 2 clips; 8-pixel frames shown 8 times larger, so the names fit
    assert gif.size == (3 * (64 + 2), 12 + 2 * (64 + 2))
    first = np.asarray(gif.convert("RGB"))
    truth = np.load(Path(families["scd_msc"][1]) / "examples.npz")["truth"]
    assert np.array_equal(first[12:76:8, :64:8], truth[0, 0])  # the engine's first frame, top left
    assert np.array_equal(first[12:76, :64], truth[0, 0].repeat(8, 0).repeat(8, 1))
    assert stem.with_suffix(".png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "| SCD-MSC" in printed and "PASS  SCD-MSC PSNR 1–8 ≥ causal DiT − 0.5 dB" in printed


def test_report_bars_fail_and_errors(families, tmp_path, capsys):
    families["scd_msc"][1] = long_eval(tmp_path / "l_bad", 1.3)  # 30% brighter than the data
    assert sr.main(argv(families, tmp_path / "b1")) == 0
    data = json.loads(next((tmp_path / "b1").glob("*.json")).read_text())
    assert data["bars"][3]["result"] == "FAIL" and data["play_fps"] is None
    other = dict(families, causal_dit=[short_eval(tmp_path / "e_other", [1.0] * 3, [1.0] * 3, [1.0] * 3, [1.0] * 3,
                                                  keys=("x", "y", "z")), *families["causal_dit"][1:]])
    with pytest.raises(SystemExit):
        sr.main(argv(other, tmp_path / "b2"))
    assert "clip_keys differ" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sr.main(argv(families, tmp_path / "b3", "--gif-stride", "0"))
    assert "--gif-stride=0: expected an integer >= 1" in capsys.readouterr().err


def test_report_reads_the_play_benchmark(families, tmp_path, capsys):
    play = {"play_fps": 71.5, "page_fps_median": 70.9, "server_ms_mean": 12.25, "server_ms_p95": 13.5,
            "server_fps": 81.6, "frames": 600, "steps": 25, "family": "scd-msc"}
    path = tmp_path / "play.json"
    path.write_text(json.dumps(play))
    assert sr.main(argv(families, tmp_path / "p1", "--play", str(path))) == 0
    stem = next((tmp_path / "p1").glob("showcase_doom_*.json")).with_suffix("")
    data = json.loads(stem.with_suffix(".json").read_text())
    assert data["play_fps"] == 71.5 and data["play"]["server_ms_mean"] == 12.25 and "family" not in data["play"]
    assert data["bars"][4]["value"] == 71.5 and data["bars"][4]["result"] == "PASS"
    assert "71.5 frames/s at the page" in stem.with_suffix(".md").read_text()
    path.write_text(json.dumps({"play_fps": 1.0}))
    with pytest.raises(SystemExit):
        sr.main(argv(families, tmp_path / "p2", "--play", str(path)))
    assert f"--play={str(path)!r}: 'page_fps_median'; expected the JSON of python -m tools.bench_play" \
        in capsys.readouterr().err


def test_report_against_a_baseline_run_pairs_clip_by_clip(families, tmp_path, capsys):
    """A longer run (8 GPUs) reported against the one-GPU run's JSON: each family's PSNR,
    the paired difference on the same clips, the GPUs and training clips of both."""
    families["scd_msc"][2] = run_dir(tmp_path / "r_one", 40, world_size=1)
    assert sr.main(argv(families, tmp_path / "one")) == 0
    baseline = next((tmp_path / "one").glob("showcase_doom_*.json"))
    assert json.loads(baseline.read_text())["families"]["scd_msc"]["run"]["clips_seen"] == 1 * 8 * 40
    longer = dict(families, scd_msc=[short_eval(tmp_path / "e_long", [21.0, 24.0, 24.0], [18.0] * 3, [17.0, 18.0, 19.0],
                                                [25.0] * 3), families["scd_msc"][1],
                                     run_dir(tmp_path / "r_long", 80, world_size=8)])
    assert sr.main(argv(longer, tmp_path / "eight", "--baseline", str(baseline))) == 0
    data = json.loads(next((tmp_path / "eight").glob("showcase_doom_*.json")).read_text())
    scd, dit = data["baseline"]["families"]["scd_msc"], data["baseline"]["families"]["causal_dit"]
    assert (scd["psnr"], scd["baseline_psnr"]) == (23.0, 22.0)
    assert scd["paired"]["clips"] == 3 and scd["paired"]["mean"] == pytest.approx(1.0)  # +1, +2, 0
    assert scd["paired"]["std"] == pytest.approx(1.0)
    assert (scd["clips_seen"], scd["baseline_clips_seen"], scd["world_size"]) == (8 * 8 * 80, 8 * 40, 8)
    assert dit["paired"]["mean"] == 0.0 and dit["clips_seen"] is None  # the DiT's run wrote no timing.json
    md = next((tmp_path / "eight").glob("showcase_doom_*.md")).read_text()
    assert "## Against the baseline run" in md and "| SCD-MSC" in md.split("## Against the baseline run")[1]
    other = dict(longer, scd_msc=[short_eval(tmp_path / "e_x", [1.0] * 3, [1.0] * 3, [1.0] * 3, [1.0] * 3,
                                             keys=("x", "y", "z")), *longer["scd_msc"][1:]],
                 causal_dit=[short_eval(tmp_path / "e_y", [1.0] * 3, [1.0] * 3, [1.0] * 3, [1.0] * 3,
                                        keys=("x", "y", "z")), *longer["causal_dit"][1:]])
    with pytest.raises(SystemExit):
        sr.main(argv(other, tmp_path / "x", "--baseline", str(baseline)))
    assert "it scored other clips (clip_keys differ)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sr.main(argv(longer, tmp_path / "y", "--baseline", str(tmp_path / "missing.json")))
    assert f"--baseline={str(tmp_path / 'missing.json')!r}: FileNotFoundError" in capsys.readouterr().err


def test_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(ROOT / "tools" / "showcase_doom.sh")]).returncode == 0
