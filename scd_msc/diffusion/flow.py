"""Rectified-flow noise process for training (no parameters; the networks live in models/).

Convention: ``x_t = (1 - t) * x0 + t * eps``, ``t`` in [0, 1], ``t = 1`` is pure noise,
``t = 0`` is data; the network regresses the velocity ``v = eps - x0`` with an MSE loss
(Liu et al. 2022). Timesteps are logit-normal per frame (Esser et al. 2024, SD3).

Shapes (DESIGN.md legend): ``B`` batch, ``F`` frames, ``C, H, W`` a frame, ``N`` tokens,
``D`` width, ``K = decoder_multi_batch``.

The objectives that use it (one SCD step, one diffusion-forcing step) are in
:mod:`scd_msc.diffusion.objectives`; sampling is :class:`scd_msc.diffusion.Sampler`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import repeat

from scd_msc.checks import number, positive_int
from scd_msc.diffusion._random import rand, randn

_T_EPS = 1e-6  # keeps logit-normal draws strictly inside (0, 1) in float32


@dataclass
class FlowConfig:
    """The training objective's settings (``flow:`` in the experiment config); the
    sampler's are :class:`scd_msc.diffusion.SamplerConfig`."""

    logit_normal_mean: float = 0.0  # training t = sigmoid(N(mean, std^2)); median sigmoid(mean)
    logit_normal_std: float = 1.0
    context_noise_max: float = 0.0  # training: context frames noised to t_ctx ~ U(0, max) per frame
    decoder_multi_batch: int = 1  # K noise draws per encoder pass

    def __post_init__(self) -> None:
        number("flow.logit_normal_std", self.logit_normal_std, low=0, low_open=True)
        number("flow.context_noise_max", self.context_noise_max, low=0, high=1)
        positive_int("flow.decoder_multi_batch", self.decoder_multi_batch)


class FlowMatching:
    """Noise process, training targets and loss of rectified flow. Holds only its config."""

    def __init__(self, config: FlowConfig | None = None) -> None:
        self.config = config if config is not None else FlowConfig()

    def sample_timesteps(
        self,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Logit-normal timesteps of any ``shape``, e.g. (B, F): one per frame, float32 in (0, 1).

        ``generator=None`` uses torch's global RNG (as seeded by the trainer).
        """
        cfg = self.config
        u = randn(shape, generator, device)  # shape
        t = torch.sigmoid(cfg.logit_normal_mean + cfg.logit_normal_std * u)
        return t.clamp(_T_EPS, 1 - _T_EPS)

    @staticmethod
    def add_noise(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``x_t = (1 - t) * x0 + t * eps``.

        ``x0``, ``eps``: (B, F, C, H, W) or any shape; ``t``: a leading-axes prefix of it,
        e.g. (B, F) per frame or (B,) per sample, broadcast over the trailing axes.
        """
        if eps.shape != x0.shape:
            raise ValueError(f"eps shape {tuple(eps.shape)} != x0 shape {tuple(x0.shape)}")
        if t.shape != x0.shape[: t.ndim]:
            raise ValueError(
                f"t shape {tuple(t.shape)} must be a leading prefix of x0 shape {tuple(x0.shape)}"
            )
        t = t.to(x0.dtype).reshape(*t.shape, *([1] * (x0.ndim - t.ndim)))  # (B, F, 1, 1, 1)
        return (1 - t) * x0 + t * eps

    @staticmethod
    def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``v = eps - x0`` = d x_t / dt; shape of ``x0``. Then ``x0 = x_t - t * v``."""
        if eps.shape != x0.shape:
            raise ValueError(f"eps shape {tuple(eps.shape)} != x0 shape {tuple(x0.shape)}")
        return eps - x0

    @staticmethod
    def loss(pred_v: torch.Tensor, target_v: torch.Tensor) -> torch.Tensor:
        """Mean squared error over all elements; shapes must match exactly (no broadcasting)."""
        if pred_v.shape != target_v.shape:
            raise ValueError(
                f"pred_v shape {tuple(pred_v.shape)} != target_v shape {tuple(target_v.shape)}"
            )
        return F.mse_loss(pred_v, target_v.to(pred_v.dtype))

    def training_inputs(
        self, x0: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw per-frame ``t`` and ``eps`` for ``x0`` (B, F, ...).

        Returns ``(x_t (B, F, ...), t (B, F), v (B, F, ...))``.
        """
        if x0.ndim < 2:
            raise ValueError(f"x0 must be (B, F, ...), got shape {tuple(x0.shape)}")
        t = self.sample_timesteps(x0.shape[:2], generator, x0.device)  # (B, F)
        eps = randn(x0.shape, generator, x0.device, x0.dtype)  # (B, F, C, H, W)
        return self.add_noise(x0, t, eps), t, self.velocity_target(x0, eps)

    def context_noise(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Context-noise augmentation: noise each context frame to ``t_ctx ~ U(0, max)``.

        ``x``: (B, F, ...) clean frames. Returns ``(x_ctx (B, F, ...), t_ctx (B, F))``; the
        encoder takes ``t_ctx`` as its per-frame noise level. With ``context_noise_max == 0``
        returns ``x`` itself and zeros, drawing no randomness.
        """
        if x.ndim < 2:
            raise ValueError(f"x must be (B, F, ...), got shape {tuple(x.shape)}")
        t_max = self.config.context_noise_max
        if t_max == 0.0:
            return x, torch.zeros(x.shape[:2], device=x.device)
        t_ctx = t_max * rand(x.shape[:2], generator, x.device)  # (B, F)
        eps = randn(x.shape, generator, x.device, x.dtype)  # (B, F, ...)
        return self.add_noise(x, t_ctx, eps), t_ctx

    def expand_multi_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Repeat along the batch axis ``K = decoder_multi_batch`` times: (B, ...) -> (K*B, ...).

        Block-major: row ``k * B + b`` is ``x[b]`` (same as ``torch.cat([x] * K)``). Apply it
        to the encoder output and the clean frames, then draw noise for the K*B rows, so
        one encoder pass trains K independent noise draws; gradients sum over the K copies.
        Returns ``x`` itself when K == 1.
        """
        k = self.config.decoder_multi_batch
        if k == 1:
            return x
        return repeat(x, "b ... -> (k b) ...", k=k)  # (K*B, ...)
