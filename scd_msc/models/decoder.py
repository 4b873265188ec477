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
from scd_msc.ops.embed import RotaryTables
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
        # the stack's frames always sit at 0 (context) and 1 (noisy frame): tables kept in memory
        self.rotary = RotaryTables(2, (cfg.grid, cfg.grid), cfg.dim // cfg.heads, (1, cfg.decoder_down))
        self.final = Unpatchify(cfg.channels, cfg.patch, cfg.dim)

    def forward(self, x: Tensor, t: Tensor, c: Tensor, actions: Optional[Tensor] = None,
                labels: Optional[Tensor] = None, modulation: Optional[Tensor] = None,
                levels: Optional[Tensor] = None) -> Tensor:
        """x ``(B', C, H, W)`` at levels t ``(B',)``, context c ``(B', N, D)``, the action
        ``(B',)`` that leads to each frame and its clip's label ``(B',)`` -> velocity like x.
        ``modulation (B', M)``: :meth:`modulation` of the same t, actions and labels, made
        beforehand (``recompute`` only; not for ``conditioning='adaln'``); with ``levels
        (S,)`` it is the table ``(S, B', M)`` of those levels, and each row takes the
        entry of its t (:func:`table_rows`)."""
        g, mode = self.cfg.grid, self.cfg.conditioning
        if modulation is not None and (self.prefix_mode or mode == "adaln"):
            raise ValueError("modulation: made beforehand only for decoder_context='recompute' and conditioning "
                             f"other than 'adaln' (this decoder: {self.cfg.decoder_context!r}, {mode!r}); "
                             "expected None")
        tokens = self.patchify(x[:, None])  # (B', 1, Hp, Wp, D)
        ctx = self.ctx_proj(c).unflatten(1, (g, g))[:, None]  # (B', 1, Hp, Wp, D)
        cond = None if modulation is not None else self.cond_embed(self.t_embed(t), actions, labels)[:, None]
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
        positions = self.rotary.positions(0, frames)
        if modulation is not None:  # both frames of the stack share t: the same rows for each
            blocks, final = self._unpack(table_rows(modulation, levels, t), frames)
            h = run_blocks(self.blocks, h, None, None, positions=positions, modulation=blocks)
            return self.final(h[:, -1:], None, final)[:, 0]  # (B', C, H, W)
        tt = tt if self.prefix_mode else t[:, None].expand(-1, frames)  # (B', frames)
        cond = cond.expand(-1, frames, -1)  # (B', frames, D)
        h = run_blocks(self.blocks, h, tt, cond, positions=positions)
        return self.final(h[:, -1:], cond[:, -1:])[:, 0]  # (B', C, H, W)

    def modulation(self, t: Tensor, actions: Optional[Tensor] = None, labels: Optional[Tensor] = None) -> Tensor:
        """All that a denoising step takes of its levels ``t (B',)`` and conditions, and no
        token: every block's :meth:`Block.modulation` and the final layer's adaLN,
        concatenated, ``(B', M)``. A session makes those of all ``S`` levels of a frame in
        one pass (its small matrix products over ``S·B'`` rows, where every step would run
        them over ``B'``) and passes each step its rows (``modulation=`` of
        :meth:`forward` and :meth:`step`). Not for ``conditioning='adaln'``, whose adaLN
        reads the context too."""
        if self.cfg.conditioning == "adaln":
            raise ValueError("modulation: conditioning='adaln' adds the context to the adaLN input, "
                             "so it cannot be made without the context; expected 'token_concat' or 'add'")
        cond = self.cond_embed(self.t_embed(t), actions, labels)[:, None]  # (B', 1, D)
        parts = [block.modulation(cond, t[:, None]) for block in self.blocks] + [self.final.ada(cond)]
        return torch.cat(parts, dim=-1)[:, 0]  # (B', M)

    def _unpack(self, modulation: Tensor, frames: int) -> tuple[list[Tensor], Tensor]:
        """:meth:`modulation`'s ``(B', M)`` -> each block's ``(B', frames, M_i)`` and the
        final layer's ``(B', 1, 2D)``."""
        sizes = [block.modulation_size for block in self.blocks] + [2 * self.cfg.dim]
        if modulation.shape[-1] != sum(sizes):
            raise ValueError(f"modulation: {modulation.shape[-1]} columns, expected {sum(sizes)} "
                             "(FrameDecoder.modulation)")
        *blocks, final = modulation[:, None].split(sizes, dim=-1)
        return [m.expand(-1, frames, -1) for m in blocks], final

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
        run_blocks(self.blocks, ctx, zero, self.t_embed(zero), cache, write="reset",
                   positions=self.rotary.positions(0, 1))

    def step(self, x: Tensor, t: Tensor, cache: StackCache, actions: Optional[Tensor] = None,
             labels: Optional[Tensor] = None, modulation: Optional[Tensor] = None,
             levels: Optional[Tensor] = None) -> Tensor:
        """``prefix`` mode: one denoising step over the noisy frame only, attending to the
        context frame in ``cache`` (read-only; ``B'`` may be a multiple of its batch when
        guidance batches the null rows). Same arguments and result as :meth:`forward`."""
        tokens = self.patchify(x[:, None])  # (B', 1, Hp, Wp, D)
        positions = self.rotary.positions(1, 1)
        if modulation is not None:
            blocks, final = self._unpack(table_rows(modulation, levels, t), 1)
            h = run_blocks(self.blocks, tokens, None, None, cache, write=False, positions=positions,
                           modulation=blocks)
            return self.final(h, None, final)[:, 0]  # (B', C, H, W)
        cond = self.cond_embed(self.t_embed(t), actions, labels)[:, None]  # (B', 1, D)
        h = run_blocks(self.blocks, tokens, t[:, None], cond, cache, write=False, positions=positions)
        return self.final(h, cond)[:, 0]  # (B', C, H, W)


def table_rows(modulation: Tensor, levels: Optional[Tensor], t: Tensor) -> Tensor:
    """Without ``levels``, ``modulation (B', M)`` itself; with ``levels (S,)``, the row of
    the table ``modulation (S, B', M)`` at the level nearest each ``t (B',)`` (a
    session's table holds exactly the levels its sampler steps through)."""
    if levels is None:
        return modulation
    index = (levels[:, None] - t[None, :].to(levels.dtype)).abs().argmin(dim=0)  # (B',)
    return modulation[index, torch.arange(t.shape[0], device=t.device)]  # (B', M)
