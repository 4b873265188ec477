"""The SCD session: the frame-wise decoder runs ``S`` steps on ``(c, noise)``; the finished
frame then goes through the causal encoder once, appending to every layer's cache, and
its encoding is the next frame's context ``c`` (Bai et al., arXiv 2602.10095).

Shapes: ``B`` batch · ``F`` frames · ``C`` channels · ``H, W`` pixels · ``N`` tokens per
frame · ``D`` width.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from scd_msc.diffusion import Sampler
from scd_msc.streaming.session import Session


class SCDSession(Session):
    """Streams an :class:`~scd_msc.models.SCDModel` (``start_context``, ``encode``,
    ``decode``, ``new_cache``). ``guidance != 1`` guides by perturbing the context."""

    def __init__(self, model: nn.Module, batch_size: int, steps: int, sampler: Sampler,
                 generator: Optional[torch.Generator], cache: bool = True, guidance: float = 1.0,
                 prompt: Optional[Tensor] = None, context_noise: float = 0.0):
        super().__init__(model, batch_size, steps, sampler, generator, context_noise)
        self.guidance = guidance
        self.cache = model.new_cache() if cache else None
        self.history: list[Tensor] = []  # committed (noised) frames so far, for cache=False
        self.context = model.start_context(batch_size).to(self.dtype)  # (B, N, D)
        self.begin(prompt)

    @torch.no_grad()
    def denoise(self) -> Tensor:
        decode = self.graphed("decode", self.model.decode)  # (x, t, c) -> v: fixed shapes
        return self.sampler.sample(decode, self.prior(), self.steps, guidance=self.guidance,
                                   context=self.context, generator=self.generator)

    def write(self, frames: Tensor, t: Tensor) -> Tensor:
        """frames ``(B, F, C, H, W)`` at levels ``(B, F)`` -> the next context ``(B, N, D)``."""
        if self.cache is not None:
            return self.model.encode(frames, t, self.cache)[:, -1]
        self.history.extend(frames.unbind(1))
        video = torch.stack(self.history, dim=1)  # (B, F_all, C, H, W)
        return self.model.encode(video, self.t_commit.expand(-1, video.shape[1]))[:, -1]

    def write_one(self, frame: Tensor) -> Tensor:
        """frame ``(B, C, H, W)``, already noised -> next context ``(B, N, D)``, through the cache."""
        return self.model.encode(frame[:, None], self.t_commit, self.cache)[:, -1]

    def written(self, out: Optional[Tensor]) -> None:
        self.context = out
