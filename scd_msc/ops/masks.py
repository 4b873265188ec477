"""Attention masks of the MSC op: pure ``mask_mod`` factories with a dense twin, and
the exact number of (query, key) pairs each allows (the FLOPs a mask needs).

Token layout. A clip of ``F`` frames on an ``Hp × Wp`` token grid is flattened
frame-major, row-major: token ``(f, y, x)`` sits at index ``(f * Hp + y) * Wp + x``.
Queries may cover only the *last* ``Fq`` of the ``Fkv`` key frames (streaming: the new
frame attends a cache of earlier frames); query frame ``i`` then has absolute position
``Fkv - Fq + i`` in key coordinates.

Every mask here is a product of three 1-D *window rules*, one per axis (time, y, x),
with NATTEN semantics (checked against ``natten.functional.na3d`` in the tests):

* dilation ``d`` splits an axis into ``d`` interleaved groups (``i mod d``); a query only
  sees keys of its own group; ``g = i // d`` is the position inside the group.
* causal: keys ``g' <= g`` with ``g - g' < k`` (the window ends at the query).
* non-causal: a window of ``k' = min(k, group length)`` positions centred on the query
  (left half ``k'//2``) and shifted to stay inside the group ("clamped to the grid").

Shapes: ``B`` batch · ``F`` frames · ``Hp, Wp`` token grid · ``h`` heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class WindowSpec:
    """One 3-D neighbourhood pattern over (time, y, x).

    ``kernel`` is the window size per axis (positions of the axis' dilation group),
    ``dilation`` the step per axis, ``causal`` whether each axis is causal.
    """

    kernel: tuple[int, int, int]
    dilation: tuple[int, int, int] = (1, 1, 1)
    causal: tuple[bool, bool, bool] = (True, False, False)


def hires_spec(window: int, frames: int, causal: bool) -> WindowSpec:
    """High-Res branch: ``window × window`` spatial neighbourhood, ``frames`` frames."""
    return WindowSpec(kernel=(frames, window, window), causal=(causal, False, False))


def lowres_spec(grid: tuple[int, int], stride: int, frames: int | None, num_frames: int,
                causal: bool) -> WindowSpec:
    """Low-Res branch: all of the pooled ``grid``, every ``stride``-th frame, at most
    ``frames`` strided frames (``None``: as many as ``num_frames`` allows)."""
    k_t = num_frames if frames is None else frames
    return WindowSpec(kernel=(k_t, grid[0], grid[1]), dilation=(stride, 1, 1),
                      causal=(causal, False, False))


def axis_window(i: Tensor, j: Tensor, length: int, kernel: int, dilation: int,
                causal: bool) -> Tensor:
    """1-D window rule: does query position ``i`` see key position ``j``? (broadcasts)"""
    if dilation == 1:  # one group of static length: fewer integer ops inside the kernel
        if causal:
            return (j <= i) & (i - j < kernel)
        k_eff = min(kernel, length)
        if k_eff >= length:
            return torch.ones_like(i + j, dtype=torch.bool)
        start = torch.clamp(i - k_eff // 2, 0, length - k_eff)
        return (j >= start) & (j < start + k_eff)
    same_group = (i % dilation) == (j % dilation)
    gi, gj = i // dilation, j // dilation
    if causal:
        return same_group & (gj <= gi) & (gi - gj < kernel)
    group_len = (length - i % dilation + dilation - 1) // dilation
    k_eff = torch.clamp(group_len, max=kernel)
    start = torch.minimum(torch.clamp(gi - k_eff // 2, min=0), group_len - k_eff)
    return same_group & (gj >= start) & (gj < start + k_eff)


def window_mask_mod(spec: WindowSpec, q_frames: int, kv_frames: int, hp: int, wp: int) -> MaskMod:
    """``mask_mod(b, h, q_idx, kv_idx)`` for FlexAttention over the layout above."""
    n = hp * wp
    offset = kv_frames - q_frames
    (kt, ky, kx), (dt, dy, dx), (ct, cy, cx) = spec.kernel, spec.dilation, spec.causal

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        qf, qr = q_idx // n + offset, q_idx % n
        kf, kr = kv_idx // n, kv_idx % n
        return (
            axis_window(qf, kf, kv_frames, kt, dt, ct)
            & axis_window(qr // wp, kr // wp, hp, ky, dy, cy)
            & axis_window(qr % wp, kr % wp, wp, kx, dx, cx)
        )

    return mask_mod


def dense_window_mask(spec: WindowSpec, q_frames: int, kv_frames: int, hp: int, wp: int,
                      device: torch.device | str = "cpu") -> Tensor:
    """Dense twin of :func:`window_mask_mod`: bool ``(Fq·Hp·Wp, Fkv·Hp·Wp)``."""
    mask_mod = window_mask_mod(spec, q_frames, kv_frames, hp, wp)
    q_idx = torch.arange(q_frames * hp * wp, device=device)[:, None]
    kv_idx = torch.arange(kv_frames * hp * wp, device=device)[None, :]
    zero = torch.zeros((), dtype=torch.long, device=device)
    return mask_mod(zero, zero, q_idx, kv_idx)


def covers_all(spec: WindowSpec, q_frames: int, kv_frames: int, hp: int, wp: int) -> bool:
    """True when every query sees every key (plain dense attention, no mask needed)."""
    (kt, ky, kx), (dt, dy, dx), (ct, cy, cx) = spec.kernel, spec.dilation, spec.causal
    time_ok = dt == 1 and kt >= kv_frames and (not ct or q_frames == 1)
    return time_ok and (dy, dx) == (1, 1) and not (cy or cx) and ky >= hp and kx >= wp


def dense_spec(frames: int | None, kv_frames: int, grid: tuple[int, int], causal: bool) -> WindowSpec:
    """Dense attention over whole frames: the last ``frames`` frames (causal) or a clamped
    window of ``frames`` (``None``: all frames), every position of each."""
    return WindowSpec(kernel=(frames or kv_frames, grid[0], grid[1]), causal=(causal, False, False))


def frame_causal_mask_mod(q_frames: int, kv_frames: int, n: int) -> MaskMod:
    """Dense frame-causal attention (the causal-DiT baseline): every token of frame
    ``f`` sees every token of frames ``<= f``; ``n`` tokens per frame."""
    offset = kv_frames - q_frames

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return kv_idx // n <= q_idx // n + offset

    return mask_mod


# --------------------------------------------------------------------------- exact pair counts
# How many (query, key) pairs each mask allows, without building it: the FLOPs the
# masks really need (tools/bench_attention.py). Tests compare them with the dense twins.

def _axis_pairs(q_pos: Tensor, length: int, kernel: int, dilation: int, causal: bool) -> int:
    """Allowed (query, key) pairs of one axis rule: queries at ``q_pos``, keys 0..length-1."""
    keys = torch.arange(length)[None, :]
    return int(axis_window(q_pos[:, None], keys, length, kernel, dilation, causal).sum())


def window_pairs(spec: WindowSpec, q_frames: int, kv_frames: int, hp: int, wp: int) -> int:
    """Allowed pairs of ``window_mask_mod(spec, q_frames, kv_frames, hp, wp)``, exactly.
    Token index ↔ (f, y, x) is a bijection and the mask is an AND of one rule per axis,
    each reading only its own axis, so the count is the product of the per-axis counts."""
    (kt, ky, kx), (dt, dy, dx), (ct, cy, cx) = spec.kernel, spec.dilation, spec.causal
    return (_axis_pairs(torch.arange(kv_frames - q_frames, kv_frames), kv_frames, kt, dt, ct)
            * _axis_pairs(torch.arange(hp), hp, ky, dy, cy)
            * _axis_pairs(torch.arange(wp), wp, kx, dx, cx))


def frame_causal_pairs(q_frames: int, kv_frames: int, n: int) -> int:
    """Allowed pairs of ``frame_causal_mask_mod(q_frames, kv_frames, n)``: query frame
    ``i`` sees ``kv_frames - q_frames + i + 1`` whole frames of ``n`` tokens."""
    return sum((kv_frames - q_frames + i + 1) * n * n for i in range(q_frames))
