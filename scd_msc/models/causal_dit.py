"""Causal DiT baseline: ``enc_depth + dec_depth`` dense frame-causal blocks.

Trained diffusion-forcing style (an independent noise level per frame; Chen et al.
2024; :func:`scd_msc.diffusion.diffusion_forcing_loss`). Inference keeps a KV cache of
*clean* past frames (:class:`scd_msc.streaming.DiTSession`): each new frame runs ``S``
full-depth passes that attend to the cache without writing it, then one pass at
``t = 0`` writes its clean keys/values (with ``context_noise = t_c > 0``: the frame
noised to ``t_c``, in one pass at ``t_c``). ``dense_window_frames`` bounds the frames
attended (and cached); None attends all.

Shapes: ``B`` batch · ``F`` frames · ``C`` channels · ``H, W`` pixels · ``D`` width.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from scd_msc.diffusion import Sampler
from scd_msc.models.conditions import ConditionEmbedding
from scd_msc.models.config import ModelConfig
from scd_msc.models.layers import Block, Patchify, TimestepEmbedder, Unpatchify, layer_config, run_blocks
from scd_msc.ops.dense import DenseAttention
from scd_msc.streaming.fast import CompileArg
from scd_msc.streaming import DiTSession, Generates, StackCache, new_stack_cache


class CausalDiT(Generates, nn.Module):
    objective = "diffusion_forcing"  # scd_msc.diffusion.OBJECTIVES

    def __init__(self, cfg: ModelConfig, backend: str = "auto"):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.patchify = Patchify(cfg.channels, cfg.patch, cfg.dim)
        self.t_embed = TimestepEmbedder(cfg.dim)
        self.cond_embed = ConditionEmbedding(cfg.actions, cfg.classes, cfg.dim)
        attn = layer_config(cfg.dim, cfg.heads, cfg.attention, causal=True, backend=backend)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, DenseAttention(attn, cfg.dense_window_frames), cfg.mlp_ratio)
            for _ in range(cfg.enc_depth + cfg.dec_depth))
        self.final = Unpatchify(cfg.channels, cfg.patch, cfg.dim)

    def new_cache(self) -> StackCache:
        """Empty KV cache of every block."""
        return new_stack_cache(self.blocks)

    def forward(self, x: Tensor, t: Tensor, cache: Optional[StackCache] = None,
                write: bool = False, actions: Optional[Tensor] = None,
                labels: Optional[Tensor] = None) -> Tensor:
        """x ``(B, F, C, H, W)`` noisy frames at levels t ``(B, F)``, the actions ``(B, F)``
        that lead to them, labels ``(B,)`` -> velocity, like x. With ``cache`` the frames
        follow the cached ones; ``write`` appends their keys and values (a commit pass),
        otherwise the cache is only read (a denoising pass, which may run a multiple of
        the cache's batch: guidance batches the conditioned and null rows)."""
        h = self.patchify(x)  # (B, F, Hp, Wp, D)
        cond = self.cond_embed(self.t_embed(t), actions, labels)  # (B, F, D)
        h = run_blocks(self.blocks, h, t, cond, cache, write)
        return self.final(h, cond)

    def open_session(self, batch_size: int, steps: int, sampler: Sampler, generator: Optional[torch.Generator],
                     cache: bool, guidance: float, prompt: Optional[Tensor], context_noise: float,
                     prompt_actions: Optional[Tensor], labels: Optional[Tensor], cond_guidance: float,
                     compile: CompileArg) -> DiTSession:
        """The session behind :meth:`stream` (arguments checked there)."""
        if guidance != 1.0:
            raise ValueError(f"guidance={guidance} needs a context to perturb; CausalDiT has none "
                             "(use guidance=1.0)")
        return DiTSession(self, batch_size, steps, sampler, generator, cache, prompt,
                          context_noise, prompt_actions, labels, cond_guidance, compile)
