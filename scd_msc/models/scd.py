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

from scd_msc.diffusion import Sampler
from scd_msc.models.config import ModelConfig
from scd_msc.models.decoder import FrameDecoder
from scd_msc.models.encoder import CausalEncoder
from scd_msc.streaming.fast import CompileArg
from scd_msc.streaming import Generates, SCDSession, StackCache


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

    def encode(self, frames: Tensor, t: Tensor, cache: Optional[StackCache] = None,
               actions: Optional[Tensor] = None, labels: Optional[Tensor] = None) -> Tensor:
        """frames ``(B, F, C, H, W)`` at noise levels ``(B, F)``, the actions ``(B, F)``
        that led to them, labels ``(B,)`` -> ``(B, F, N, D)``; with ``cache`` they follow
        (and are appended to) the frames already encoded."""
        return self.encoder(frames, t, cache, actions, labels)

    def decode(self, x: Tensor, t: Tensor, c: Tensor, actions: Optional[Tensor] = None,
               labels: Optional[Tensor] = None, modulation: Optional[Tensor] = None,
               levels: Optional[Tensor] = None) -> Tensor:
        """Velocity of noisy frames ``x (B', C, H, W)`` at levels ``t (B',)`` given their
        contexts ``c (B', N, D)``, the actions ``(B',)`` that lead to them and labels
        ``(B',)`` (frames folded into ``B'``); ``modulation``: :meth:`decoder_modulation`
        of the same made beforehand, or with ``levels (S,)`` its table over those levels
        (:meth:`FrameDecoder.forward`)."""
        return self.decoder(x, t, c, actions, labels, modulation, levels)

    def decoder_modulation(self, t: Tensor, actions: Optional[Tensor] = None,
                           labels: Optional[Tensor] = None) -> Tensor:
        """What a decoder step takes of its levels ``t (B',)``, actions and labels, no
        token: ``(B', M)`` (:meth:`FrameDecoder.modulation`)."""
        return self.decoder.modulation(t, actions, labels)

    def new_decoder_cache(self) -> StackCache:
        """``decoder_context='prefix'``: the context frame's keys/values in the decoder."""
        return self.decoder.new_cache()

    def decoder_prefix(self, c: Tensor, cache: StackCache) -> None:
        """``decoder_context='prefix'``: write the keys/values of context ``c (B, N, D)``
        into ``cache``, once per frame."""
        self.decoder.prefix(c, cache)

    def decode_step(self, x: Tensor, t: Tensor, cache: StackCache, actions: Optional[Tensor] = None,
                    labels: Optional[Tensor] = None, modulation: Optional[Tensor] = None,
                    levels: Optional[Tensor] = None) -> Tensor:
        """``decoder_context='prefix'``: :meth:`decode` with the context's keys/values from
        ``cache`` (over the noisy frame's tokens only)."""
        return self.decoder.step(x, t, cache, actions, labels, modulation, levels)

    def contexts(self, video: Tensor, t_ctx: Optional[Tensor] = None, actions: Optional[Tensor] = None,
                 labels: Optional[Tensor] = None) -> Tensor:
        """The context each frame is decoded from: ``(B, F, N, D)``, frame 0 gets the
        start context, frame i the encoding of frames (and actions) ``< i``."""
        b, f = video.shape[:2]
        t_ctx = torch.zeros(b, f, device=video.device) if t_ctx is None else t_ctx
        past = None if actions is None else actions[:, :-1]  # (B, F-1)
        c = (self.encoder(video[:, :-1], t_ctx[:, :-1], actions=past, labels=labels) if f > 1
             else video.new_zeros(b, 0, *self.start.shape))
        return torch.cat([self.start_context(b)[:, None].to(c.dtype), c], dim=1)

    def open_session(self, batch_size: int, steps: int, sampler: Sampler, generator: Optional[torch.Generator],
                     cache: bool, guidance: float, prompt: Optional[Tensor], context_noise: float,
                     prompt_actions: Optional[Tensor], labels: Optional[Tensor], cond_guidance: float,
                     compile: CompileArg) -> SCDSession:
        """The session behind :meth:`stream` (arguments checked there; see :class:`SCDSession`)."""
        if guidance != 1.0 and self.cfg.decoder_context == "prefix":
            raise ValueError(f"guidance={guidance}: guidance by perturbing the context needs "
                             "decoder_context='recompute' (a prefix model keeps one context per frame); "
                             "expected 1.0 (cond_guidance works)")
        return SCDSession(self, batch_size, steps, sampler, generator, cache, guidance,
                          prompt, context_noise, prompt_actions, labels, cond_guidance, compile)
