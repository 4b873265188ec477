"""Temporal causal encoder of SCD (Bai et al., arXiv 2602.10095): runs once per frame.

Frame-causal MSC blocks (or dense ones for the SCD-dense ablation) conditioned per
frame on the context's noise level (adaLN-zero; 0 for clean frames), plus the action
that led to the frame and the clip's label when the model has them.

Shapes: ``B`` batch · ``F`` frames · ``C`` channels · ``H, W`` pixels · ``Hp, Wp`` token
grid · ``N = Hp·Wp`` · ``D`` width.
"""

from __future__ import annotations

from typing import Optional

from einops import rearrange
from torch import Tensor, nn

from scd_msc.models.conditions import ConditionEmbedding
from scd_msc.models.config import ModelConfig
from scd_msc.models.layers import Block, Patchify, TimestepEmbedder, layer_config, run_blocks
from scd_msc.ops.dense import DenseAttention
from scd_msc.ops.msc import MSCAttention
from scd_msc.ops.schedule import build_schedule
from scd_msc.streaming.cache import StackCache, new_stack_cache


class CausalEncoder(nn.Module):
    """``(B, F, C, H, W)`` frames + noise levels ``(B, F)`` -> context ``(B, F, N, D)``;
    ``c[:, i]`` depends on frames ``<= i`` only."""

    def __init__(self, cfg: ModelConfig, backend: str = "auto"):
        super().__init__()
        self.patchify = Patchify(cfg.channels, cfg.patch, cfg.dim)
        self.t_embed = TimestepEmbedder(cfg.dim)
        self.cond_embed = ConditionEmbedding(cfg.actions, cfg.classes, cfg.dim)
        attn = layer_config(cfg.dim, cfg.heads, cfg.attention, causal=True, backend=backend)
        if cfg.family == "scd-msc":
            layers = [MSCAttention(attn, spec) for spec in build_schedule(cfg.schedule, cfg.enc_depth)]
        else:
            layers = [DenseAttention(attn, cfg.dense_window_frames) for _ in range(cfg.enc_depth)]
        self.blocks = nn.ModuleList(Block(cfg.dim, a, cfg.mlp_ratio) for a in layers)
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)

    def new_cache(self) -> StackCache:
        """Empty streaming state of every layer."""
        return new_stack_cache(self.blocks)

    def forward(self, x: Tensor, t: Tensor, cache: Optional[StackCache] = None,
                actions: Optional[Tensor] = None, labels: Optional[Tensor] = None) -> Tensor:
        """x ``(B, F, C, H, W)``, t ``(B, F)``, actions ``(B, F)`` (the one that led to each
        frame), labels ``(B,)``; with ``cache`` the frames follow those already encoded
        and are appended to it (encoding always commits). Returns ``(B, F, N, D)``."""
        h = self.patchify(x)  # (B, F, Hp, Wp, D)
        cond = self.cond_embed(self.t_embed(t), actions, labels)  # (B, F, D)
        h = run_blocks(self.blocks, h, t, cond, cache, write=cache is not None)
        return rearrange(self.norm(h), "b f y x d -> b f (y x) d")
