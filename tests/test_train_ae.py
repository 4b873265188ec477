"""``scd-msc train-ae`` end to end on CPU (issue 15): a short run of configs/ae_tiny.yaml on
bouncing-shapes shards makes a checkpoint whose autoencoder reconstructs better than its
initial weights, with measured latent scaling; it plugs into ``make-shards latents
--encoder`` and ``--decoder`` as a ``module:function`` pair; bad configs fail in one line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from scd_msc.checkpoint import load_autoencoder
from scd_msc.cli import main
from scd_msc.data import ClipDataset
from scd_msc.data.probe import probe_shards
from scd_msc.inference.latents import FrameDecoder
from scd_msc.models.autoencoder import FrameAutoencoder

S, FRAMES, STEPS = 16, 4, 40
MODULE = "my_ae_scd_train_ae"  # unique: sys.modules keeps it for the rest of the session
MY_AE = '''
"""The trained autoencoder as an --encoder / --decoder module:function pair."""
from scd_msc.checkpoint import load_autoencoder

AE = load_autoencoder("run/checkpoints/last.ckpt")
encode, decode = AE.encode, AE.decode
'''


def overrides(shards: str, out: str, steps: int = STEPS) -> list[str]:
    return [f"data.train_shards={shards}", "data.val_shards=null", "data.clip_frames=4", "data.batch_size=2",
            "data.num_workers=0", "data.shuffle_buffer=4", "data.epoch_batches=20", "model.width=16",
            "model.max_width=32", "model.groups=4", "model.factor=4", "train.lr=3e-3", "train.warmup_steps=1",
            f"train.max_steps={steps}", "train.checkpoint_every_n_steps=20", "train.val_every_n_steps=0",
            "train.progress_bar=false", f"train.out_dir={out}", "train.timing_warmup=0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_ae")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert main(["make-shards", "bouncing-shapes", "--channels", "3", "--out", "shards", "--frames",
                     str(FRAMES), "--size", str(S), "--clips", "8", "--no-progress"]) == 0
        assert main(["train-ae", "--config", str(Path(__file__).parents[1] / "configs" / "ae_tiny.yaml"),
                     *overrides("shards/*.tar", "run")]) == 0
    return root


def frames_of(root: Path) -> torch.Tensor:
    """Every frame of the shards, ``(N, C, H, W)`` in [-1, 1]."""
    clips = list(ClipDataset(str(root / "shards" / "*.tar"), FRAMES, 3, S, resampled=False))
    return torch.cat([c["video"] for c in clips])


def test_training_improves_the_round_trip_and_measures_the_scaling(run):
    ae = load_autoencoder(str(run / "run" / "checkpoints" / "last.ckpt"), weights="trained")
    assert (ae.config.model.factor, ae.config.model.latent_channels, ae.config.model.channels) == (4, 8, 3)
    x = frames_of(run)
    torch.manual_seed(0)  # the run's init: train.seed=0, seeded the same way by Lightning
    untrained = FrameAutoencoder(ae.config.model).eval()
    with torch.no_grad():
        before = (untrained.decode(untrained.encode(x)) - x).abs().mean()
    after = (ae.decode(ae.encode(x)) - x).abs().mean()
    assert after < 0.6 * before, (float(after), float(before))
    assert int(ae.model.observed) == STEPS and not torch.equal(ae.model.latent_std, torch.ones(8))
    z = ae.encode(x)  # measured on the latest training batches: unit scale, roughly
    assert z.shape == (x.shape[0], 8, S // 4, S // 4)
    assert z.mean(dim=(0, 2, 3)).abs().max() < 0.3 and (z.std(dim=(0, 2, 3)) - 1).abs().max() < 0.3
    assert len(ae.sha256) == 64 and ae.weights.weights == "trained"
    assert sorted(p.name for p in (run / "run" / "checkpoints").glob("*.ckpt")) == [
        "last.ckpt", "step_0000020.ckpt", "step_0000040.ckpt"]
    ema = load_autoencoder(str(run / "run" / "checkpoints" / "last.ckpt"), weights="ema")  # ae_tiny: ema_decay
    assert ema.weights.weights == "ema" and not torch.equal(ema.model.encoder.net[0].weight,
                                                             ae.model.encoder.net[0].weight)


def test_the_autoencoder_is_an_encoder_and_decoder_module(run, capsys):
    (run / f"{MODULE}.py").write_text(MY_AE)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(run)
        assert main(["make-shards", "latents", "--encoder", f"{MODULE}:encode", "--pixels", "bouncing-shapes",
                     "--channels", "3", "--out", "latents", "--frames", str(FRAMES), "--size", str(S),
                     "--clips", "2", "--no-progress"]) == 0
        decoder = FrameDecoder.load(f"{MODULE}:decode")
    info = probe_shards(str(run / "latents" / "*.tar"))
    assert (info.kind, info.channels, info.size, info.encoder) == ("latents", 8, S // 4, f"{MODULE}:encode")
    latent = next(iter(ClipDataset(str(run / "latents" / "*.tar"), FRAMES, 8, S // 4, resampled=False)))["video"]
    pixels = decoder(latent)  # (F, 3, S, S): the decoder's output, checked by generate's wrapper
    assert pixels.shape == (FRAMES, 3, S, S) and pixels.abs().max() <= 1
    ae = load_autoencoder(str(run / "run" / "checkpoints" / "last.ckpt"))
    torch.testing.assert_close(pixels, ae.decode(latent.float()))


def test_print_config_and_one_line_errors(run, capsys, tmp_path):
    base = ["train-ae", "--config", str(Path(__file__).parents[1] / "configs" / "ae_tiny.yaml")]
    shards = str(run / "shards" / "*.tar")
    assert main(base + overrides(shards, str(tmp_path / "x")) + ["--print-config"]) == 0
    out = capsys.readouterr().out
    assert "factor: 4" in out and "latent_channels: 8" in out and "image_size: 16" in out
    cases = [(["model.factor=3"], "model.factor=3: expected one of 2, 4, 8, 16"),
             (["model.factor=16", "data.image_size=24", "data.resize=true"],
              "data.image_size=24: expected a multiple of model.factor=16; pass model.factor=8 or shards of "
              "another size"),
             (["model.channels=1"], "data.channels=3 but model.channels=1: they must agree"),
             (["loss.l2=1"], "unknown config key 'loss.l2' in the command-line overrides (known under loss: l1, ssim)"),
             (["loss.ssim=abc"], "config key 'loss.ssim' in the command-line overrides expects float, got 'abc'")]
    for extra, message in cases:
        assert main(base + overrides(shards, str(tmp_path / "x")) + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith(f"scd-msc train-ae: error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


def test_load_autoencoder_refuses_a_diffusion_checkpoint(run, tmp_path):
    ckpt = torch.load(run / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    config = ckpt["hyper_parameters"]["config"]
    ckpt["hyper_parameters"]["config"] = {k: v for k, v in config.items() if k != "loss"}
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"^checkpoint '.*other.ckpt' is not an autoencoder checkpoint .*"
                                         r"expected one written by scd-msc train-ae$"):
        load_autoencoder(str(tmp_path / "other.ckpt"))
    with pytest.raises(ValueError, match=r"^checkpoint '.*missing.ckpt' does not exist"):
        load_autoencoder(str(tmp_path / "missing.ckpt"))
    assert dataclasses.is_dataclass(load_autoencoder(str(run / "run" / "checkpoints" / "last.ckpt")).config)
