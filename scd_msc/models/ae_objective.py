"""The training objective of :class:`~scd_msc.models.autoencoder.FrameAutoencoder`:
L1 plus an SSIM term (DESIGN.md §8), on frames in [-1, 1]. No parameters of its own.

``loss = l1 · |x̂ - x|₁ + ssim · (1 - SSIM(x̂, x))``, SSIM (torchmetrics, Gaussian window)
on frames mapped to [0, 1], its window shrunk for frames smaller than it as in ``eval``.

Shapes: ``N`` frames · ``C, H, W`` pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from scd_msc import checks
from scd_msc.models.autoencoder import FrameAutoencoder

SSIM_KERNEL = 11  # torchmetrics' default Gaussian window, shrunk for frames smaller than it (also in eval)


@dataclass
class AELossConfig:
    """Weights of the two terms; ``ssim = 0`` trains on L1 alone."""

    l1: float = 1.0
    ssim: float = 0.2

    def __post_init__(self) -> None:
        checks.number("loss.l1", self.l1, low=0)
        checks.number("loss.ssim", self.ssim, low=0)
        if self.l1 == 0 and self.ssim == 0:
            raise checks.error("loss.l1", self.l1, "a number > 0 when loss.ssim=0", "nothing would be trained")


def ssim_kernel(height: int, width: int) -> int:
    """The largest odd window <= ``SSIM_KERNEL`` that fits the frame."""
    side = min(height, width)
    return min(SSIM_KERNEL, side if side % 2 else side - 1)


def ae_loss(ae: FrameAutoencoder, frames: Tensor, cfg: AELossConfig) -> dict[str, Tensor]:
    """``frames: (N, C, H, W)`` in [-1, 1] -> ``loss`` and its terms ``l1``, ``ssim`` (the
    SSIM itself, higher is better), and the unscaled latents ``z: (N, c, h, w)``."""
    # imported here: torchmetrics takes over a second, and the config and checkpoint
    # paths that import this module (for AELossConfig) must stay fast
    from torchmetrics.functional.image import structural_similarity_index_measure

    recon, z = ae(frames)  # (N, C, H, W), (N, c, h, w)
    l1 = F.l1_loss(recon, frames)
    ssim = structural_similarity_index_measure(
        recon.float().add(1).div(2), frames.float().add(1).div(2), data_range=1.0,
        kernel_size=ssim_kernel(*frames.shape[-2:]))
    assert isinstance(ssim, Tensor)
    return {"loss": cfg.l1 * l1 + cfg.ssim * (1 - ssim), "l1": l1, "ssim": ssim, "z": z}
