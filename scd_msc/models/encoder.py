"""Temporal causal encoder of SCD (Bai et al., arXiv 2602.10095): runs once per frame.

Frame-causal MSC blocks (or dense ones for the SCD-dense ablation) conditioned per
frame on the context's noise level (adaLN-zero; 0 for clean frames).

Shapes: ``B`` batch · ``F`` frames · ``C`` channels · ``H, W`` pixels · ``Hp, Wp`` token
grid · ``N = Hp·Wp`` · ``D`` width.
"""

from __future__ import annotations

from typing import Optional

from einops import rearrange
from torch import Tensor, nn

from scd_msc.models.config import ModelConfig
from scd_msc.models.layers import Block, Patchify, TimestepEmbedder, run_blocks
from scd_msc.ops.cache import StackCache
from scd_msc.ops.dense import DenseAttention
from scd_msc.ops.msc import MSCAttention, MSCAttentionConfig
from scd_msc.ops.schedule import build_schedule


def attention_config(cfg: ModelConfig, causal: bool) -> MSCAttentionConfig:
    return MSCAttentionConfig(dim=cfg.dim, heads=cfg.heads, hires_heads=cfg.hires_heads,
                              gating=cfg.gating, upsample=cfg.upsample, causal=causal,
                              backend=cfg.backend)


class CausalEncoder(nn.Module):
    """``(B, F, C, H, W)`` frames + noise levels ``(B, F)`` -> context ``(B, F, N, D)``;
    ``c[:, i]`` depends on frames ``<= i`` only."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.patchify = Patchify(cfg.channels, cfg.patch, cfg.dim)
        self.t_embed = TimestepEmbedder(cfg.dim)
        attn = attention_config(cfg, causal=True)
        if cfg.family == "scd-msc":
            layers = [MSCAttention(attn, spec) for spec in build_schedule(cfg.schedule, cfg.enc_depth)]
        else:
            layers = [DenseAttention(attn, cfg.dense_window_frames) for _ in range(cfg.enc_depth)]
        self.blocks = nn.ModuleList(Block(cfg.dim, a, cfg.mlp_ratio) for a in layers)
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)

    def new_cache(self) -> StackCache:
        return StackCache(layers=[b.attn.new_cache() for b in self.blocks])

    def forward(self, x: Tensor, t: Tensor, cache: Optional[StackCache] = None) -> Tensor:
        """x ``(B, F, C, H, W)``, t ``(B, F)``; with ``cache`` the frames follow those
        already encoded (and are appended). Returns ``(B, F, N, D)``."""
        h = self.patchify(x)  # (B, F, Hp, Wp, D)
        cond = self.t_embed(t)  # (B, F, D)
        h = run_blocks(self.blocks, h, t, cond, cache)
        return rearrange(self.norm(h), "b f y x d -> b f (y x) d")
