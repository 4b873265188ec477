"""``python -m tools.bench_autoencoder`` end to end on CPU with tiny settings: two datasets
in one invocation (a per-dataset override), the real ``scd-msc train-ae`` runs, and the
report's PSNR is the one recomputed here by hand from the checkpoint's EMA weights and the
held-out frames; the JSON keys the lead reads, the PNG, and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scd_msc.checkpoint import load_autoencoder
from scd_msc.cli import main as scd_main
from scd_msc.data import ClipDataset

ROOT = Path(__file__).resolve().parents[1]
S, FRAMES = 16, 4
TINY = ["data.num_workers=0", "data.batch_size=2", "data.shuffle_buffer=4", "model.width=8", "model.max_width=16",
        "model.groups=4", "train.lr=3e-3", "train.warmup_steps=1"]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.bench_autoencoder", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench_ae")
    for out, clips, seed in (("train", 8, 0), ("val", 3, 1)):
        assert scd_main(["make-shards", "bouncing-shapes", "--channels", "3", "--out", str(root / out), "--frames",
                         str(FRAMES), "--size", str(S), "--clips", str(clips), "--seed", str(seed),
                         "--no-progress"]) == 0
    return root


def test_two_datasets_report_psnr_computed_from_the_held_out_frames(shards, tmp_path):
    config = str(ROOT / "configs" / "ae_tiny.yaml")
    proc = bench("--datasets", f"a={config}", f"b={config}", "--steps", "4", "--eval-frames", "10",
                 "--decode-iters", "3", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
                 f"data.train_shards={shards}/train/*.tar", f"data.val_shards={shards}/val/*.tar", *TINY,
                 "b:model.upsample=pixel_shuffle")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (js,) = (tmp_path / "out").glob("autoencoder_cpu_*.json")
    data = json.loads(js.read_text())
    assert js.with_suffix(".md").is_file() and {"env", "config", "rows", "checks", "bars"} <= set(data)
    rows = {r["dataset"]: r for r in data["rows"]}
    assert set(rows) == {"a", "b"}
    for name, row in rows.items():
        assert {"dataset", "factor", "channels", "psnr", "ssim", "decode_ms_per_frame", "train_minutes"} <= set(row)
        assert (row["factor"], row["channels"], row["compression"], row["status"]) == (4, 8, 6.0, "ok")
        assert row["train_steps"] == 4 and row["eval_frames"] == 10 and row["weights"] == "ema"
        assert row["decode_ms_per_frame"] == row["decode_ms_eager"] > 0 and row["decode_ms_fast"] is None  # CPU
        assert 0 < row["train_minutes"] < 5 and 0 < row["ssim"] <= 1
        # the PSNR by hand: the EMA weights on the first 10 held-out frames, per frame, averaged
        ae = load_autoencoder(str(tmp_path / "work" / name / "checkpoints" / "last.ckpt"), weights="ema")
        clips = ClipDataset(f"{shards}/val/*.tar", FRAMES, 3, S, resampled=False)
        x = torch.cat([c["video"] for c in clips])[:10]  # (10, 3, S, S) in [-1, 1]
        with torch.no_grad():
            y = ae.decode(ae.encode(x))
        mse = ((y - x) / 2).pow(2).mean(dim=(1, 2, 3))  # on [0, 1]
        assert np.isfinite(row["psnr"]) and row["psnr"] == pytest.approx(float((-10 * mse.log10()).mean()), abs=1e-3)
        png = Image.open(js.parent / f"{js.stem}_{name}.png")
        assert png.size == (8 * S * 8, 2 * S * 8)  # 8 frames, originals above reconstructions, 8x scale
    assert "model.upsample=pixel_shuffle" in data["config"]["b.train_overrides"]
    assert "model.upsample" not in data["config"]["a.train_overrides"]


def test_one_line_errors(tmp_path):
    cases = [(["--datasets", "doom"], "--minutes and --steps are both unset"),
             (["--datasets", "nope", "--steps", "2"], "--datasets nope: config "),
             (["--datasets", "doom", "--steps", "2", "atari:train.lr=1"],
              "override 'atari:train.lr=1': 'atari' is not one of --datasets (doom)"),
             (["--datasets", "doom", "--steps", "0"], "--steps=0: expected an integer >= 1")]
    for args, message in cases:
        proc = bench(*args, "--out", str(tmp_path))
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("python -m tools.bench_autoencoder: error: " + message), last
