"""Training on your own videos: make-shards reports what it skipped or changed, ``--fps``
resamples by timestamp, ``data.channels`` / ``data.image_size`` = auto follow the shards
(the model follows the data), mismatches fail in one line naming the overrides, and a
tiny run on RGB video shards works with the defaults. Tiny clips (8 frames of 32x32)."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import tarfile

import av
import numpy as np
import pytest
import torch

from scd_msc.checkpoint import load_model, load_shard_info
from scd_msc.config import load_config
from scd_msc.data import bouncing_shapes, encode_mp4, make_shards
from scd_msc.data.cli import add_make_shards_arguments, run_make_shards
from scd_msc.data.probe import ProbeError, probe_shards
from scd_msc.data.shards import npy_bytes
from scd_msc.data.video import iter_at_rate

F, S = 8, 32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def faststart_mp4(path, frames: np.ndarray, fps: int = 8) -> None:
    """An mp4 with its index first (as streamed downloads are): cut short, it decodes until the cut."""
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Colour mp4s: two long enough, one shorter than a clip, one smaller than --size 32,
    one cut short mid-file and one that is not a video."""
    root = tmp_path_factory.mktemp("my_videos")
    (root / "a.mp4").write_bytes(encode_mp4(bouncing_shapes(2 * F + 3, 48, 0), fps=10))  # 2 clips
    (root / "b.mp4").write_bytes(encode_mp4(bouncing_shapes(F + 1, 40, 1), fps=10))      # 1 clip
    (root / "short.mp4").write_bytes(encode_mp4(bouncing_shapes(5, 48, 2), fps=10))
    (root / "small.mp4").write_bytes(encode_mp4(bouncing_shapes(F, 24, 3), fps=10))      # 1 clip, upscaled
    faststart_mp4(root / "cut.mp4", bouncing_shapes(40, 48, 4))
    data = (root / "cut.mp4").read_bytes()
    (root / "cut.mp4").write_bytes(data[: len(data) * 2 // 3])  # a partial download
    (root / "broken.mp4").write_bytes(b"this is not a video")
    return root


def cli(argv: list[str]) -> int:
    parser = add_make_shards_arguments(argparse.ArgumentParser(prog="scd-msc make-shards"))
    return run_make_shards(parser.parse_args(argv))


def clip_meta(shard) -> list[dict]:
    with tarfile.open(shard) as tar:
        return [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]


@pytest.fixture(scope="module")
def rgb_shards(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "mine"
    summary = make_shards("videos", out, F, S, clips=None, path=str(videos), progress=False)
    return out, summary


def test_make_shards_reports_short_small_and_undecodable_videos(videos, tmp_path, capsys, caplog):
    with caplog.at_level(logging.WARNING, logger="scd_msc.data.sources"):
        assert cli(["videos", "--path", str(videos), "--out", str(tmp_path / "s"), "--frames", str(F),
                    "--size", str(S), "--no-progress"]) == 0
    out = capsys.readouterr().out
    metas = clip_meta(tmp_path / "s" / "shard-000000.tar")
    cut = sum(m["path"].endswith("cut.mp4") for m in metas)
    assert cut >= 1, "the clips before the cut are kept"
    assert f"wrote {4 + cut} clips" in out and "read 6 videos" in out
    assert f"1 of 6 videos too short for one clip of {F} frames, skipped: short.mp4 (5 frames)" in out
    assert f"1 of 6 videos smaller than --size {S}, upscaled: small.mp4 (24x24)" in out
    assert "1 of 6 videos undecodable, skipped: broken.mp4\n" in out
    assert f"1 of 6 videos cut short by a decode error, their earlier clips kept: cut.mp4 (after {cut} clips)" in out
    logs = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"video {videos / 'cut.mp4'}: decode error after {cut} clips, kept them") for m in logs)
    assert not any("skipping undecodable video" in m and "cut.mp4" in m for m in logs), logs
    assert all(m["channels"] == 3 and (m["height"], m["width"]) == (S, S) for m in metas)


def grey_ramp_mp4(frames: int, fps: int) -> bytes:
    """Frame i is flat grey at level 10·i: which source frame an output shows is readable."""
    levels = (np.arange(frames) * 10).astype(np.uint8)
    return encode_mp4(np.broadcast_to(levels[:, None, None, None], (frames, 16, 16, 3)).copy(), fps=fps)


@pytest.mark.parametrize("fps, sources", [(5, [0, 2, 4, 6]), (20, [0, 0, 1, 1]), (10, [0, 1, 2, 3])])
def test_fps_resamples_videos_by_timestamp(tmp_path, fps, sources):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "ramp.mp4").write_bytes(grey_ramp_mp4(20, fps=10))
    summary = make_shards("videos", tmp_path / "s", 4, 16, clips=1, path=str(tmp_path / "v"), fps=fps,
                          fmt="npy", progress=False)
    with tarfile.open(summary.shards[0]) as tar:
        frames = np.load(io.BytesIO(tar.extractfile("clip000000.frames.npy").read()))
        meta = json.loads(tar.extractfile("clip000000.json").read())
    np.testing.assert_allclose(frames.reshape(4, -1).mean(1), np.array(sources) * 10, atol=3)
    assert meta["fps"] == fps


def test_iter_at_rate_drops_and_repeats_by_time():
    times = [0.0, 0.1, 0.25, 0.3, 0.5]  # irregular: a frame lasts until the next one
    # output frame k shows the last input frame whose time is <= k / fps (c at 0.25 is never shown at 10 fps)
    assert list(iter_at_rate(zip(times, "abcde"), 10, period=0.1)) == list("abbdde")
    assert list(iter_at_rate(zip(times, "abcde"), 4, period=0.1)) == list("ace")
    assert list(iter_at_rate(iter([]), 4, period=0.1)) == []


