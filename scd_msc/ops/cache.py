"""Per-layer frame caches for streaming: rolling windows of past keys and values.

A cache keeps the last ``max_frames`` frames of keys/values (already normalised and
rotated) so that a new frame attends exactly what it would in a parallel pass over the
whole clip. ``max_frames=None`` keeps everything (unbounded low-res ``k``).
Shapes: ``B`` batch · ``F`` frames · ``Hp, Wp`` grid · ``h`` heads · ``d`` head dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor


@dataclass
class FrameKV:
    """Rolling keys/values ``(B, F, Hp, Wp, h, d)`` of at most ``max_frames`` frames."""

    max_frames: Optional[int]
    k: Optional[Tensor] = None
    v: Optional[Tensor] = None

    def extend(self, k: Tensor, v: Tensor, commit: bool = True) -> tuple[Tensor, Tensor]:
        """Cached frames followed by the new ones (what the new queries attend); with
        ``commit`` keep the tail for the next call, else leave the cache as it was."""
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=1), torch.cat([self.v, v], dim=1)
        if not commit:
            return k, v
        keep = k.shape[1] if self.max_frames is None else min(self.max_frames, k.shape[1])
        if keep == 0:
            self.k = self.v = None
        else:
            self.k, self.v = k[:, k.shape[1] - keep:], v[:, v.shape[1] - keep:]
        return k, v

    def nbytes(self) -> int:
        return 0 if self.k is None else 2 * self.k.numel() * self.k.element_size()


@dataclass
class MSCCache:
    """State of one MSC layer while streaming: hi-res keeps ``v-1`` frames at full
    resolution, low-res ``(k-1)·s`` pooled frames (all when ``k`` is None)."""

    hires: FrameKV
    lowres: FrameKV
    frames_seen: int = 0
    commit: bool = True  # False: attend the cache without writing (a denoising pass)

    def extend(self, branch: FrameKV, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return branch.extend(k, v, commit=self.commit)

    def advance(self, frames: int) -> None:
        if self.commit:
            self.frames_seen += frames

    def nbytes(self) -> int:
        return self.hires.nbytes() + self.lowres.nbytes()


@dataclass
class StackCache:
    """Caches of every layer of a stack, plus the number of frames already encoded."""

    layers: list = field(default_factory=list)
    frames_seen: int = 0

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def set_commit(self, commit: bool) -> None:
        for layer in self.layers:
            layer.commit = commit
