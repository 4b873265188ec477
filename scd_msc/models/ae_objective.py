"""The training objective of :class:`~scd_msc.models.autoencoder.FrameAutoencoder`:
L1 plus an SSIM term (DESIGN.md §8), on frames in [-1, 1]. No parameters of its own.

``loss = l1 · |x̂ - x|₁ + ssim · (1 - SSIM(x̂, x))``, SSIM (torchmetrics, Gaussian window)
on frames mapped to [0, 1], its window shrunk for frames smaller than it as in ``eval``.
With ``gan_weight > 0`` the training step adds an adversarial term from step
``gan_start`` on (``scd_msc/models/discriminator.py``; ``train-ae`` trains the
discriminator beside the autoencoder); its keys are here because they weigh the loss.

Shapes: ``N`` frames · ``C, H, W`` pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from scd_msc import checks
from scd_msc.models.autoencoder import FrameAutoencoder
from scd_msc.models.discriminator import DISC_GROUPS, GAN_LOSSES

SSIM_KERNEL = 11  # torchmetrics' default Gaussian window, shrunk for frames smaller than it (also in eval)


@dataclass
class AELossConfig:
    """Weights of the two terms; ``ssim = 0`` trains on L1 alone.

    The patch discriminator (off while ``gan_weight = 0``): its term weighs ``gan_weight``
    (times VQGAN's adaptive ratio when ``gan_adaptive``) and starts at optimizer step
    ``gan_start``, when the discriminator starts training too (AdamW, ``disc_lr``, betas
    0.5/0.9); ``gan_loss``: ``hinge`` or ``non_saturating``; ``disc_width`` channels in
    its first of ``disc_layers`` stride-2 layers."""

    l1: float = 1.0
    ssim: float = 0.2
    gan_weight: float = 0.0
    gan_start: int = 2000
    gan_loss: str = "hinge"
    gan_adaptive: bool = True
    disc_lr: float = 1e-4
    disc_width: int = 64
    disc_layers: int = 3

    def __post_init__(self) -> None:
        checks.number("loss.l1", self.l1, low=0)
        checks.number("loss.ssim", self.ssim, low=0)
        if self.l1 == 0 and self.ssim == 0:
            raise checks.error("loss.l1", self.l1, "a number > 0 when loss.ssim=0", "nothing would be trained")
        checks.number("loss.gan_weight", self.gan_weight, low=0, detail="0 turns the discriminator off")
        checks.non_negative_int("loss.gan_start", self.gan_start)
        checks.choice("loss.gan_loss", self.gan_loss, GAN_LOSSES)
        checks.number("loss.disc_lr", self.disc_lr, low=0, low_open=True)
        checks.positive_int("loss.disc_layers", self.disc_layers)
        if not checks.is_int(self.disc_width) or self.disc_width < 1 or self.disc_width % DISC_GROUPS:
            raise checks.error("loss.disc_width", self.disc_width, f"a positive multiple of {DISC_GROUPS}")

    @property
    def gan(self) -> bool:
        return self.gan_weight > 0


def ssim_kernel(height: int, width: int) -> int:
    """The largest odd window <= ``SSIM_KERNEL`` that fits the frame."""
    side = min(height, width)
    return min(SSIM_KERNEL, side if side % 2 else side - 1)


def ae_loss(ae: FrameAutoencoder, frames: Tensor, cfg: AELossConfig) -> dict[str, Tensor]:
    """``frames: (N, C, H, W)`` in [-1, 1] -> ``loss`` and its terms ``l1``, ``ssim`` (the
    SSIM itself, higher is better), the unscaled latents ``z: (N, c, h, w)`` and the
    reconstruction ``recon: (N, C, H, W)`` (unclamped)."""
    # imported here: torchmetrics takes over a second, and the config and checkpoint
    # paths that import this module (for AELossConfig) must stay fast
    from torchmetrics.functional.image import structural_similarity_index_measure

    recon, z = ae(frames)  # (N, C, H, W), (N, c, h, w)
    l1 = F.l1_loss(recon, frames)
    ssim = structural_similarity_index_measure(
        recon.float().add(1).div(2), frames.float().add(1).div(2), data_range=1.0,
        kernel_size=ssim_kernel(*frames.shape[-2:]))
    assert isinstance(ssim, Tensor)
    return {"loss": cfg.l1 * l1 + cfg.ssim * (1 - ssim), "l1": l1, "ssim": ssim, "z": z, "recon": recon}
