"""The causal-DiT session: a KV cache of committed frames. Each new frame runs ``S``
full-depth passes that attend to the cache without writing it, then one pass at the
commit level ``t_c`` (0 by default) writes the finished frame's keys/values.

Shapes: ``B`` batch · ``F`` frames · ``C`` channels · ``H, W`` pixels.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from scd_msc.diffusion import Sampler
from scd_msc.streaming.session import Session


class DiTSession(Session):
    """Streams a :class:`~scd_msc.models.CausalDiT` (``__call__(x, t, cache, write)``, ``new_cache``)."""

    def __init__(self, model: nn.Module, batch_size: int, steps: int, sampler: Sampler,
                 generator: Optional[torch.Generator], cache: bool = True,
                 prompt: Optional[Tensor] = None, context_noise: float = 0.0):
        super().__init__(model, batch_size, steps, sampler, generator, context_noise)
        self.cache = model.new_cache() if cache else None
        self.history: Optional[Tensor] = None  # (B, F, C, H, W) committed frames, for cache=False
        self.begin(prompt)

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """x ``(B, C, H, W)`` at level t ``(B,)`` -> velocity of the new frame (reads only)."""
        t = t.to(x.dtype)[:, None]  # (B, 1)
        if self.cache is not None:
            return self.model(x[:, None], t, self.cache, write=False)[:, 0]
        if self.history is None:
            return self.model(x[:, None], t)[:, 0]
        video = torch.cat([self.history, x[:, None]], dim=1)  # (B, F+1, C, H, W)
        levels = torch.cat([self.t_commit.expand(-1, self.history.shape[1]), t], dim=1)
        return self.model(video, levels)[:, -1]

    @torch.no_grad()
    def denoise(self) -> Tensor:
        full = self.cache is not None and self.cache.full()  # shapes fixed from here on
        velocity = self.graphed("velocity", self.velocity, ready=full)
        return self.sampler.sample(velocity, self.prior(), self.steps)

    def write(self, frames: Tensor, t: Tensor) -> None:
        """One pass at the frames' levels writes their keys/values (or keeps the frames)."""
        if self.cache is None:
            self.history = frames if self.history is None else torch.cat([self.history, frames], 1)
            return
        self.model(frames, t, self.cache, write=True)

    def write_one(self, frame: Tensor) -> Tensor:
        """frame ``(B, C, H, W)``, already noised: one pass at ``t_c`` writes its K/V."""
        return self.model(frame[:, None], self.t_commit, self.cache, write=True)
