"""Our own autoencoder through the whole diffusion pipeline (issue 15 items 2, 3, 5), on CPU.

A tiny :class:`FrameAutoencoder` (random weights, latent scaling measured on the pixels)
is saved in the ``train-ae`` checkpoint layout; ``make-shards latents --autoencoder
--from`` encodes pixel shards that carry actions and labels; a 2-step SCD run on the
latents records the autoencoder; ``generate``, ``eval``, ``play`` and the sample strips
decode through it; a changed or moved file is refused in one line naming both hashes.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio

from scd_msc.ae_config import AEExperimentConfig, ae_config_to_dict
from scd_msc.checkpoint import file_sha256, load_autoencoder, load_model, load_shard_info
from scd_msc.cli import main
from scd_msc.config import load_config
from scd_msc.data import ClipDataset
from scd_msc.data.probe import probe_shards
from scd_msc.data.shards import clip_sample
from scd_msc.data.sources import Clip
from scd_msc.data.synthetic import bouncing_shapes
from scd_msc.media import to_uint8
from scd_msc.models import seeded_init
from scd_msc.models.autoencoder import AutoencoderConfig, FrameAutoencoder
from scd_msc.training.callbacks import SampleStrip, sample_conditions, video_strip

F, S, FACTOR, C_LAT, CLIPS = 6, 32, 4, 4, 5  # stored frames, pixel side, AE factor, latent channels, clips
H = S // FACTOR  # latent side
ACTIONS, CLASSES = ("NOOP", "LEFT", "RIGHT"), ("one", "two")


def pixel_clip(i: int) -> Clip:
    frames = bouncing_shapes(F, S, np.random.default_rng(i), channels=3)  # (F, S, S, 3)
    actions = np.random.default_rng(100 + i).integers(0, len(ACTIONS), F)
    return Clip(frames, 8.0, "test", {"index": i}, actions, i % 2, ACTIONS, CLASSES)


def save_autoencoder(path: Path, frames: torch.Tensor) -> None:
    """A tiny autoencoder in the ``train-ae`` checkpoint layout; its latent scaling is
    measured on ``frames`` (so their latents have mean 0 and std 1 per channel)."""
    cfg = AEExperimentConfig(model=AutoencoderConfig(channels=3, latent_channels=C_LAT, factor=FACTOR, width=8,
                                                     max_width=16, blocks=1, groups=4))
    with seeded_init(0):
        ae = FrameAutoencoder(cfg.model)
    with torch.no_grad():
        ae.observe(ae.encoder(frames))
    torch.save({"state_dict": {f"model.{k}": v for k, v in ae.state_dict().items()},
                "hyper_parameters": {"config": ae_config_to_dict(cfg)}}, path)


def run_args(shards: str, out_dir: str) -> list[str]:
    return [f"data.train_shards={shards}", "data.clip_frames=4", "data.batch_size=2", "data.num_workers=0",
            "data.epoch_batches=5", "data.shuffle_buffer=4", f"train.out_dir={out_dir}", "train.max_steps=2",
            "train.warmup_steps=1", "train.val_every_n_steps=0", "train.sample_every_n_steps=2",
            "train.sample_count=2", "train.sample_frames=3", "train.sample_steps=2", "train.progress_bar=false",
            "train.accelerator=cpu", "train.devices=1", "runtime.backend=reference", "model.patch=1"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Pixel shards with conditions, the autoencoder, latent shards made from them and a
    2-step run on the latents (working folder: the returned one)."""
    from scd_msc.training.train import train

    root = tmp_path_factory.mktemp("latent_ae")
    (root / "pixels").mkdir()
    with wds.TarWriter(str(root / "pixels" / "shard-000000.tar")) as sink:
        for i in range(CLIPS):
            sink.write(clip_sample(f"clip{i:06d}", pixel_clip(i), "npy" if i % 2 else "mp4"))
    every = torch.from_numpy(np.concatenate([pixel_clip(i).frames for i in range(CLIPS)]))
    save_autoencoder(root / "ae.ckpt", every.permute(0, 3, 1, 2).float() / 127.5 - 1)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert main(["make-shards", "latents", "--autoencoder", "ae.ckpt", "--from", "pixels/*.tar", "--out",
                     "latents", "--batch", "2", "--device", "cpu", "--latent-dtype", "float32",
                     "--no-progress"]) == 0
        train(load_config(None, run_args("latents/*.tar", "run")))
    return root


def raw_samples(pattern: str) -> list[dict]:
    urls = sorted(str(p) for p in Path().glob(pattern)) if not os.path.isabs(pattern) else [pattern]
    return [s for url in urls for s in wds.tarfile_to_samples()(iter([{"url": url}]))]


