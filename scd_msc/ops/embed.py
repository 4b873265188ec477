"""Position and noise-level embeddings shared by the MSC layer and the models.

* :func:`timestep_embedding` — sinusoidal features of a noise level ``t ∈ [0, 1]``
  (DiT, Peebles & Xie 2023).
* :func:`rope3d` — axial rotary embedding (Su et al. 2021) over (frame, y, x): half of
  the head dim rotates with the frame index, a quarter each with y and x. Attention
  scores then depend on *offsets* only, so a model streams past its training length.

Shapes: ``B`` batch · ``F`` frames · ``Hp, Wp`` grid · ``h`` heads · ``d`` head dim.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scd_msc.checks import error


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """t ``(...)`` in [0, 1] -> ``(..., dim)`` sinusoidal features of ``1000·t``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = 1000.0 * t.float()[..., None] * freqs  # (..., dim/2)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Channels of the head dim given to (frame, y, x); each part is even."""
    if head_dim % 8:
        raise error("head_dim", head_dim, "a multiple of 8", "3-D RoPE splits it into (frame, y, x) parts")
    return head_dim // 2, head_dim // 4, head_dim // 4


def _angles(pos: Tensor, channels: int, base: float) -> Tensor:
    inv_freq = base ** (-torch.arange(0, channels, 2, device=pos.device).float() / channels)
    return pos.float()[..., None] * inv_freq  # (..., channels/2)


def rope3d(x: Tensor, frames: Tensor, ys: Tensor, xs: Tensor, base: float = 10_000.0) -> Tensor:
    """Rotate x ``(B, F, Hp, Wp, h, d)`` by positions ``frames (F,)``, ``ys (Hp,)``,
    ``xs (Wp,)`` (float positions allowed: pooled cells sit at their centres).

    Channels ``(2i, 2i+1)`` rotate together; the result holds the pairs' first members
    in its first half and their second members in its second: a fixed permutation of
    the head's channels, which every dot product ``q·k`` (all that attention reads of
    them) ignores when q and k both have it. Writing the pairs back interleaved made
    the fused RMSNorm + rotation kernel 1.9× slower on an H200 (16.3 against 8.4 µs
    for one base-preset query frame given the same cos/sin, one run of
    ``tools/probe_prefix_step.py``: ``benchmarks/rope_layout_h200_2026-12-03.md``)."""
    ct, cy, cx = rope_split(x.shape[-1])
    f, hp, wp = frames.shape[0], ys.shape[0], xs.shape[0]
    ang = torch.cat([
        _angles(frames, ct, base)[:, None, None, :].expand(f, hp, wp, ct // 2),
        _angles(ys, cy, base)[None, :, None, :].expand(f, hp, wp, cy // 2),
        _angles(xs, cx, base)[None, None, :, :].expand(f, hp, wp, cx // 2),
    ], dim=-1)[:, :, :, None, :]  # (F, Hp, Wp, 1, d/2)
    cos, sin = torch.cos(ang), torch.sin(ang)
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # (B, F, Hp, Wp, h, d/2) each: pairs (2i, 2i+1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)
