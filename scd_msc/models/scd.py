"""SCD: separable causal diffusion (Bai et al., "Causality in Video Diffusers is
Separable from Denoising", arXiv 2602.10095) with MSC attention (Xu & Cao, arXiv
2412.09828).

The causal encoder runs once per frame; the frame-wise decoder denoises frame ``i``
over ``S`` steps conditioned on the context ``c[i-1]`` (a learned start context for
frame 0). Per frame: ``O(Enc) + S·O(Dec)``.

Shapes: ``B`` batch · ``F`` frames · ``C`` channels · ``H, W`` pixels · ``N`` tokens per
frame · ``D`` width · ``K`` noise draws per encoder pass · ``S`` steps.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from scd_msc.diffusion import FlowMatching
from scd_msc.diffusion._random import randn
from scd_msc.models.config import ModelConfig
from scd_msc.models.decoder import FrameDecoder
from scd_msc.models.encoder import CausalEncoder
from scd_msc.models.streaming import Generates, StreamSession, check_generation_args


class SCDModel(Generates, nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.flow = FlowMatching(cfg.flow)
        self.encoder = CausalEncoder(cfg)
        self.decoder = FrameDecoder(cfg)
        self.start = nn.Parameter(torch.randn(cfg.grid * cfg.grid, cfg.dim) * 0.02)  # (N, D)

    def contexts(self, video: Tensor, t_ctx: Optional[Tensor] = None) -> Tensor:
        """The context each frame is decoded from: ``(B, F, N, D)``, frame 0 gets the
        start context, frame i the encoding of frames ``< i``."""
        b, f = video.shape[:2]
        t_ctx = torch.zeros(b, f, device=video.device) if t_ctx is None else t_ctx
        c = self.encoder(video[:, :-1], t_ctx[:, :-1]) if f > 1 else video.new_zeros(b, 0, *self.start.shape)
        return torch.cat([self.start.expand(b, 1, -1, -1).to(c.dtype), c], dim=1)

    def training_loss(self, video: Tensor, generator: Optional[torch.Generator] = None) -> dict[str, Tensor]:
        """video ``(B, F, C, H, W)`` in [-1, 1] -> ``{"loss": scalar}``: one encoder pass,
        then the decoder on all frames folded into the batch, ``K`` noise draws each."""
        x_ctx, t_ctx = self.flow.context_noise(video, generator)  # (B, F, C, H, W), (B, F)
        c = self.contexts(x_ctx, t_ctx).flatten(0, 1)  # (B·F, N, D)
        x0 = video.flatten(0, 1)  # (B·F, C, H, W)
        c, x0 = self.flow.expand_multi_batch(c), self.flow.expand_multi_batch(x0)  # (K·B·F, ...)
        t = self.flow.sample_timesteps((x0.shape[0],), generator, x0.device)  # (K·B·F,)
        eps = randn(x0.shape, generator, x0.device, x0.dtype)
        pred = self.decoder(self.flow.add_noise(x0, t, eps), t.to(x0.dtype), c)
        return {"loss": self.flow.loss(pred, self.flow.velocity_target(x0, eps))}

    def stream(self, batch_size: int, steps: int, prompt: Optional[Tensor] = None,
               generator: Optional[torch.Generator] = None, cache: bool = True,
               guidance: float = 1.0, context_noise: float = 0.0) -> "SCDSession":
        check_generation_args(self, batch_size, steps, prompt, context_noise=context_noise)
        return SCDSession(self, batch_size, steps, generator, cache, guidance, prompt, context_noise)


class SCDSession(StreamSession):
    """Per frame: the decoder runs S steps on ``(c, noise)``; the finished frame then goes
    through the encoder once (at level ``context_noise``), appending to every layer's cache."""

    def __init__(self, model: SCDModel, batch_size: int, steps: int,
                 generator: Optional[torch.Generator], cache: bool, guidance: float,
                 prompt: Optional[Tensor], context_noise: float = 0.0):
        super().__init__(model, batch_size, steps, generator, cache, guidance, context_noise)
        self.enc_cache = model.encoder.new_cache() if cache else None
        self.history: list[Tensor] = []  # committed (noised) frames so far, for cache=False
        self.context = model.start.to(self.dtype).expand(batch_size, -1, -1)  # (B, N, D)
        self.decoder_fn = model.decoder  # (x, t, c) -> v; a CUDA-graphed twin may replace it
        self.encode_graph = None
        if prompt is not None:
            self._encode(prompt.to(self.device, self.dtype))

    @torch.no_grad()
    def _encode(self, frames: Tensor) -> None:
        """frames ``(B, F, C, H, W)`` (clean) -> the context of the next frame."""
        enc = self.model.encoder
        frames, t = self.noised(frames)  # (B, F, C, H, W), (B, F)
        if self.enc_cache is not None:
            self.context = enc(frames, t, self.enc_cache)[:, -1]  # (B, N, D)
            return
        self.history.extend(frames.unbind(1))
        video = torch.stack(self.history, dim=1)  # (B, F_all, C, H, W)
        self.context = enc(video, self.t_commit.expand(-1, video.shape[1]))[:, -1]

    @torch.no_grad()
    def denoise(self) -> Tensor:
        m = self.model
        return m.flow.sample(self.decoder_fn, self.noise(), self.steps, sampler=m.cfg.sampler,
                             guidance=self.guidance, context=self.context,
                             perturb_scale=m.cfg.guidance_perturb, generator=self.generator)

    def use_cuda_graphs(self) -> "SCDSession":
        super().use_cuda_graphs()
        from scd_msc.models.graphs import GraphedCall

        self.decoder_fn = GraphedCall(self.model.decoder)
        return self

    def _encode_step(self, frame: Tensor) -> Tensor:
        """frame ``(B, C, H, W)``, already noised -> next context ``(B, N, D)``, through the cache."""
        return self.model.encoder(frame[:, None], self.t_commit, self.enc_cache)[:, -1]

    @torch.no_grad()
    def commit(self, frame: Tensor) -> None:
        """The finished frame goes through the encoder once."""
        self.encode_graph = self.graph_stateful(self.enc_cache, self.encode_graph, self._encode_step)
        if self.encode_graph is not None:
            self.context = self.encode_graph(self.noised(frame[:, None])[0][:, 0])
        else:
            self._encode(frame[:, None])
        self.frames_done += 1

    def cache_bytes(self) -> int:
        return 0 if self.enc_cache is None else self.enc_cache.nbytes()