def test_fps_must_be_positive(videos, tmp_path, capsys):
    assert cli(["videos", "--path", str(videos), "--out", str(tmp_path / "s"), "--frames", "4", "--size", "16",
                "--fps", "0"]) == 2
    assert "scd-msc make-shards: error: fps=0.0: expected a number > 0" in capsys.readouterr().err
    assert cli(["videos", "--path", str(videos), "--out", str(tmp_path / "s"), "--frames", "4", "--size", "16",
                "--stride", "0"]) == 2
    assert "scd-msc make-shards: error: stride=0: expected an integer >= 1" in capsys.readouterr().err


def test_probe_reads_json_then_arrays(rgb_shards, tmp_path):
    out, _ = rgb_shards
    info = probe_shards(str(out / "*.tar"))
    assert (info.kind, info.channels, info.size, info.frames, info.encoder) == ("pixels", 3, S, F, None)
    import webdataset as wds  # a sample without json: the shape of frames.npy says it

    with wds.TarWriter(str(tmp_path / "bare.tar")) as sink:
        sink.write({"__key__": "c0", "frames.npy": npy_bytes(np.zeros((5, 24, 24), np.uint8))})
    info = probe_shards(str(tmp_path / "bare.tar"))
    assert (info.kind, info.channels, info.height, info.width, info.frames) == ("pixels", 1, 24, 24, 5)
    (tmp_path / "junk.tar").write_bytes(b"not a tar")
    with pytest.raises(ProbeError, match="no readable sample in the first 1 shard"):
        probe_shards(str(tmp_path / "junk.tar"))


def test_auto_shape_follows_the_shards_and_the_model_follows(rgb_shards, tmp_path):
    out, _ = rgb_shards
    cfg = load_config(os.path.join(ROOT, "configs", "moving_digits_tiny.yaml"), [f"data.train_shards={out}/*.tar"])
    assert (cfg.data.channels, cfg.data.image_size) == (3, S) == (cfg.model.channels, cfg.model.image_size)
    big = make_shards("bouncing-shapes", tmp_path / "big", 2, 48, clips=1, progress=False)
    cfg = load_config(None, [f"data.train_shards={big.shards[0]}", "model.channels=3"])
    assert (cfg.data.channels, cfg.data.image_size, cfg.model.image_size) == (3, 48, 48)
    cfg = load_config(None, [])  # no shards yet (--print-config on a fresh clone): the preset's shape
    assert (cfg.data.channels, cfg.data.image_size) == (1, 32)


def test_shape_mismatches_fail_in_one_line_naming_the_overrides(rgb_shards, tmp_path):
    out, _ = rgb_shards
    pattern = f"{out}/*.tar"
    cases = [
        (["model.channels=1"], f"data.channels=3 (from {pattern}) but model.channels=1: drop model.channels=1 "
                               "or pass data.channels=1 with grey shards"),
        (["model.image_size=64"], f"data.image_size=32 (from {pattern}) but model.image_size=64: drop "
                                  "model.image_size=64 or pass data.image_size=64 with shards of size 64"),
        (["data.channels=1"], f"data.channels=1 but {pattern} holds 3×32×32 pixel frames: drop data.channels=1 "
                              "(auto follows the shards) or use grey shards"),
        (["data.image_size=64", "model.image_size=32"], "data.image_size=64 but"),
    ]
    tiny = make_shards("bouncing-shapes", tmp_path / "tiny", 2, 8, clips=1, progress=False)
    cases.append(([], f"data.image_size=8 (from {tiny.shards[0]}) does not fit scd-msc-tiny: it must be a multiple "
                      "of model.patch=4 and span at least 3 patches (the attention windows); pass model.patch=2 "
                      "or make the shards with --size 12"))
    for extra, message in cases:
        shards = tiny.shards[0] if not extra else pattern
        with pytest.raises(ValueError) as err:
            load_config(None, [f"data.train_shards={shards}", *extra])
        assert message in str(err.value) and "\n" not in str(err.value), (extra, str(err.value))
    # resized pixel shards may differ in size
    assert load_config(None, [f"data.train_shards={pattern}", "data.image_size=16", "data.resize=true"]
                       ).model.image_size == 16


def test_tiny_run_on_rgb_video_shards_with_the_defaults(rgb_shards, tmp_path):
    from scd_msc.training.train import train

    out, _ = rgb_shards
    cfg = load_config(None, [f"data.train_shards={out}/*.tar", f"data.clip_frames={F}", "data.batch_size=2",
                             "data.num_workers=0", "data.epoch_batches=5", "data.shuffle_buffer=4",
                             f"train.out_dir={tmp_path}", "train.max_steps=2", "train.warmup_steps=1",
                             "train.val_every_n_steps=0", "train.sample_every_n_steps=0", "train.progress_bar=false",
                             "train.accelerator=cpu", "train.devices=1", "runtime.backend=reference"])
    last = train(cfg)
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2 and ckpt["hyper_parameters"]["config"]["model"]["channels"] == 3
    info = load_shard_info(last)
    assert (info.kind, info.channels, info.size) == ("pixels", 3, S)
    video = load_model(last).generate(1, 2, 2, generator=torch.Generator().manual_seed(0))
    assert video.shape == (1, 2, 3, S, S) and torch.isfinite(video).all()
