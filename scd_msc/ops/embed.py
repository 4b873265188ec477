"""Position and noise-level embeddings shared by the MSC layer and the models.

* :func:`timestep_embedding` — sinusoidal features of a noise level ``t ∈ [0, 1]``
  (DiT, Peebles & Xie 2023).
* :func:`rope3d` — axial rotary embedding (Su et al. 2021) over (frame, y, x): half of
  the head dim rotates with the frame index, a quarter each with y and x. Attention
  scores then depend on *offsets* only, so a model streams past its training length.
  :class:`Rotary` carries one call's positions (and tables, when fixed) to every layer;
  :class:`RotaryTables` keeps the tables of fixed positions in memory.

Shapes: ``B`` batch · ``F`` frames · ``Hp, Wp`` grid · ``h`` heads · ``d`` head dim.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


def rope_tables(frames: Tensor, ys: Tensor, xs: Tensor, head_dim: int,
                base: float = 10_000.0) -> tuple[Tensor, Tensor]:
    """cos, sin ``(F, Hp, Wp, 1, d/2)`` float32 of the rotation angles at positions
    ``frames (F,)``, ``ys (Hp,)``, ``xs (Wp,)`` (float positions allowed: pooled cells sit
    at their centres): the first ``d/4`` angles follow the frame, the next ``d/8`` y,
    the last ``d/8`` x."""
    ct, cy, cx = rope_split(head_dim)
    f, hp, wp = frames.shape[0], ys.shape[0], xs.shape[0]
    ang = torch.cat([
        _angles(frames, ct, base)[:, None, None, :].expand(f, hp, wp, ct // 2),
        _angles(ys, cy, base)[None, :, None, :].expand(f, hp, wp, cy // 2),
        _angles(xs, cx, base)[None, None, :, :].expand(f, hp, wp, cx // 2),
    ], dim=-1)[:, :, :, None, :]  # (F, Hp, Wp, 1, d/2)
    return torch.cos(ang), torch.sin(ang)


def rope3d(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x ``(B, F, Hp, Wp, h, d)`` by the angles of :func:`rope_tables`: channels
    ``i`` and ``i + d/2`` rotate together by angle ``i`` (rotate-half pairs, computed in
    float32). Contiguous halves make the fused RMSNorm + rotation kernel read x once
    in order: on an H200 it took 4.4 µs for a base-preset query frame where pairs
    ``(2i, 2i+1)`` took 8.4 (given the same tables) and 16.3 when written back
    interleaved (``benchmarks/rope_layout_h200_2026-12-03.md``). Checkpoints of the
    ``(2i, 2i+1)`` pairing load converted (:func:`scd_msc.ops.msc.upgrade_qkv`)."""
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, F, Hp, Wp, h, d/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def deinterleave_pairs(head_dim: int) -> Tensor:
    """The channel order ``[0, 2, 4, ..., 1, 3, 5, ...]`` of a head: a q/k projection
    whose pairs ``(2i, 2i+1)`` rotated together, its rows taken in this order, gives
    the same scores under :func:`rope3d`'s ``(i, i + d/2)`` pairs."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


class Rotary:
    """Where the frames of one call sit: absolute frame indices ``frames (F,)`` and, when
    the positions never change, their rotation tables ``given`` precomputed, by (head
    dim, pooling, grid) (:class:`RotaryTables` keeps them in memory); other tables are
    made by each layer that asks. Read-only: a layer's compiled or checkpointed forward
    sees the same object every time."""

    def __init__(self, frames: Tensor, given: Optional[dict[tuple, tuple[Tensor, Tensor]]] = None):
        self.frames = frames
        self.given = dict(given or {})

    @staticmethod
    def of(positions: Union[Tensor, "Rotary"]) -> "Rotary":
        """``positions`` as a :class:`Rotary` (a frame-index tensor ``(F,)`` is wrapped)."""
        return positions if isinstance(positions, Rotary) else Rotary(positions)

    def tables(self, head_dim: int, r: int, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """cos, sin ``(F, ⌈Hp/r⌉, ⌈Wp/r⌉, 1, d/2)`` for tokens pooled ``r × r`` from the
        grid ``(Hp, Wp)``, pooled cells at the centres of the tokens they cover."""
        key = (head_dim, r, grid)
        if key in self.given:
            return self.given[key]
        return rope_tables(self.frames, *grid_positions(grid, r, self.frames.device), head_dim)


def grid_positions(grid: tuple[int, int], r: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Row and column positions ``(⌈Hp/r⌉,)``, ``(⌈Wp/r⌉,)`` of the cells of ``r × r``
    pooling over ``grid``: each at the mean of the tokens it covers."""
    out = []
    for n in grid:
        pos = torch.arange(n, device=device, dtype=torch.float32)
        out.append(pos if r == 1 else F.avg_pool1d(pos[None, None], r, ceil_mode=True)[0, 0])
    return out[0], out[1]


class RotaryTables(nn.Module):
    """The rotation tables of a stack whose positions never change (the decoder's
    ``[c ; x_t]`` at frames ``0..F-1`` on one grid), kept in memory: compiled code then
    reads them instead of computing cos/sin in every kernel that rotates. Buffers, not
    saved; float32 whatever the model's dtype (rebuilt, not cast, when it moves)."""

    def __init__(self, frames: int, grid: tuple[int, int], head_dim: int, downs: tuple[int, ...]):
        super().__init__()
        self.frames, self.grid, self.head_dim, self.downs = frames, grid, head_dim, tuple(sorted(set(downs)))
        self._build(torch.device("cpu"))

    def _build(self, device: torch.device) -> None:
        frames = torch.arange(self.frames, device=device)
        for r in self.downs:
            cos, sin = rope_tables(frames, *grid_positions(self.grid, r, device), self.head_dim)
            self.register_buffer(f"cos_{r}", cos, persistent=False)
            self.register_buffer(f"sin_{r}", sin, persistent=False)

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module's signature
        super()._apply(fn, recurse)
        device = getattr(self, f"cos_{self.downs[0]}").device
        if device.type != "meta":
            self._build(device)  # a dtype cast would round the tables: make them again
        return self

    def positions(self, start: int, count: int) -> Rotary:
        """The frames ``start .. start+count-1``, their tables slices of the buffers."""
        if start < 0 or start + count > self.frames:
            raise ValueError(f"frames {start}..{start + count - 1}: the tables hold frames 0..{self.frames - 1}")
        device = getattr(self, f"cos_{self.downs[0]}").device
        given = {(self.head_dim, r, self.grid): (getattr(self, f"cos_{r}")[start:start + count],
                                                  getattr(self, f"sin_{r}")[start:start + count])
                 for r in self.downs}
        return Rotary(torch.arange(start, start + count, device=device), given)
