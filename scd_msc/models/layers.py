"""Building blocks shared by the SCD encoder/decoder and the causal DiT.

Shapes: ``B`` batch · ``F`` frames · ``C`` channels · ``H, W`` pixels · ``Hp, Wp``
token grid · ``N = Hp·Wp`` · ``D`` width · ``p`` patch size.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from scd_msc.ops.embed import Rotary, timestep_embedding
from scd_msc.ops.msc import AttentionConfig, MSCAttentionConfig
from scd_msc.streaming.cache import StackCache


class Patchify(nn.Module):
    """``(B, F, C, H, W) -> (B, F, Hp, Wp, D)`` with non-overlapping ``p × p`` patches."""

    def __init__(self, channels: int, patch: int, dim: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(channels * patch * patch, dim)

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch
        return self.proj(rearrange(x, "b f c (y p) (x q) -> b f y x (p q c)", p=p, q=p))


class Unpatchify(nn.Module):
    """adaLN final layer (DiT): ``(B, F, Hp, Wp, D)``, cond ``(B, F, D)`` ->
    ``(B, F, C, H, W)``; zero-initialised so a fresh model predicts 0."""

    def __init__(self, channels: int, patch: int, dim: int):
        super().__init__()
        self.patch, self.channels = patch, channels
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.proj = nn.Linear(dim, channels * patch * patch)
        for m in (self.ada[-1], self.proj):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, cond: Tensor, modulation: Optional[Tensor] = None) -> Tensor:
        """``modulation (B, F, 2D)``, when given, is ``self.ada(cond)`` made beforehand."""
        ada = self.ada(cond) if modulation is None else modulation
        shift, scale = ada[:, :, None, None].chunk(2, dim=-1)  # (B, F, 1, 1, D)
        x = self.proj(self.norm(x) * (1 + scale) + shift)  # (B, F, Hp, Wp, p·p·C)
        p = self.patch
        return rearrange(x, "b f y x (p q c) -> b f c (y p) (x q)", p=p, q=p, c=self.channels)


class TimestepEmbedder(nn.Module):
    """t ``(...)`` in [0, 1] -> ``(..., D)``: sinusoidal features through an MLP."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class Mlp(nn.Sequential):
    def __init__(self, dim: int, ratio: float = 4.0):
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class Block(nn.Module):
    """Pre-norm transformer block with adaLN-zero (DiT) conditioning per frame.

    ``attn`` is an MSCAttention or DenseAttention; ``cond (B, F, D)`` modulates both
    sub-layers, and the zero-initialised gates make a fresh block the identity.
    """

    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: float = 4.0):
        super().__init__()
        self.dim, self.attn = dim, attn
        self.gated = hasattr(attn, "gates")  # an MSC layer: per-frame branch gates join the modulation
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[-1].weight)
        nn.init.zeros_(self.ada[-1].bias)
        self.checkpointing = False  # training: recompute activations in the backward pass

    @property
    def modulation_size(self) -> int:
        """Columns of :meth:`modulation`: six of the width, plus one gate per head."""
        return 6 * self.dim + (self.attn.heads if self.gated else 0)

    def modulation(self, cond: Tensor, t: Tensor) -> Tensor:
        """Everything the block takes of the conditions ``cond (B, F, D)`` and levels
        ``t (B, F)``: its adaLN shifts, scales and gates and, for an MSC layer, its branch
        gates, ``(B, F, M)``. No token enters it, so a sampler's steps can have theirs
        made at once (:meth:`FrameDecoder.modulation`)."""
        parts = [self.ada(cond)]
        if self.gated:
            parts.append(self.attn.gates(t))
        return torch.cat(parts, dim=-1)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, positions: Rotary,
                cache: Optional[object] = None, write: bool = False,
                modulation: Optional[Tensor] = None) -> Tensor:
        """x ``(B, F, Hp, Wp, D)``, t ``(B, F)``, cond ``(B, F, D)`` -> like x; the frames'
        ``positions``, ``cache`` and ``write`` go to the attention layer. ``modulation``
        (:meth:`modulation`, made beforehand) replaces t and cond."""
        if modulation is None:
            modulation = self.modulation(cond, t)
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, modulation, positions, cache, write, use_reentrant=False)
        return self._forward(x, modulation, positions, cache, write)

    def _forward(self, x: Tensor, modulation: Tensor, positions: Rotary,
                 cache: Optional[object], write: bool) -> Tensor:
        d = x.shape[-1]
        mods = modulation[:, :, None, None, :6 * d].chunk(6, dim=-1)  # 6 × (B, F, 1, 1, D)
        shift1, scale1, gate1, shift2, scale2, gate2 = mods
        gates = {"gates": modulation[..., 6 * d:]} if self.gated else {}  # (B, F, h)
        h = self.norm1(x) * (1 + scale1) + shift1
        x = x + gate1 * self.attn(h, None, positions, cache=cache, write=write, **gates)
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.mlp(h)


def layer_config(dim: int, heads: int, attention: AttentionConfig, causal: bool,
                 backend: str) -> MSCAttentionConfig:
    """The config of one attention layer from the model's shared ``attention`` settings."""
    return MSCAttentionConfig(dim=dim, heads=heads, causal=causal, backend=backend,
                              **dataclasses.asdict(attention))


def run_blocks(blocks: nn.ModuleList, h: Tensor, t: Tensor, cond: Tensor,
               cache: Optional[StackCache] = None, write: Union[bool, str] = False,
               positions: Optional[Rotary] = None, modulation: Optional[list[Tensor]] = None) -> Tensor:
    """Apply ``blocks`` to the frames ``h (B, F, Hp, Wp, D)``. Without a cache the frames
    sit at positions ``0..F-1``; with one they follow the frames already written and each
    block reads its own layer cache; ``write`` appends the frames to every layer and
    advances the cache's position; ``write="reset"`` starts the cache over with them.
    ``positions`` overrides where the frames sit (with their rotation tables, made once
    for the stack, :class:`RotaryTables`); by default each layer makes its own.
    ``modulation``: each block's :meth:`Block.modulation`, made beforehand (t and cond
    are then not read)."""
    f = h.shape[1]
    if cache is not None and write == "reset":
        cache.restart(h.device)
    if positions is None:
        positions = Rotary(torch.arange(f, device=h.device) if cache is None else cache.positions(f, h.device))
    for i, block in enumerate(blocks):
        h = block(h, t, cond, positions, None if cache is None else cache.layers[i], write,
                  None if modulation is None else modulation[i])
    if cache is not None and write:
        cache.advance(f)
    return h
