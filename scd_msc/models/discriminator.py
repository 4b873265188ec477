"""The optional adversarial term of the autoencoder's loss (DESIGN.md §8): a patch
discriminator and its losses. Off by default (``loss.gan_weight = 0``).

* :class:`PatchDiscriminator`: PatchGAN (Isola et al. 2017, arXiv 1611.07004) as in VQGAN
  (Esser et al. 2021, arXiv 2012.09841): 4x4 stride-2 convs, then two stride-1 ones, one
  real/fake logit per overlapping patch (70×70 pixels with 3 layers). GroupNorm instead of
  BatchNorm: no running statistics, the same in training and evaluation.
* :func:`discriminator_loss` / :func:`generator_loss`: ``hinge`` (Lim & Ye 2017) or
  ``non_saturating`` (Goodfellow et al. 2014) on those logits.
* :func:`adaptive_weight`: VQGAN's eq. 7, the ratio of the reconstruction loss's gradient
  norm to the adversarial loss's at the decoder's last layer, so the adversarial term
  never swamps reconstruction whatever the scale of its logits.

Shapes: ``N`` frames · ``C, H, W`` pixels · ``P, Q`` the grid of patch logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GAN_LOSSES = ("hinge", "non_saturating")
DISC_GROUPS = 8  # GroupNorm groups of the discriminator: its widths are multiples of this


class PatchDiscriminator(nn.Module):
    """``(N, C, H, W)`` in [-1, 1] -> patch logits ``(N, 1, P, Q)``, about ``H / 2**layers``
    per side; ``width`` channels first, doubled per layer up to ``8 · width``."""

    def __init__(self, channels: int, width: int = 64, layers: int = 3):
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]  # H -> H/2
        dim = width
        for i in range(1, layers + 1):
            out = width * min(2**i, 8)
            stride = 2 if i < layers else 1  # the last one keeps the grid (VQGAN's layout)
            seq += [nn.Conv2d(dim, out, 4, stride, 1, bias=False), nn.GroupNorm(DISC_GROUPS, out), nn.LeakyReLU(0.2)]
            dim = out
        seq.append(nn.Conv2d(dim, 1, 4, 1, 1))  # (N, 1, P, Q)
        self.net = nn.Sequential(*seq)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def discriminator_loss(real: Tensor, fake: Tensor, kind: str) -> Tensor:
    """Loss of the discriminator on logits of real and reconstructed frames ``(N, 1, P, Q)``."""
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return F.softplus(-real).mean() + F.softplus(fake).mean()  # -log σ(real) - log(1 - σ(fake))


def generator_loss(fake: Tensor, kind: str) -> Tensor:
    """Adversarial loss of the autoencoder on the logits of its reconstructions."""
    if kind == "hinge":
        return -fake.mean()
    return F.softplus(-fake).mean()  # -log σ(fake): non-saturating


def adaptive_weight(rec: Tensor, adv: Tensor, last: Tensor, cap: float = 1e4) -> Tensor:
    """``‖∇_last rec‖ / (‖∇_last adv‖ + 1e-4)``, clamped to ``[0, cap]`` and detached
    (``last``: the weight of the decoder's output conv). Both graphs are kept for the
    backward pass that follows."""
    g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv, last, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0, cap).detach()
