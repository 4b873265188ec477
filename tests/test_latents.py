"""Latent models end to end: latent shards made with an encoder module kept in the working
folder, a 2-step training run that records what it was trained on, and ``--decoder`` for
``generate`` and ``eval`` (refused without it, one line, exit 2). A toy VAE: 2x2 average
pooling and a fixed 1x1 conv from RGB to 4 channels; its decoder inverts the conv."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from scd_msc.checkpoint import load_shard_info
from scd_msc.cli import main
from scd_msc.config import load_config
from scd_msc.data import ClipDataset
from scd_msc.data.probe import probe_shards
from scd_msc.inference.report import GAP
from scd_msc.models import build_model

F, S, C_LAT = 8, 32, 4
MODULE = "toy_vae_scd_latents"  # unique: sys.modules keeps it for the rest of the session
TOY_VAE = '''
"""2x2 average pooling, then a fixed 1x1 conv RGB -> 4 channels; decode: its pseudo-inverse, 2x nearest."""
import torch
import torch.nn.functional as F

W = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5]])  # (4, 3)


def encode(x):  # (F, 3, H, W) -> (F, 4, H/2, W/2)
    return F.conv2d(F.avg_pool2d(x, 2), W[:, :, None, None])


def decode(z):  # (N, 4, h, w) -> (N, 3, 2h, 2w)
    x = F.conv2d(z, torch.linalg.pinv(W)[:, :, None, None])
    return F.interpolate(x, scale_factor=2, mode="nearest")


def identity(z):  # not a decoder: returns 4 channels
    return z
'''


def small_run(shards: str, out_dir) -> list[str]:
    """The small-run settings of test_training.py, with the frame shape left to auto."""
    return [f"data.train_shards={shards}", f"data.clip_frames={F}", "data.batch_size=2", "data.num_workers=0",
            "data.epoch_batches=5", "data.shuffle_buffer=4", f"train.out_dir={out_dir}", "train.max_steps=2",
            "train.warmup_steps=1", "train.val_every_n_steps=0", "train.sample_every_n_steps=0",
            "train.progress_bar=false", "train.accelerator=cpu", "train.devices=1", "runtime.backend=reference"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """In a folder holding the toy VAE: latent shards via ``--encoder toy_vae:encode``
    (run from that folder, as a user would), then 2 training steps on them."""
    from scd_msc.training.train import train

    root = tmp_path_factory.mktemp("latents")
    (root / f"{MODULE}.py").write_text(TOY_VAE)
    assert importlib.util.find_spec(MODULE) is None, "only the working folder holds the module"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert main(["make-shards", "latents", "--encoder", f"{MODULE}:encode", "--pixels", "bouncing-shapes",
                     "--channels", "3", "--out", "shards", "--frames", str(F), "--size", str(S), "--clips", "4",
                     "--no-progress"]) == 0
        assert str(root) not in sys.path, "the working folder is on the import path only while importing"
        train(load_config(None, small_run("shards/*.tar", "run")))
    return root


def generate(root: Path, *extra: str) -> int:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        return main(["generate", "--checkpoint", "run/checkpoints/last.ckpt", "--steps", "2", "--no-progress",
                     *extra])


def test_latent_shards_and_the_run_record_the_encoder(run):
    info = probe_shards(str(run / "shards" / "*.tar"))
    assert (info.kind, info.channels, info.size, info.encoder) == ("latents", C_LAT, S // 2, f"{MODULE}:encode")
    ckpt = torch.load(run / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    model = ckpt["hyper_parameters"]["config"]["model"]
    assert (model["channels"], model["image_size"]) == (C_LAT, S // 2)  # the model followed the latents
    recorded = load_shard_info(str(run / "run" / "checkpoints" / "last.ckpt"))
    assert dataclasses.replace(recorded, url="") == dataclasses.replace(info, url="")
    assert recorded.url == "shards/shard-000000.tar"  # as the run read it (relative to its working folder)


def test_generate_refuses_a_latent_model_without_decoder(run, capsys):
    assert generate(run, "--frames", "2", "--out", "refused.mp4") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("scd-msc generate: error: --decoder: missing;")
    assert f"{C_LAT}×{S // 2}×{S // 2} latents" in err and f"--encoder {MODULE}:encode" in err
    assert not (run / "refused.mp4").exists()


def test_generate_decodes_frames_and_the_prompt_to_pixels(run, capsys):
    assert generate(run, "--frames", "3", "--out", "latent.mp4", "--decoder", f"{MODULE}:decode",
                    "--prompt-shards", "shards/*.tar", "--prompt-frames", "2") == 0
    assert "wrote latent.mp4 (5 frames)" in capsys.readouterr().out
    with av.open(str(run / "latent.mp4")) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert frames.shape == (5, S, S, 3)  # 2 prompt + 3 generated frames, decoded to 32x32 RGB
    sys.path.insert(0, str(run))
    try:
        toy = importlib.import_module(MODULE)
    finally:
        sys.path.remove(str(run))
    latent = next(iter(ClipDataset(str(run / "shards" / "*.tar"), F, C_LAT, S // 2, resampled=False)))["video"]
    truth = toy.decode(latent[:2]).clamp(-1, 1).add(1).mul(127.5).round().permute(0, 2, 3, 1).numpy()
    assert np.abs(frames[:2].astype(float) - truth).mean() < 4  # the prompt, decoded (H.264, crf 18)


def test_generate_checks_what_the_decoder_returns(run, capsys):
    assert generate(run, "--frames", "1", "--out", "bad.mp4", "--decoder", f"{MODULE}:identity") == 2
    err = capsys.readouterr().err
    assert f"--decoder='{MODULE}:identity': returned shape (1, 4, 16, 16)" in err and "C in {1, 3}" in err
    assert generate(run, "--frames", "1", "--out", "bad.mp4", "--decoder", "no_such_vae_xyz:decode") == 2
    assert "--decoder='no_such_vae_xyz:decode': cannot import module" in capsys.readouterr().err
    assert not (run / "bad.mp4").exists()


def test_eval_scores_decoded_pixels_and_refuses_without_decoder(run, capsys):
    base = ["eval", "--checkpoint", "run/checkpoints/last.ckpt", "--shards", "shards/*.tar", "--context", "2",
            "--horizon", "2", "--clips", "2", "--steps", "2", "--no-progress"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(run)
        assert main(base + ["--out", "refused"]) == 2
        assert "scd-msc eval: error: --decoder: missing;" in capsys.readouterr().err
        assert main(base + ["--out", "report", "--decoder", f"{MODULE}:decode"]) == 0
    summary = json.loads((run / "report" / "eval.json").read_text())
    assert summary["decoder"] == f"{MODULE}:decode" and summary["clips"] == 2
    assert all(np.isfinite(r["psnr"]) for r in summary["per_horizon"])
    strip = Image.open(run / "report" / "strip.png")  # tiles of decoded 32x32 frames, not 16x16 latents
    assert strip.width == 4 * (S + GAP) + 3 * GAP and strip.mode == "RGB"
    assert not (run / "refused").exists()


def fake_checkpoint(path: Path, shards: dict | None, **overrides) -> str:
    """A checkpoint of the tiny preset, with or without the record of its training shards."""
    model = build_model("scd-msc-tiny", **overrides)
    hparams = {"config": {"model": dataclasses.asdict(model.cfg)}}
    if shards is not None:
        hparams["shards"] = shards
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": hparams}, path)
    return str(path)


def test_decoder_is_refused_for_a_pixel_model_and_required_for_unrecorded_latents(run, tmp_path, capsys):
    pixels = fake_checkpoint(tmp_path / "pixels.ckpt", {"kind": "pixels", "channels": 1, "height": 32, "width": 32})
    argv = ["generate", "--steps", "1", "--frames", "1", "--out", str(tmp_path / "v.mp4"), "--no-progress"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(run)
        assert main(argv + ["--checkpoint", pixels, "--decoder", f"{MODULE}:decode"]) == 2
    assert "--decoder='toy_vae_scd_latents:decode': the checkpoint's model makes 1×32×32 pixel frames, not " \
           "latents; drop --decoder" in capsys.readouterr().err
    old = fake_checkpoint(tmp_path / "old.ckpt", None, channels=4)  # before checkpoints recorded their shards
    assert main(argv + ["--checkpoint", old]) == 2
    assert "--decoder: missing; the model makes 4-channel frames (latents)" in capsys.readouterr().err
    assert not (tmp_path / "v.mp4").exists()