def true_pixels(root: Path, frames: int = F) -> torch.Tensor:
    """Every pixel clip as the reader gives it: ``(CLIPS, frames, 3, S, S)`` in [-1, 1]."""
    return torch.stack([c["video"] for c in ClipDataset(str(root / "pixels" / "*.tar"), frames, 3, S,
                                                         resampled=False)])


def test_latent_shards_are_the_encoded_pixels_with_their_conditions_and_name_the_autoencoder(root):
    ae = load_autoencoder(str(root / "ae.ckpt"))
    pixels = raw_samples(str(root / "pixels" / "shard-000000.tar"))
    latents = raw_samples(str(root / "latents" / "shard-000000.tar"))
    assert [s["__key__"] for s in latents] == [s["__key__"] for s in pixels] == [f"clip{i:06d}" for i in range(CLIPS)]
    truth = true_pixels(root)  # (CLIPS, F, 3, S, S); clip 0 went through H.264, as the shards hold it
    for i, (pix, lat) in enumerate(zip(pixels, latents)):
        z = torch.from_numpy(np.load(io.BytesIO(lat["latent.npy"])))
        assert z.shape == (F, C_LAT, H, H) and z.dtype == torch.float32
        torch.testing.assert_close(z, ae.encode(truth[i]), atol=1e-4, rtol=1e-4)  # encoded 2 clips per call
        assert lat["actions.npy"] == pix["actions.npy"]
        meta, source = json.loads(lat["json"]), json.loads(pix["json"])
        for key in ("label", "action_names", "class_names", "fps", "index"):
            assert meta[key] == source[key], key
        assert meta["autoencoder"] == str(root / "ae.ckpt") and meta["autoencoder_sha256"] == ae.sha256
        assert meta["latent_mean"] == ae.model.latent_mean.tolist() and meta["latent_std"] == ae.model.latent_std.tolist()
        assert (meta["pixel_channels"], meta["pixel_height"], meta["source"]) == (3, S, "latents:test")
    every = torch.cat([torch.from_numpy(np.load(io.BytesIO(s["latent.npy"]))) for s in latents])
    # the scaling was measured on these frames: unit-scale latents (up to clip 0's H.264 round trip)
    assert every.mean(dim=(0, 2, 3)).abs().max() < 0.05 and (every.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05
    decoded = ae.decode(every)
    assert decoded.shape == (CLIPS * F, 3, S, S) and decoded.abs().max() <= 1
    raw = ae.model.decoder(every * ae.model.latent_std[:, None, None] + ae.model.latent_mean[:, None, None])
    torch.testing.assert_close(decoded, raw.clamp(-1, 1))  # decode undoes the scaling first
    info = probe_shards(str(root / "latents" / "*.tar"))
    assert (info.kind, info.channels, info.size, info.encoder) == ("latents", C_LAT, H, None)
    assert (info.autoencoder, info.autoencoder_sha256) == (str(root / "ae.ckpt"), ae.sha256)
    assert f"latents (autoencoder {root / 'ae.ckpt'}, sha256 {ae.sha256[:8]}…)" in info.describe()


def test_the_run_records_the_autoencoder_and_follows_the_latents(root):
    ckpt = str(root / "run" / "checkpoints" / "last.ckpt")
    info = load_shard_info(ckpt)
    assert (info.autoencoder, info.autoencoder_sha256) == (str(root / "ae.ckpt"), file_sha256(str(root / "ae.ckpt")))
    cfg = load_model(ckpt).cfg
    assert (cfg.channels, cfg.image_size, cfg.patch, cfg.actions, cfg.classes) == (C_LAT, H, 1, 3, 2)


def test_sample_strips_show_the_decoded_frames(root, tmp_path):
    ae = load_autoencoder(str(root / "ae.ckpt"))
    net = load_model(str(root / "run" / "checkpoints" / "last.ckpt"), weights="trained")
    strip = SampleStrip(str(tmp_path), 1, count=2, frames=3, steps=2, seed=5, autoencoder=ae)
    trainer = SimpleNamespace(global_step=7, is_global_zero=True, loggers=[])
    path = strip.write(trainer, SimpleNamespace(model=net))
    latents = net.generate(2, 3, 2, generator=torch.Generator().manual_seed(5), compile=False,
                           **sample_conditions(net.cfg, 2, 3, 5))  # (2, 3, c, h, w)
    pixels = torch.stack([ae.decode(latents[:, f]) for f in range(3)], dim=1)  # (2, 3, 3, S, S)
    want = video_strip(pixels, 2)  # 64 // S = 2
    assert np.array_equal(np.asarray(Image.open(path)), want) and want.shape == (2 * S * 2, 3 * S * 2, 3)
    assert sorted(p.name for p in (root / "run" / "samples").iterdir()) == ["step_0000002.gif", "step_0000002.png"]
    assert np.asarray(Image.open(root / "run" / "samples" / "step_0000002.png")).shape == want.shape  # pixels


def test_a_latent_model_streams_as_it_recomputes_and_decodes_frame_by_frame(root):
    from scd_msc.inference.codec import AutoencoderCodec

    net = load_model(str(root / "run" / "checkpoints" / "last.ckpt"))
    conds = {"actions": torch.tensor([[0, 2, 1, 1, 0], [1, 1, 2, 0, 3]]), "labels": torch.tensor([0, 1])}
    prompt = torch.from_numpy(np.stack([np.load(io.BytesIO(s["latent.npy"]))[:2]
                                        for s in raw_samples(str(root / "latents" / "shard-000000.tar"))[:2]]))
    runs = [net.generate(2, 5, 2, generator=torch.Generator().manual_seed(3), prompt=prompt, cache=cache,
                         prompt_actions=torch.tensor([[0, 1], [2, 2]]), **conds) for cache in (True, False)]
    torch.testing.assert_close(runs[0], runs[1], atol=1e-4, rtol=0)
    codec = AutoencoderCodec(load_autoencoder(str(root / "ae.ckpt")), torch.device("cpu"))
    assert codec.clip(runs[0]).shape == (2, 5, 3, S, S)
    torch.testing.assert_close(codec.clip(runs[0]), codec.clip(runs[1]), atol=1e-4, rtol=0)
    eager = codec.clip(runs[0])
    fast = AutoencoderCodec(load_autoencoder(str(root / "ae.ckpt")), torch.device("cpu"), compile="eager")
    torch.testing.assert_close(fast.clip(runs[0]), eager)  # the compiled path (a torch.compile backend on CPU)


def cli(root: Path, *argv: str) -> int:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        return main(list(argv))


def mp4_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


GEN = ["generate", "--checkpoint", "run/checkpoints/last.ckpt", "--steps", "2", "--no-progress", "--labels", "0",
       "--actions", "random"]


def test_generate_writes_an_mp4_through_the_autoencoder_from_pixel_or_latent_prompts(root, capsys):
    ae = load_autoencoder(str(root / "ae.ckpt"))
    truth = true_pixels(root, 2)  # (CLIPS, 2, 3, S, S): the clips' first two frames
    want, other = (to_uint8(ae.decode(ae.encode(truth[i])), "f c h w -> f h w c").astype(float) for i in (0, 1))
    videos = {}
    for shards in ("pixels", "latents"):
        out = f"{shards}.mp4"
        assert cli(root, *GEN, "--frames", "3", "--out", out, "--prompt-shards", f"{shards}/*.tar",
                   "--prompt-frames", "2") == 0
        assert f"wrote {out} (5 frames)" in capsys.readouterr().out
        videos[shards] = mp4_frames(root / out).astype(float)
        assert videos[shards].shape == (5, S, S, 3)  # 2 prompt + 3 generated frames, decoded to 32x32 RGB
        # the prompt is decode(encode(true frames)); H.264 blurs the random autoencoder's speckle
        error, unrelated = np.abs(videos[shards][:2] - want).mean(), np.abs(videos[shards][:2] - other).mean()
        assert error < 0.5 * unrelated, (shards, error, unrelated)
    assert np.abs(videos["pixels"] - videos["latents"]).mean() < 0.5  # pixels encoded = the stored latents


def test_a_changed_missing_or_moved_autoencoder_is_named_with_both_hashes(root, tmp_path, capsys):
    ae = root / "ae.ckpt"
    sha = file_sha256(str(ae))
    other = torch.load(ae, weights_only=False)
    other["state_dict"]["model.latent_std"] = other["state_dict"]["model.latent_std"] * 2
    torch.save(other, tmp_path / "other.ckpt")
    other_sha = file_sha256(str(tmp_path / "other.ckpt"))
    argv = [*GEN, "--frames", "1", "--out", "x.mp4"]
    assert cli(root, *argv, "--autoencoder", str(tmp_path / "other.ckpt")) == 2
    assert capsys.readouterr().err == (f"scd-msc generate: error: --autoencoder='{tmp_path / 'other.ckpt'}': sha256 "
                                       f"{other_sha[:8]}… does not match the checkpoint's {sha[:8]}…\n")
    moved = tmp_path / "moved.ckpt"
    shutil.move(ae, moved)
    try:
        assert cli(root, *argv) == 2
        assert capsys.readouterr().err == (
            f"scd-msc generate: error: the checkpoint's autoencoder '{ae}' (sha256 {sha[:8]}…) is not there: "
            "pass --autoencoder AE.ckpt with the file the model was trained on\n")
        assert cli(root, *argv, "--autoencoder", str(moved)) == 0  # the moved file, hash checked
        assert "wrote x.mp4 (1 frames)" in capsys.readouterr().out
        shutil.copy(tmp_path / "other.ckpt", ae)  # another file at the recorded path
        assert cli(root, *argv) == 2
        assert capsys.readouterr().err == (
            f"scd-msc generate: error: the checkpoint's autoencoder '{ae}': sha256 {other_sha[:8]}… does not match "
            f"the checkpoint's {sha[:8]}…: pass --autoencoder AE.ckpt with the file the model was trained on\n")
        from scd_msc.training.train import train

        with pytest.raises(ValueError, match=rf"^data.train_shards: the shards' autoencoder '{ae}': sha256 "
                                             rf"{other_sha[:8]}… does not match the shards' {sha[:8]}…: sample strips"):
            with pytest.MonkeyPatch.context() as mp:
                mp.chdir(root)
                train(load_config(None, run_args("latents/*.tar", str(tmp_path / "run2"))))
    finally:
        shutil.move(moved, ae)
    assert cli(root, *argv, "--decoder", "math:sqrt") == 2
    assert capsys.readouterr().err.startswith("scd-msc generate: error: --decoder='math:sqrt': the checkpoint's "
                                              f"model makes {C_LAT}×{H}×{H} latents (autoencoder {ae}, sha256 ")
    assert file_sha256(str(ae)) == sha


def test_eval_scores_against_the_true_frames_and_prints_the_autoencoder_ceiling(root, capsys):
    base = ["eval", "--checkpoint", "run/checkpoints/last.ckpt", "--context", "2", "--horizon", "3", "--clips", "3",
            "--batch", "2", "--steps", "2", "--no-progress"]
    assert cli(root, *base, "--shards", "pixels/*.tar", "--out", "eval_pixels") == 0
    out = capsys.readouterr().out
    ae = load_autoencoder(str(root / "ae.ckpt"))
    truth = true_pixels(root, 5)[:3, 2:].flatten(0, 1)  # (3·3, 3, S, S): the scored horizon frames
    recon = ae.decode(ae.encode(truth))
    psnr = peak_signal_noise_ratio(recon.add(1).div(2), truth.add(1).div(2), data_range=1.0, reduction="none",
                                   dim=(1, 2, 3)).clamp(max=100).mean().item()
    line = next(x for x in out.splitlines() if "autoencoder ceiling" in x)
    assert line.startswith("mean over steps 1..3, autoencoder ceiling, decode(encode(true frames)): PSNR ")
    assert abs(float(line.split("PSNR ")[1].split(" dB")[0]) - psnr) < 0.01, (line, psnr)
    summary = json.loads((root / "eval_pixels" / "eval.json").read_text())
    assert abs(summary["autoencoder_ceiling"]["mean_psnr_1_8"] - psnr) < 1e-4 and summary["clips"] == 3
    assert summary["decoder"] == f"autoencoder {root / 'ae.ckpt'}"
    assert cli(root, *base, "--shards", "latents/*.tar", "--out", "eval_latents") == 0
    assert "autoencoder ceiling: n/a (latent shards" in capsys.readouterr().out
    assert json.loads((root / "eval_latents" / "eval.json").read_text())["autoencoder_ceiling"] is None


def test_play_decodes_through_the_autoencoder(root):
    import argparse

    from scd_msc.play.cli import add_play_arguments, build_game

    args = add_play_arguments(argparse.ArgumentParser()).parse_args(
        ["--checkpoint", str(root / "run" / "checkpoints" / "last.ckpt"), "--prompt-shards",
         str(root / "pixels" / "*.tar"), "--prompt-frames", "2", "--prompt-clips", "1", "--steps", "2"])
    game = build_game(args)
    shown = game.reset("clip")
    ae = load_autoencoder(str(root / "ae.ckpt"))
    want = to_uint8(ae.decode(ae.encode(true_pixels(root, 2)[0])), "f c h w -> f h w c")
    assert np.abs(np.stack([f.image for f in shown]).astype(int) - want).max() <= 1
    assert game.step(1).image.shape == (S, S, 3)
