"""``scd-msc generate``: exact frame counts, GIF, prompts, checkpoints, argument errors
and interrupts (tiny random-init preset, CPU, a few frames of 2 denoising steps)."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from scd_msc.cli import main
from scd_msc.data import ClipDataset, make_shards
from scd_msc.inference import inputs
from scd_msc.inference.generate import InterruptGuard, stream_to_sinks
from scd_msc.inference.writers import open_sinks
from scd_msc.models import build_model, preset_config

TINY = "scd-msc-tiny"
BASE = ["generate", "--preset", TINY, "--steps", "2", "--no-progress"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[int, str]:
    """Grey moving-digit shards of 32×32 (the tiny preset's size) and of 16×16."""
    cfg = preset_config(TINY)
    assert (cfg.channels, cfg.image_size) == (1, 32)
    out = {}
    for size in (32, 16):
        folder = tmp_path_factory.mktemp(f"digits{size}")
        make_shards("moving-digits", folder, 8, size, clips=3, channels=1, progress=False)
        out[size] = str(folder / "*.tar")
    return out


def mp4_frames(path: Path) -> np.ndarray:
    """Decode with PyAV: uint8 (F, H, W) grey."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="gray") for f in container.decode(video=0)])


def gif_frames(path: Path) -> np.ndarray:
    return np.stack([np.asarray(f.convert("L")) for f in ImageSequence.Iterator(Image.open(path))])


def test_writes_exactly_n_frames_and_gif(tmp_path, capsys):
    out = tmp_path / "video.mp4"
    assert main(BASE + ["--frames", "5", "--out", str(out), "--gif"]) == 0
    assert mp4_frames(out).shape == (5, 32, 32)
    assert gif_frames(tmp_path / "video.gif").shape == (5, 32, 32)
    summary = capsys.readouterr().out
    assert "generated 5 frames" in summary and "ms/frame" in summary and str(out) in summary


def test_gif_only_and_batch_tiled_side_by_side(tmp_path):
    out = tmp_path / "only.gif"
    assert main(BASE + ["--frames", "3", "--out", str(out), "--batch", "2", "--no-cache"]) == 0
    assert gif_frames(out).shape == (3, 32, 64)
    assert not (tmp_path / "only.mp4").exists()


def test_video_starts_with_the_prompt_frames(tmp_path, shards):
    out = tmp_path / "prompted.mp4"
    argv = BASE + ["--frames", "2", "--out", str(out), "--gif", "--prompt-shards", shards[32],
                   "--prompt-frames", "3", "--batch", "2"]
    assert main(argv) == 0
    clips = [c["video"] for c in ClipDataset(shards[32], 3, 1, 32, resampled=False)][:2]
    truth = np.concatenate([((c[:, 0] + 1) * 127.5).round().byte().numpy() for c in clips], axis=2)
    gif, mp4 = gif_frames(tmp_path / "prompted.gif"), mp4_frames(out)  # (5, 32, 64)
    assert gif.shape == mp4.shape == (5, 32, 64)
    assert np.array_equal(gif[:3], truth)  # grey GIF frames are exact
    assert np.abs(mp4[:3].astype(int) - truth).mean() < 4  # H.264, crf 18


def fake_checkpoint(path: Path, drop_key: bool = False) -> Path:
    """A Lightning-style checkpoint of the tiny preset (the contract of checkpoint.py)."""
    model = build_model(TINY)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    if drop_key:
        state.pop(next(iter(state)))
    config = {"model": dataclasses.asdict(model.cfg)}
    torch.save({"state_dict": state, "hyper_parameters": {"config": config}}, path)
    return path


def test_checkpoint(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "ok.ckpt")
    out = tmp_path / "ckpt.mp4"
    argv = ["generate", "--checkpoint", str(ckpt), "--frames", "2", "--steps", "2", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert len(mp4_frames(out)) == 2


def test_missing_output_folders_are_created_with_the_first_frame(tmp_path):
    out = tmp_path / "new" / "deeper" / "v.mp4"
    assert main(BASE + ["--frames", "2", "--out", str(out), "--gif"]) == 0
    assert len(mp4_frames(out)) == 2 and len(gif_frames(out.with_suffix(".gif"))) == 2
    gif_only = tmp_path / "other" / "v.gif"
    assert main(BASE + ["--frames", "2", "--out", str(gif_only)]) == 0
    assert len(gif_frames(gif_only)) == 2


ERRORS = [
    (["--preset", "nope"], "--preset='nope': expected one of scd-msc-tiny, scd-msc-small, "),
    (["--checkpoint", "CKPT"], "exactly one of them, got both"),
    (["--frames", "0"], "--frames=0: expected an integer >= 1"),
    (["--steps", "0"], "--steps=0: expected an integer >= 1"),
    (["--prompt-frames", "0", "--prompt-shards", "S32"], "--prompt-frames=0: expected an integer >= 1"),
    (["--batch", "0"], "--batch=0: expected an integer >= 1"),
    (["--guidance", "inf"], "--guidance=inf: expected a finite number"),
    (["--fps", "0"], "--fps=0.0: expected a number > 0"),
    (["--out", "FILE/sub/v.mp4"], "expected a folder, but"),
    (["--out", "OUT/v.avi"], "expected a file name ending in .mp4 or .gif"),
    (["--prompt-shards", "S16", "--prompt-frames", "2"], "skipped: wrong_size=3"),
    (["--prompt-shards", "OUT/none-*.tar"], "the pattern matched none"),
    (["--device", "tpu"], "--device='tpu': expected auto, cpu or cuda"),
    (["--context-noise", "1.0"], "--context-noise=1.0: expected a number in [0, 1)"),
    (["--context-noise", "nan"], "--context-noise=nan: expected a number in [0, 1)"),
]


@pytest.mark.parametrize("extra, message", ERRORS, ids=[m[:24] for _, m in ERRORS])
def test_argument_errors_exit_2_before_any_work(tmp_path, capsys, monkeypatch, shards, extra, message):
    (tmp_path / "file").write_text("")
    subs = {"OUT": str(tmp_path), "S32": shards[32], "S16": shards[16], "CKPT": str(tmp_path / "x.ckpt"),
            "FILE": str(tmp_path / "file")}
    extra = [re.sub("OUT|S32|S16|CKPT|FILE", lambda m: subs[m.group()], a) for a in extra]
    argv = BASE + ["--frames", "2", "--out", str(tmp_path / "v.mp4")] + extra

    def no_model(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(inputs, "load", no_model)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "scd-msc generate: error:" in err and message in err
    assert not any(tmp_path.glob("*.mp4"))


def test_checkpoint_errors(tmp_path, capsys):
    bad = fake_checkpoint(tmp_path / "bad.ckpt", drop_key=True)
    for path, message in ((tmp_path / "missing.ckpt", "does not exist"), (bad, "does not match its config")):
        argv = ["generate", "--checkpoint", str(path), "--frames", "1", "--steps", "1",
                "--out", str(tmp_path / "v.mp4")]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "--checkpoint:" in err and message in err
    assert not (tmp_path / "v.mp4").exists()


def test_interrupt_guard_defers_signals_while_writing():
    with InterruptGuard() as guard:
        with pytest.raises(KeyboardInterrupt):
            with guard.critical():
                os.kill(os.getpid(), signal.SIGTERM)  # held until the block ends
                time.sleep(0.01)
                reached = True
        assert reached and guard.signum == signal.SIGTERM


def test_keyboard_interrupt_in_process_keeps_finished_frames(tmp_path):
    class Session:  # three frames, then Ctrl-C
        def __init__(self):
            self.n = 0

        def step(self):
            self.n += 1
            if self.n > 3:
                raise KeyboardInterrupt
            return torch.full((1, 1, 32, 32), self.n / 4)

        def cache_bytes(self):
            return 0

    report = stream_to_sinks(Session(), 10, open_sinks(tmp_path / "v.mp4", True, 8.0), progress=False)
    assert report.interrupted and report.frames == 3 and report.exit_code == 130
    assert len(mp4_frames(tmp_path / "v.mp4")) == 3 and len(gif_frames(tmp_path / "v.gif")) == 3


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_leaves_a_playable_file(tmp_path, sig):
    out, n = tmp_path / "long.mp4", 5000
    cmd = [sys.executable, "-m", "scd_msc.cli", "generate", "--preset", TINY, "--steps", "2",
           "--frames", str(n), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: list[bytes] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: os.read(proc.stderr.fileno(), 4096), b"")),
                              daemon=True)
    reader.start()
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:  # wait for the progress bar to pass frame 2
        done = re.findall(rb"(\d+)/%d \[" % n, b"".join(seen))
        if done and int(done[-1]) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, b"".join(seen).decode()[-2000:]
    proc.send_signal(sig)
    stdout, _ = proc.communicate(timeout=60)
    reader.join(timeout=5)
    assert proc.returncode == 128 + sig, b"".join(seen).decode()[-2000:]
    frames = len(mp4_frames(out))
    assert 2 <= frames < n
    assert f"interrupted: generated {frames} of {n} frames" in stdout.decode()
