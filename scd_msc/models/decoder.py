"""Lightweight frame-wise diffusion decoder of SCD: one frame at a time.

Each call denoises frames folded into the batch, conditioned on the encoder's context
``c`` of the previous frame. Conditioning (config ``conditioning``):

* ``token_concat`` (default) — the 2-"frame" stack ``[c ; x_t]`` goes through
  non-causal MSC blocks (hi-res window + low-res global, gated by the noise level);
* ``add`` — ``c`` is added to the noisy tokens (one frame);
* ``adaln`` — the mean of ``c`` joins the timestep embedding in adaLN.

The action that leads to the frame and the clip's label (when the model has them) join
the timestep embedding.

Context (config ``decoder_context``, ``token_concat`` only):

* ``recompute`` (default) — both "frames" of the stack see each other and share the
  noise level ``t``: every denoising step runs the decoder over ``2N`` tokens;
* ``prefix`` — the context frame is conditioned on a fixed level (0) and attends only to
  itself, the noisy frame to the context and to itself (causal over the stack). The
  context's keys and values then do not depend on ``x_t``: :meth:`FrameDecoder.prefix`
  computes them once per frame into a cache and :meth:`FrameDecoder.step` runs each of
  the ``S`` steps over the ``N`` noisy tokens only. ``forward`` is the same function
  over the whole stack (training).

Shapes: ``B'`` folded batch (``B·F`` or ``K·B·F``) · ``C`` channels · ``H, W`` pixels ·
``Hp, Wp`` grid · ``N = Hp·Wp`` · ``D`` width.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from scd_msc.models.conditions import ConditionEmbedding
from scd_msc.models.config import ModelConfig
from scd_msc.models.layers import Block, Patchify, TimestepEmbedder, Unpatchify, layer_config, run_blocks
from scd_msc.ops.dense import DenseAttention
from scd_msc.ops.msc import MSCAttention
from scd_msc.ops.schedule import MSCLayerSpec
from scd_msc.streaming.cache import StackCache, new_stack_cache


class FrameDecoder(nn.Module):
    """``(x_t (B', C, H, W), t (B',), c (B', N, D)) -> velocity (B', C, H, W)``."""

    def __init__(self, cfg: ModelConfig, backend: str = "auto"):
        super().__init__()
        self.cfg = cfg
        self.prefix_mode = cfg.decoder_context == "prefix"
        self.patchify = Patchify(cfg.channels, cfg.patch, cfg.dim)
        self.t_embed = TimestepEmbedder(cfg.dim)
        self.cond_embed = ConditionEmbedding(cfg.actions, cfg.classes, cfg.dim)
        self.ctx_proj = nn.Linear(cfg.dim, cfg.dim)
        attn = layer_config(cfg.dim, cfg.heads, cfg.attention, causal=self.prefix_mode, backend=backend)
        spec = MSCLayerSpec(down=cfg.decoder_down, window=cfg.decoder_window, frames=2,
                            stride=1, strided_frames=None)
        make = (lambda: MSCAttention(attn, spec)) if cfg.family == "scd-msc" else (lambda: DenseAttention(attn))
        self.blocks = nn.ModuleList(Block(cfg.dim, make(), cfg.mlp_ratio) for _ in range(cfg.dec_depth))
        self.final = Unpatchify(cfg.channels, cfg.patch, cfg.dim)

    def forward(self, x: Tensor, t: Tensor, c: Tensor, actions: Optional[Tensor] = None,
                labels: Optional[Tensor] = None) -> Tensor:
        """x ``(B', C, H, W)`` at levels t ``(B',)``, context c ``(B', N, D)``, the action
        ``(B',)`` that leads to each frame and its clip's label ``(B',)`` -> velocity like x."""
        g = self.cfg.grid
        tokens = self.patchify(x[:, None])  # (B', 1, Hp, Wp, D)
        ctx = self.ctx_proj(c).unflatten(1, (g, g))[:, None]  # (B', 1, Hp, Wp, D)
        cond = self.cond_embed(self.t_embed(t), actions, labels)[:, None]  # (B', 1, D)
        mode = self.cfg.conditioning
        if self.prefix_mode:  # the context frame at a fixed level, the noisy frame at t
            zero = torch.zeros_like(t)
            cond = torch.cat([self.t_embed(zero)[:, None], cond], dim=1)  # (B', 2, D)
            h, tt = torch.cat([ctx, tokens], dim=1), torch.stack([zero, t], dim=1)  # (B', 2, Hp, Wp, D), (B', 2)
        elif mode == "token_concat":
            h = torch.cat([ctx, tokens], dim=1)  # (B', 2, Hp, Wp, D)
        elif mode == "add":
            h = tokens + ctx
        else:  # adaln
            h, cond = tokens, cond + ctx.mean(dim=(2, 3))
        frames = h.shape[1]
        tt = tt if self.prefix_mode else t[:, None].expand(-1, frames)  # (B', frames)
        cond = cond.expand(-1, frames, -1)  # (B', frames, D)
        h = run_blocks(self.blocks, h, tt, cond)
        return self.final(h[:, -1:], cond[:, -1:])[:, 0]  # (B', C, H, W)

    def new_cache(self) -> StackCache:
        """The context frame's keys and values in every layer (``prefix`` mode)."""
        return new_stack_cache(self.blocks)

    def prefix(self, c: Tensor, cache: StackCache) -> None:
        """``prefix`` mode: the context ``c (B, N, D)`` through every layer at the fixed
        level, its keys and values written into ``cache`` (which starts over: in place
        once it holds a frame, so a captured graph keeps reading the same memory)."""
        g = self.cfg.grid
        ctx = self.ctx_proj(c).unflatten(1, (g, g))[:, None]  # (B, 1, Hp, Wp, D)
        zero = c.new_zeros(c.shape[0], 1)  # (B, 1)
        run_blocks(self.blocks, ctx, zero, self.t_embed(zero), cache, write="reset")

    def step(self, x: Tensor, t: Tensor, cache: StackCache, actions: Optional[Tensor] = None,
             labels: Optional[Tensor] = None) -> Tensor:
        """``prefix`` mode: one denoising step over the noisy frame only, attending to the
        context frame in ``cache`` (read-only; ``B'`` may be a multiple of its batch when
        guidance batches the null rows). Same arguments and result as :meth:`forward`."""
        tokens = self.patchify(x[:, None])  # (B', 1, Hp, Wp, D)
        cond = self.cond_embed(self.t_embed(t), actions, labels)[:, None]  # (B', 1, D)
        h = run_blocks(self.blocks, tokens, t[:, None], cond, cache, write=False)
        return self.final(h, cond)[:, 0]  # (B', C, H, W)
