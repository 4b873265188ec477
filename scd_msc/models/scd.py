"""SCD: separable causal diffusion (Bai et al., "Causality in Video Diffusers is
Separable from Denoising", arXiv 2602.10095) with MSC attention (Xu & Cao, arXiv
2412.09828).

The causal encoder runs once per frame; the frame-wise decoder denoises frame ``i``
over ``S`` steps conditioned on the context ``c[i-1]`` (a learned start context for
frame 0). Per frame: ``O(Enc) + S·O(Dec)``. The model is a set of pure calls
(:meth:`SCDModel.contexts`, :meth:`~SCDModel.encode`, :meth:`~SCDModel.decode`); the
objective is :func:`scd_msc.diffusion.scd_loss`, streaming is
:class:`scd_msc.streaming.SCDSession`.

Shapes: ``B`` batch · ``F`` frames · ``C`` channels · ``H, W`` pixels · ``N`` tokens per
frame · ``D`` width.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from scd_msc.diffusion import FlowConfig, Sampler, training_loss
from scd_msc.models.config import ModelConfig
from scd_msc.models.decoder import FrameDecoder
from scd_msc.models.encoder import CausalEncoder
from scd_msc.streaming import Generates, SCDSession, StackCache, check_generation_args


class SCDModel(Generates, nn.Module):
    objective = "scd"  # scd_msc.diffusion.OBJECTIVES

    def __init__(self, cfg: ModelConfig, backend: str = "auto"):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.encoder = CausalEncoder(cfg, backend)
        self.decoder = FrameDecoder(cfg, backend)
        self.start = nn.Parameter(torch.randn(cfg.grid * cfg.grid, cfg.dim) * 0.02)  # (N, D)

    def start_context(self, batch_size: int) -> Tensor:
        """The context of the first frame, ``(B, N, D)``."""
        return self.start.expand(batch_size, -1, -1)

    def new_cache(self) -> StackCache:
        """Empty streaming state of the encoder."""
        return self.encoder.new_cache()

    def encode(self, frames: Tensor, t: Tensor, cache: Optional[StackCache] = None) -> Tensor:
        """frames ``(B, F, C, H, W)`` at noise levels ``(B, F)`` -> ``(B, F, N, D)``; with
        ``cache`` they follow (and are appended to) the frames already encoded."""
        return self.encoder(frames, t, cache)

    def decode(self, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        """Velocity of noisy frames ``x (B', C, H, W)`` at levels ``t (B',)`` given their
        contexts ``c (B', N, D)`` (frames folded into ``B'``)."""
        return self.decoder(x, t, c)

    def contexts(self, video: Tensor, t_ctx: Optional[Tensor] = None) -> Tensor:
        """The context each frame is decoded from: ``(B, F, N, D)``, frame 0 gets the
        start context, frame i the encoding of frames ``< i``."""
        b, f = video.shape[:2]
        t_ctx = torch.zeros(b, f, device=video.device) if t_ctx is None else t_ctx
        c = self.encoder(video[:, :-1], t_ctx[:, :-1]) if f > 1 else video.new_zeros(b, 0, *self.start.shape)
        return torch.cat([self.start_context(b)[:, None].to(c.dtype), c], dim=1)

    def training_loss(self, video: Tensor, generator: Optional[torch.Generator] = None,
                      flow: Optional[FlowConfig] = None) -> dict[str, Tensor]:
        """Convenience: :func:`scd_msc.diffusion.training_loss` (the SCD objective)."""
        return training_loss(self, video, flow, generator)

    def stream(self, batch_size: int, steps: int, prompt: Optional[Tensor] = None,
               generator: Optional[torch.Generator] = None, cache: bool = True,
               guidance: float = 1.0, context_noise: float = 0.0,
               sampler: Optional[Sampler] = None) -> SCDSession:
        """A session that makes one frame per ``step()`` after the optional ``prompt``."""
        check_generation_args(self, batch_size, steps, prompt, context_noise=context_noise)
        return SCDSession(self, batch_size, steps, sampler or Sampler(), generator, cache, guidance,
                          prompt, context_noise)
