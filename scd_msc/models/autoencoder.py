"""A per-frame convolutional autoencoder: pixels <-> latents (DESIGN.md §8).

The diffusion models of scd_msc work on latents as well as pixels; since no package
ships autoencoder weights, scd_msc trains its own (``scd-msc train-ae``). This one is a
plain residual conv net in the spirit of the SCD reference's DC-AE: ``log2(factor)``
stride-2 stages down (each ``blocks`` residual blocks, then a 2x2 stride-2 conv), a 1x1
conv to ``latent_channels``, and the mirror image up (nearest 2x + 3x3 conv).

The decoder runs once per streamed frame, so it has knobs of its own for speed (issue 15:
≤ 1 ms per 128×128 frame at batch 1): its own widths (``decoder_width`` /
``decoder_max_width``), blocks per stage (``decoder_blocks``, fewer where the
resolution is highest), and a sub-pixel upsampler (``upsample: pixel_shuffle``, Shi et
al. 2016, arXiv 1609.05158: a 3x3 conv to 4x the channels at the low resolution, then
``pixel_shuffle``; same FLOPs as nearest + conv but on a 4x smaller grid, so fewer,
larger GEMMs; initialised ICNR-style, Aitken et al. 2017, so it starts checkerboard-free).
``channels_last`` keeps weights and activations NHWC, the layout cuDNN's bf16 kernels
want. The defaults build the decoder of the mirror image above, key for key.

Latents are unit-scale: ``encode`` subtracts a per-channel mean and divides by a
per-channel std (buffers ``latent_mean`` / ``latent_std``, measured on training data
while training, stored in the checkpoint), ``decode`` undoes that first. Both follow the
contract of ``make-shards latents --encoder`` and ``generate --decoder``:
``encode: (F, C, H, W) in [-1, 1] -> (F, c, h, w)``,
``decode: (N, c, h, w) -> (N, C, H, W) in [-1, 1]``.

Shapes: ``N`` frames (a batch of single frames) · ``C, H, W`` pixels ·
``c, h, w`` latent channels and size, ``h = H / factor`` · ``D`` width of a stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from scd_msc import checks

FACTORS = (2, 4, 8, 16)
UPSAMPLERS = ("nearest", "pixel_shuffle")


@dataclass
class AutoencoderConfig:
    """``channels`` of a frame (1 grey, 3 RGB), ``latent_channels`` (``c``), spatial
    ``factor`` (``h = H / factor``), ``width`` of the first stage (doubled per stage, at
    most ``max_width``), residual ``blocks`` per stage, GroupNorm ``groups``.

    The decoder's own: ``decoder_width`` / ``decoder_max_width`` (0: the encoder's),
    ``decoder_blocks`` (one count per stage from the latents up, e.g. ``[2, 2, 1]`` for
    factor 8; empty: ``blocks`` each), ``upsample`` (``nearest`` or ``pixel_shuffle``).
    ``channels_last``: NHWC weights and activations (same math, faster convs on GPU)."""

    channels: int = 3
    latent_channels: int = 8
    factor: int = 8
    width: int = 64
    max_width: int = 512
    blocks: int = 2
    groups: int = 8
    decoder_width: int = 0
    decoder_max_width: int = 0
    decoder_blocks: list[int] = field(default_factory=list)
    upsample: str = "nearest"
    channels_last: bool = False

    def __post_init__(self) -> None:
        checks.choice("model.channels", self.channels, (1, 3))
        checks.positive_int("model.latent_channels", self.latent_channels)
        checks.choice("model.factor", self.factor, FACTORS)
        checks.positive_int("model.blocks", self.blocks)
        checks.positive_int("model.groups", self.groups)
        checks.choice("model.upsample", self.upsample, UPSAMPLERS)
        for name in ("width", "max_width", "decoder_width", "decoder_max_width"):
            value = getattr(self, name)
            if name.startswith("decoder") and value == 0:
                continue  # the encoder's
            if not checks.is_int(value) or value < self.groups or value % self.groups:
                raise checks.error(f"model.{name}", value, f"a multiple of model.groups={self.groups}"
                                   + (" (0: the encoder's)" if name.startswith("decoder") else ""))
        stages = self.stages
        blocks = list(self.decoder_blocks)
        if blocks and (len(blocks) != stages or not all(checks.is_int(b) and b >= 0 for b in blocks)):
            raise checks.error("model.decoder_blocks", blocks, f"{stages} counts >= 0 (one per decoder stage, "
                               f"from the latents up, for factor {self.factor}) or [] (model.blocks each)")

    @property
    def stages(self) -> int:
        """Stride-2 stages: ``log2(factor)``."""
        return int(math.log2(self.factor))

    @property
    def widths(self) -> list[int]:
        """``D`` of each encoder stage, from the pixels down: ``[64, 128, 256]`` for factor 8."""
        return [min(self.width * 2**i, self.max_width) for i in range(self.stages)]

    @property
    def decoder_widths(self) -> list[int]:
        """``D`` of each decoder stage, from the latents up (``[256, 128, 64]``)."""
        width, top = self.decoder_width or self.width, self.decoder_max_width or self.max_width
        return [min(width * 2**i, top) for i in range(self.stages)][::-1]

    @property
    def decoder_stage_blocks(self) -> list[int]:
        """Residual blocks of each decoder stage, from the latents up."""
        return list(self.decoder_blocks) or [self.blocks] * self.stages

    def compression(self) -> float:
        """Pixel values per latent value: ``C · factor² / c`` (24 for RGB, f8, c8)."""
        return self.channels * self.factor**2 / self.latent_channels


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, plus the input: ``(N, D, H, W) -> (N, D, H, W)``."""

    def __init__(self, dim: int, groups: int):
        super().__init__()
        self.net = nn.Sequential(nn.GroupNorm(groups, dim), nn.SiLU(), nn.Conv2d(dim, dim, 3, padding=1),
                                 nn.GroupNorm(groups, dim), nn.SiLU(), nn.Conv2d(dim, dim, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)  # each block starts as the identity
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class Encoder(nn.Module):
    """``(N, C, H, W) -> (N, c, H/factor, W/factor)``, unscaled latents."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        widths = cfg.widths
        layers: list[nn.Module] = [nn.Conv2d(cfg.channels, widths[0], 3, padding=1)]
        for i, dim in enumerate(widths):
            layers += [ResBlock(dim, cfg.groups) for _ in range(cfg.blocks)]
            layers.append(nn.Conv2d(dim, widths[min(i + 1, len(widths) - 1)], 2, stride=2))  # H -> H/2
        layers += [nn.GroupNorm(cfg.groups, widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], cfg.latent_channels, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def upsampler(dim: int, out: int, mode: str) -> list[nn.Module]:
    """2x up, ``(N, dim, h, w) -> (N, out, 2h, 2w)``: nearest + 3x3 conv, or a 3x3 conv to
    ``4·out`` channels on the small grid + ``pixel_shuffle``, its weights ICNR-initialised
    (the four sub-pixels start equal: nearest upsampling of one conv, no checkerboard)."""
    if mode == "nearest":
        return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim, out, 3, padding=1)]
    conv = nn.Conv2d(dim, 4 * out, 3, padding=1)
    seed = nn.Conv2d(dim, out, 3, padding=1)  # its default init, copied to every sub-pixel
    with torch.no_grad():  # pixel_shuffle reads channel o·4 + (2i + j) as sub-pixel (i, j) of channel o
        conv.weight.copy_(seed.weight.repeat_interleave(4, dim=0))  # (4·out, dim, 3, 3)
        conv.bias.copy_(seed.bias.repeat_interleave(4))
    return [conv, nn.PixelShuffle(2)]  # (N, 4·out, h, w) -> (N, out, 2h, 2w)


class Decoder(nn.Module):
    """``(N, c, h, w) -> (N, C, h·factor, w·factor)``, unclamped pixels."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        widths = cfg.decoder_widths
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, widths[0], 3, padding=1)]
        for i, (dim, blocks) in enumerate(zip(widths, cfg.decoder_stage_blocks)):
            layers += [ResBlock(dim, cfg.groups) for _ in range(blocks)]
            layers += upsampler(dim, widths[min(i + 1, len(widths) - 1)], cfg.upsample)  # h -> 2h
        layers += [nn.GroupNorm(cfg.groups, widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], cfg.channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class FrameAutoencoder(nn.Module):
    """Encoder and decoder of single frames, with the latent scaling as buffers.

    ``encode`` / ``decode`` are the inference calls (scaled latents, pixels clamped to
    [-1, 1]); training uses ``encoder`` / ``decoder`` directly on unscaled latents and
    feeds those to :meth:`observe` to measure the scaling."""

    def __init__(self, cfg: AutoencoderConfig, momentum: float = 0.1):
        super().__init__()
        self.cfg, self.momentum = cfg, momentum
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels))
        self.register_buffer("observed", torch.zeros((), dtype=torch.long))  # batches seen by observe()
        if cfg.channels_last:
            self.to(memory_format=torch.channels_last)  # 4-d weights only; buffers are 1-d

    def _layout(self, x: Tensor) -> Tensor:
        """``x`` in the memory layout of the weights (NHWC with ``channels_last``)."""
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def _check(self, x: Tensor, channels: int, name: str, what: str) -> None:
        if x.dim() != 4 or x.shape[1] != channels:
            raise ValueError(f"{name} shape {tuple(x.shape)}: expected {what}")

    @torch.no_grad()
    def observe(self, z: Tensor) -> None:
        """Update the per-channel mean/std with unscaled latents ``z: (N, c, h, w)``: the
        first batch sets them, later ones move them by ``momentum`` (0.1: about the last
        ten training batches count, so the scaling follows the encoder as it trains)."""
        mean = z.float().mean(dim=(0, 2, 3))  # (c,)
        std = z.float().std(dim=(0, 2, 3)).clamp_min(1e-6)  # (c,)
        m = 1.0 if int(self.observed) == 0 else self.momentum
        self.latent_mean.lerp_(mean, m)
        self.latent_std.lerp_(std, m)
        self.observed += 1

    def encode(self, x: Tensor) -> Tensor:
        """Pixels ``(N, C, H, W)`` in [-1, 1] -> unit-scale latents ``(N, c, H/f, W/f)``."""
        f = self.cfg.factor
        self._check(x, self.cfg.channels, "encode: pixels", f"(N, C={self.cfg.channels}, H, W)")
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"encode: pixels shape {tuple(x.shape)}: expected H and W multiples of factor={f}")
        z = self.encoder(self._layout(x))
        return (z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def decode(self, z: Tensor) -> Tensor:
        """Unit-scale latents ``(N, c, h, w)`` -> pixels ``(N, C, h·f, w·f)`` in [-1, 1]."""
        self._check(z, self.cfg.latent_channels, "decode: latents", f"(N, c={self.cfg.latent_channels}, h, w)")
        z = z * self.latent_std[:, None, None] + self.latent_mean[:, None, None]
        return self.decoder(self._layout(z)).clamp(-1, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Training pass: ``(N, C, H, W)`` -> (reconstruction ``(N, C, H, W)`` unclamped,
        unscaled latents ``(N, c, h, w)``)."""
        z = self.encoder(self._layout(x))
        return self.decoder(z), z

