"""Data layer, part 1: synthetic generators, PyAV helpers, shard writing, make-shards CLI.

Reader reliability, splitting and the data module are in ``test_data_reader.py``.
Everything is tiny (8 frames of 32x32) so the suite runs in seconds on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from scd_msc.data import (
    ClipDataset,
    bouncing_shapes,
    decode_video,
    encode_mp4,
    make_shards,
    moving_digits,
    resize_frames,
    to_channels,
)
from scd_msc.data.cli import add_make_shards_arguments, run_make_shards

F, S = 8, 32


def tiny_encoder(x: torch.Tensor) -> torch.Tensor:
    """(F, C, H, W) in [-1, 1] -> (F, 2, H/4, W/4): a stand-in for a VAE encoder."""
    pooled = torch.nn.functional.avg_pool2d(x, 4)                       # (F, C, H/4, W/4)
    return torch.cat([pooled.mean(1, keepdim=True), -pooled.mean(1, keepdim=True)], dim=1)


def read_all(shards, **kwargs) -> list[dict]:
    kwargs = {"clip_frames": F, "channels": 1, "image_size": S, "resampled": False, **kwargs}
    return list(ClipDataset(shards, **kwargs))


def to_unit(frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, C) -> float (F, C, H, W) in [-1, 1], as the reader returns it."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1


# ---------------------------------------------------------------- generators

@pytest.mark.parametrize("make, channels", [(moving_digits, 1), (moving_digits, 3), (bouncing_shapes, 3),
                                            (bouncing_shapes, 1)])
def test_generators_are_deterministic_uint8_clips(make, channels):
    a = make(F, S, np.random.default_rng(7), channels=channels)
    b = make(F, S, np.random.default_rng(7), channels=channels)
    c = make(F, S, np.random.default_rng(8), channels=channels)
    assert a.shape == (F, S, S, channels) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("make", [moving_digits, bouncing_shapes])
def test_content_is_present_and_moving(make):
    for seed in range(5):
        clip = make(F, S, seed).astype(np.float64)
        mass = clip.sum(axis=(1, 2, 3))                                   # (F,)
        assert (mass > 0).all(), "every frame shows something"
        assert np.abs(np.diff(clip, axis=0)).sum(axis=(1, 2, 3)).min() > 0, "every frame differs from the last"
        yy, xx = np.mgrid[0:S, 0:S]
        grey = clip.mean(-1)                                              # (F, H, W)
        centre = np.stack([(grey * yy).sum((1, 2)), (grey * xx).sum((1, 2))], -1) / grey.sum((1, 2))[:, None]
        assert np.linalg.norm(centre[-1] - centre[0]) > 0.5 or np.ptp(centre, axis=0).max() > 0.5


def test_digit_count_and_odd_sizes():
    one = moving_digits(F, 33, 0, num_digits=1).astype(float)
    three = moving_digits(F, 33, 0, num_digits=3).astype(float)
    assert one.shape == (F, 33, 33, 1) and three[0].sum() > one[0].sum() * 1.3
    assert bouncing_shapes(3, 17, 1).shape == (3, 17, 17, 3)


@pytest.mark.parametrize("kwargs, message", [
    ({"channels": 2}, "channels=2: expected one of 1, 3"),
    ({"num_digits": 4}, r"num_digits=4: expected an integer in \[1, 3\]"),
    ({"size": 4}, "size=4: expected an integer >= 8"), ({"num_frames": 0}, "num_frames=0: expected an integer >= 1"),
    ({"num_frames": True}, "num_frames=True: expected an integer >= 1"),
    ({"digit_size": 40}, r"digit_size=40: expected an integer in \[1, 32\]"),
])
def test_generator_argument_errors(kwargs, message):
    args = {"num_frames": F, "size": S, "rng": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        moving_digits(**args)
    if "digit_size" not in kwargs:  # the checks both generators share
        with pytest.raises(ValueError, match=message.replace("num_digits", "num_shapes")):
            bouncing_shapes(**{k.replace("num_digits", "num_shapes"): v for k, v in args.items()})


# ---------------------------------------------------------------- video helpers

@pytest.mark.parametrize("channels", [1, 3])
def test_mp4_round_trip(channels):
    clip = bouncing_shapes(F, S, 3, channels=channels)
    data = encode_mp4(clip, fps=8)
    assert data[4:8] == b"ftyp"
    back = decode_video(data, channels=channels)
    assert back.shape == clip.shape and back.dtype == np.uint8
    assert np.abs(back.astype(float) - clip).mean() < 8, "lossy but close"


def test_channel_conversion_and_resize():
    grey = moving_digits(2, S, 0)
    rgb = to_channels(grey, 3)
    assert rgb.shape == (2, S, S, 3) and (rgb[..., 0] == grey[..., 0]).all()
    np.testing.assert_array_equal(to_channels(rgb, 1), grey)
    assert resize_frames(np.zeros((2, 20, 30, 3), np.uint8), 16).shape == (2, 16, 16, 3)
    with pytest.raises(ValueError, match="frames"):
        encode_mp4(np.zeros((2, 8, 8), np.float32))


# ---------------------------------------------------------------- shard writing

def test_npy_shards_round_trip_exactly(tmp_path):
    summary = make_shards("moving-digits", tmp_path, F, S, clips=5, shard_size=2, seed=3, progress=False)
    assert (summary.clips, summary.frames, len(summary.shards)) == (5, 5 * F, 3)
    assert summary.bytes > 5 * F * S * S
    with tarfile.open(summary.shards[0]) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("clip000000.json").read())
    assert names == ["clip000000.frames.npy", "clip000000.json", "clip000001.frames.npy", "clip000001.json"]
    assert meta == {"fps": 8.0, "frames": F, "height": S, "width": S, "channels": 1,
                    "source": "moving-digits", "index": 0}
    out = read_all(str(tmp_path / "*.tar"))
    assert [o["key"] for o in out] == [f"clip{i:06d}" for i in range(5)]
    expected = to_unit(moving_digits(F, S, np.random.default_rng([3, 4])))
    assert torch.equal(out[4]["video"], expected)
    assert out[0]["video"].min() >= -1 and out[0]["video"].max() <= 1


def test_mp4_shards_round_trip(tmp_path):
    summary = make_shards("bouncing-shapes", tmp_path, F, S, clips=3, shard_size=10, fmt="mp4", progress=False)
    assert len(summary.shards) == 1
    out = read_all(summary.shards, channels=3)
    assert len(out) == 3 and out[0]["video"].shape == (F, 3, S, S)
    expected = to_unit(bouncing_shapes(F, S, np.random.default_rng([0, 2])))
    assert (out[2]["video"] - expected).abs().mean() < 0.06


def test_video_folder_conversion(tmp_path):
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    (videos / "a.mp4").write_bytes(encode_mp4(bouncing_shapes(10, 48, 0), fps=10))   # 10 frames, 48x48
    gif = bouncing_shapes(6, 40, 1)
    Image.fromarray(gif[0]).save(videos / "sub" / "b.gif", save_all=True, duration=100, loop=0,
                                 append_images=[Image.fromarray(f) for f in gif[1:]])
    (videos / "broken.mp4").write_bytes(b"this is not a video")
    summary = make_shards("videos", tmp_path / "out", 4, S, clips=None, path=str(videos), stride=3,
                          progress=False)
    # a.mp4: starts 0, 3, 6 -> 3 clips; b.gif (6 frames): start 0 -> 1 clip; broken.mp4 skipped
    assert summary.clips == 4
    out = read_all(summary.shards, clip_frames=4, channels=3)
    assert len(out) == 4 and all(o["video"].shape == (4, 3, S, S) for o in out)
    with tarfile.open(summary.shards[0]) as tar:
        meta = json.loads(tar.extractfile("clip000001.json").read())
    assert meta["source"] == "videos" and meta["path"].endswith("a.mp4") and meta["start"] == 3
    assert meta["fps"] == pytest.approx(10)


def test_latent_shards(tmp_path):
    summary = make_shards("latents", tmp_path, F, S, clips=2, encoder=f"{__name__}:tiny_encoder",
                          progress=False)
    out = read_all(summary.shards, channels=2, image_size=S // 4)
    assert len(out) == 2 and out[0]["video"].shape == (F, 2, S // 4, S // 4)
    assert out[0]["video"].dtype == torch.float32
    expected = tiny_encoder(to_unit(moving_digits(F, S, np.random.default_rng([0, 0]))))
    torch.testing.assert_close(out[0]["video"], expected, atol=2e-3, rtol=2e-3)  # stored as float16


def test_existing_shards_are_not_mixed(tmp_path):
    make_shards("moving-digits", tmp_path, 2, 16, clips=1, progress=False)
    with pytest.raises(ValueError, match="existing shards"):
        make_shards("moving-digits", tmp_path, 2, 16, clips=1, progress=False)
    assert make_shards("moving-digits", tmp_path, 2, 16, clips=1, progress=False, overwrite=True).clips == 1


# ---------------------------------------------------------------- CLI

def cli(argv: list[str]) -> int:
    parser = add_make_shards_arguments(argparse.ArgumentParser(prog="scd-msc make-shards"))
    return run_make_shards(parser.parse_args(argv))


def test_cli_writes_shards(tmp_path, capsys):
    rc = cli(["bouncing-shapes", "--out", str(tmp_path), "--frames", "4", "--size", "16", "--clips", "3",
              "--shard-size", "2", "--format", "mp4", "--no-progress"])
    assert rc == 0
    assert "wrote 3 clips (12 frames" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.tar", "shard-000001.tar"]


@pytest.mark.parametrize("extra, message", [
    (["mnist"], "source='mnist': expected one of moving-digits, bouncing-shapes, videos, atari, doom, latents"),
    (["moving-digits", "--frames", "0"], "frames=0: expected an integer >= 1"),
    (["moving-digits", "--size", "4"], "size=4: expected an integer >= 8; the smallest canvas of the moving-digits "
                                       "generator"),
    (["moving-digits", "--format", "gif"], "fmt='gif': expected one of npy, mp4"),
    (["moving-digits", "--out", "FILE/sub"], "is a file"),
    (["videos"], "path=None: expected a folder of videos"),
    (["videos", "--path", "NOWHERE"], "expected an existing folder"),
    (["latents"], "--encoder/--autoencoder: expected exactly one of them for source 'latents', got neither"),
    (["latents", "--encoder", "math:sqrt", "--autoencoder", "x.ckpt"], "--encoder/--autoencoder: expected exactly "
                                                                      "one of them for source 'latents', got both"),
    (["latents", "--autoencoder", "NOWHERE"], "expected a scd-msc train-ae checkpoint file; there is none"),
    (["latents", "--encoder", "math:sqrt", "--device", "cpu"], "--device: only used with --autoencoder"),
    (["latents", "--encoder", "math:sqrt", "--from", "FILE"], "--frames=4: not used with --from"),
    (["moving-digits", "--from", "FILE"], "--from: only used by the latents source, not 'moving-digits'"),
    (["latents", "--encoder", "no_such_module_xyz:f"], "cannot import module"),
    (["latents", "--encoder", "math:no_such_fn"], "has no attribute"),
    (["moving-digits", "--encoder", "math:sqrt"], "--encoder: only used by the latents source"),
    (["moving-digits", "--channels", "2"], "channels=2: expected one of 1, 3"),
])
def test_cli_argument_errors(tmp_path, capsys, extra, message):
    (tmp_path / "FILE").write_text("x")
    source, *rest = extra
    argv = [source, "--out", str(tmp_path / "out"), "--frames", "4", "--size", "16", "--clips", "2", *rest]
    argv = [a.replace("FILE", str(tmp_path / "FILE")).replace("NOWHERE", str(tmp_path / "nowhere")) for a in argv]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("scd-msc make-shards: error:")
    assert not (tmp_path / "out").exists(), "no work (not even the folder) before the arguments are valid"


def test_pyav_is_only_needed_for_video_files():
    """Without PyAV (as on a GPU box with npy shards) the CLI, training and inference
    import, and a video call says what to install."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import builtins
        real = builtins.__import__
        def no_av(name, *args, **kwargs):
            if name == "av" or name.startswith("av."):
                raise ImportError("No module named 'av'")
            return real(name, *args, **kwargs)
        builtins.__import__ = no_av
        import numpy as np
        import scd_msc.cli, scd_msc.inference.cli, scd_msc.training.train, scd_msc.data
        from scd_msc.media import encode_mp4
        try:
            encode_mp4(np.zeros((2, 8, 8, 1), np.uint8))
        except ImportError as err:
            print(err)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install av" in out
