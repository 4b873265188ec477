"""``scd-msc train-ae`` end to end on CPU (issue 15): a short run of configs/ae_tiny.yaml on
bouncing-shapes shards makes a checkpoint whose autoencoder reconstructs better than its
initial weights, with measured latent scaling; it plugs into ``make-shards latents
--encoder`` and ``--decoder`` as a ``module:function`` pair; bad configs fail in one line."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import lightning as L
import pytest
import torch

from scd_msc.checkpoint import load_autoencoder
from scd_msc.cli import main
from scd_msc.data import ClipDataset
from scd_msc.data.probe import probe_shards
from scd_msc.inference.latents import FrameDecoder
from scd_msc.models.autoencoder import FrameAutoencoder

S, FRAMES, STEPS = 16, 4, 40
CONFIG = Path(__file__).parents[1] / "configs" / "ae_tiny.yaml"
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
             (["loss.l2=1"], "unknown config key 'loss.l2' in the command-line overrides (known under loss: l1, ssim, "
                            "gan_weight, gan_start, gan_loss, gan_adaptive, disc_lr, disc_width, disc_layers)"),
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


GAN = ["loss.gan_weight=0.5", "loss.gan_start=3", "loss.disc_width=8", "loss.disc_layers=2", "train.ema_decay=0.9"]


class Record(L.Callback):
    """Per step: whether the discriminator holds gradients, its weights, the logged gan_weight;
    at train start, the discriminator's weights and optimizer state (what a resume restored)."""

    def __init__(self):
        self.steps, self.start = [], None

    def on_train_start(self, trainer, module):
        self.start = ({k: v.clone() for k, v in module.discriminator.state_dict().items()},
                      copy.deepcopy(trainer.optimizers[1].state_dict()))  # AdamW updates its tensors in place

    def on_train_batch_end(self, trainer, module, *args):
        d = module.discriminator
        self.steps.append((trainer.global_step, all(p.grad is not None for p in d.parameters()),
                           d.net[0].weight.detach().clone(), float(trainer.callback_metrics["train/gan_weight"])))


def test_discriminator_turns_on_at_its_start_step_and_resumes(run, tmp_path):
    from scd_msc.ae_config import load_ae_config
    from scd_msc.training.autoencoder import train_ae

    args = overrides(str(run / "shards" / "*.tar"), str(tmp_path / "gan"), steps=5) + GAN
    rec = Record()
    last = train_ae(load_ae_config(str(CONFIG), args), callbacks=[rec])
    steps = [s for s, *_ in rec.steps]
    assert steps == [1, 2, 3, 4, 5]  # global_step counts autoencoder steps only
    grads = [g for _, g, _, _ in rec.steps]
    weights = [w for *_, w in rec.steps]
    assert grads == [False, False, False, True, True]  # the step taken at global_step 3 is the first
    assert weights[:3] == [0, 0, 0] and all(w > 0 for w in weights[3:])
    d = [w for _, _, w, _ in rec.steps]
    assert torch.equal(d[2], d[0]) and not torch.equal(d[3], d[2]) and not torch.equal(d[4], d[3])
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert len(ckpt["optimizer_states"]) == 2 and any(k.startswith("discriminator.") for k in ckpt["state_dict"])
    assert load_autoencoder(last, weights="ema").weights.weights == "ema"  # the discriminator is not in its way

    again = Record()
    train_ae(load_ae_config(str(CONFIG), args + ["train.max_steps=6"]), resume=last,
             callbacks=[again])
    weights_at_resume, opt_at_resume = again.start
    for k, v in weights_at_resume.items():
        assert torch.equal(v, ckpt["state_dict"][f"discriminator.{k}"]), k
    saved = ckpt["optimizer_states"][1]["state"]
    assert saved and all(torch.equal(opt_at_resume["state"][i]["exp_avg"], s["exp_avg"]) for i, s in saved.items())
    assert [s for s, *_ in again.steps] == [6] and again.steps[0][1]


def test_max_minutes_stops_cleanly_with_a_checkpoint(run, tmp_path):
    args = overrides(str(run / "shards" / "*.tar"), str(tmp_path / "timed"), steps=1000) + ["train.max_minutes=0.0001"]
    assert main(["train-ae", "--config", str(CONFIG), *args]) == 0
    ckpt = torch.load(tmp_path / "timed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert 1 <= ckpt["global_step"] < 5  # stopped by the clock, not by max_steps


def test_gan_config_errors(run, capsys, tmp_path):
    base = ["train-ae", "--config", str(CONFIG)] + overrides(str(run / "shards" / "*.tar"), str(tmp_path / "x"))
    cases = [(["loss.gan_loss=wgan"], "loss.gan_loss='wgan': expected one of hinge, non_saturating"),
             (["loss.disc_width=12"], "loss.disc_width=12: expected a positive multiple of 8"),
             (["loss.gan_weight=0.1", "train.accumulate_grad_batches=2"],
              "train.accumulate_grad_batches=2: expected 1 when loss.gan_weight > 0; the discriminator is "
              "trained by a manual optimizer step"),
             (["train.lr_schedule=linear"], "train.lr_schedule='linear': expected one of constant, cosine")]
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith(f"scd-msc train-ae: error: {message}") and err.count("\n") == 1, err
