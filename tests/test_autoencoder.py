"""The frame autoencoder (issue 15): shapes per factor, the encode/decode contract,
unit-scale latents from the measured scaling, one-line config errors, and a round trip
that improves when a tiny one overfits a few frames on CPU."""

from __future__ import annotations

import re

import pytest
import torch

from scd_msc.models.ae_objective import AELossConfig, ae_loss
from scd_msc.models.autoencoder import AutoencoderConfig, FrameAutoencoder, ResBlock, upsampler

TINY = dict(width=16, max_width=32, blocks=1, groups=4)


@pytest.mark.parametrize("factor", [2, 4, 8, 16])
@pytest.mark.parametrize("channels", [1, 3])
def test_encode_decode_shapes_and_range(factor, channels):
    ae = FrameAutoencoder(AutoencoderConfig(channels=channels, latent_channels=5, factor=factor, **TINY))
    x = torch.rand(3, channels, 48, 32) * 2 - 1  # not square: h and w are divided apart
    z = ae.encode(x)
    assert z.shape == (3, 5, 48 // factor, 32 // factor)
    y = ae.decode(torch.randn(2, 5, 3, 5) * 100)  # far outside any trained range: still clamped
    assert y.shape == (2, channels, 3 * factor, 5 * factor) and y.abs().max() <= 1


def test_widths_double_per_stage_up_to_max():
    assert AutoencoderConfig(factor=16, width=64, max_width=256).widths == [64, 128, 256, 256]
    assert AutoencoderConfig(channels=3, factor=8, latent_channels=8).compression() == 24


def test_scaling_makes_latents_unit_scale_and_decode_undoes_it():
    ae = FrameAutoencoder(AutoencoderConfig(latent_channels=4, factor=4, **TINY)).eval()
    x = torch.rand(16, 3, 16, 16) * 2 - 1
    ae.observe(ae.encoder(x))  # the first batch sets the scaling outright
    z = ae.encode(x)  # (16, 4, 4, 4)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(ae.decode(z), ae.decoder(ae.encoder(x)).clamp(-1, 1), atol=1e-5, rtol=0)
    mean = ae.latent_mean.clone()
    ae.observe(ae.encoder(x) + 10)  # later batches move it by the momentum only
    torch.testing.assert_close(ae.latent_mean, mean + 10 * ae.momentum, atol=1e-4, rtol=0)
    assert int(ae.observed) == 2


def test_wrong_shapes_fail_in_one_line():
    ae = FrameAutoencoder(AutoencoderConfig(latent_channels=4, factor=4, **TINY))
    with pytest.raises(ValueError, match=r"^encode: pixels shape \(2, 1, 16, 16\): expected \(N, C=3, H, W\)$"):
        ae.encode(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"^encode: pixels shape \(2, 3, 16, 18\): expected H and W multiples "
                                         r"of factor=4$"):
        ae.encode(torch.zeros(2, 3, 16, 18))
    with pytest.raises(ValueError, match=r"^decode: latents shape \(2, 3, 4, 4\): expected \(N, c=4, h, w\)$"):
        ae.decode(torch.zeros(2, 3, 4, 4))


@pytest.mark.parametrize("kwargs, message", [
    (dict(factor=3), "model.factor=3: expected one of 2, 4, 8, 16"),
    (dict(channels=2), "model.channels=2: expected one of 1, 3"),
    (dict(latent_channels=0), "model.latent_channels=0: expected an integer >= 1"),
    (dict(width=20, groups=8), "model.width=20: expected a multiple of model.groups=8"),
])
def test_config_errors_name_key_value_and_expectation(kwargs, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        AutoencoderConfig(**kwargs)


def test_loss_config_refuses_nothing_to_train():
    with pytest.raises(ValueError, match=r"^loss.l1=0: expected a number > 0 when loss.ssim=0; nothing would be "):
        AELossConfig(l1=0, ssim=0)


def test_round_trip_error_falls_when_overfitting_a_few_frames():
    gen = torch.Generator().manual_seed(0)
    ae = FrameAutoencoder(AutoencoderConfig(latent_channels=8, factor=4, width=8, max_width=16, blocks=1, groups=4))
    frames = torch.rand(4, 3, 16, 16, generator=gen) * 2 - 1  # (N, C, H, W)
    frames = torch.nn.functional.avg_pool2d(frames, 3, 1, 1)  # some spatial structure
    cfg = AELossConfig()
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    first = ae_loss(ae, frames, cfg)
    for _ in range(30):
        out = ae_loss(ae, frames, cfg)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        ae.observe(out["z"])
    last = ae_loss(ae, frames, cfg)
    assert last["l1"] < 0.5 * first["l1"] and last["ssim"] > first["ssim"]
    with torch.no_grad():  # the inference calls (scaled latents) give the same reconstruction
        recon = ae.decode(ae.encode(frames))
    assert (recon - frames).abs().mean() < 0.5 * first["l1"]


def test_decoder_options_set_widths_blocks_and_upsampler():
    cfg = AutoencoderConfig(factor=8, width=16, max_width=64, groups=4, decoder_width=8, decoder_max_width=16,
                            decoder_blocks=[0, 2, 1], upsample="pixel_shuffle")
    assert cfg.widths == [16, 32, 64] and cfg.decoder_widths == [16, 16, 8]
    ae = FrameAutoencoder(cfg)
    layers = list(ae.decoder.net)
    stage_blocks, count = [], 0
    for layer in layers[1:]:
        if isinstance(layer, ResBlock):
            count += 1
        elif isinstance(layer, torch.nn.PixelShuffle):
            stage_blocks.append(count)
            count = 0
    assert stage_blocks == [0, 2, 1] and not any(isinstance(x, torch.nn.Upsample) for x in layers)
    assert ae.decode(torch.randn(2, 8, 3, 5)).shape == (2, 3, 24, 40)


def test_pixel_shuffle_upsampler_starts_as_nearest_upsampling_of_a_conv():
    """ICNR: the four sub-pixels of each output start equal, i.e. nearest 2x of the conv
    on the small grid that seeded them: no checkerboard at initialisation."""
    torch.manual_seed(0)
    conv, shuffle = upsampler(6, 5, "pixel_shuffle")
    x = torch.randn(2, 6, 7, 9)
    y = shuffle(conv(x))  # (2, 5, 14, 18)
    small = torch.nn.functional.conv2d(x, conv.weight[::4], conv.bias[::4], padding=1)  # (2, 5, 7, 9)
    torch.testing.assert_close(y, small.repeat_interleave(2, -1).repeat_interleave(2, -2))
    nearest = upsampler(6, 5, "nearest")
    assert isinstance(nearest[0], torch.nn.Upsample) and nearest[1].out_channels == 5


def test_channels_last_is_the_same_function():
    torch.manual_seed(0)
    plain = FrameAutoencoder(AutoencoderConfig(latent_channels=4, factor=4, **TINY)).eval()
    nhwc = FrameAutoencoder(AutoencoderConfig(latent_channels=4, factor=4, channels_last=True, **TINY)).eval()
    nhwc.load_state_dict(plain.state_dict())
    assert nhwc.decoder.net[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(nhwc.decode(nhwc.encode(x)), plain.decode(plain.encode(x)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(decoder_blocks=[1, 1]), "model.decoder_blocks=[1, 1]: expected 3 counts >= 0 (one per decoder stage, "
                                  "from the latents up, for factor 8) or [] (model.blocks each)"),
    (dict(upsample="bilinear"), "model.upsample='bilinear': expected one of nearest, pixel_shuffle"),
    (dict(decoder_width=12), "model.decoder_width=12: expected a multiple of model.groups=8 (0: the encoder's)"),
])
def test_decoder_option_errors(kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        AutoencoderConfig(**kwargs)


def test_lr_factor_warms_up_then_follows_a_cosine_to_the_floor_by_steps_or_time():
    from scd_msc.config import TrainConfig
    from scd_msc.training.optim import lr_factor

    t = TrainConfig(warmup_steps=10, max_steps=110, lr_schedule="cosine", lr_min_ratio=0.1)
    assert lr_factor(4, t) == pytest.approx(0.5) and lr_factor(10, t) == pytest.approx(1.0)
    assert lr_factor(60, t) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi/2)
    assert lr_factor(110, t) == pytest.approx(0.1) and lr_factor(500, t) == pytest.approx(0.1)
    assert lr_factor(20, t, time_fraction=1.0) == pytest.approx(0.1)  # the clock ran out first
    assert lr_factor(60, t, time_fraction=0.2) == lr_factor(60, t)  # the steps are further along
    constant = TrainConfig(warmup_steps=10, max_steps=110)
    assert lr_factor(100, constant, time_fraction=1.0) == 1.0
