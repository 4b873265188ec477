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
        tail_k, tail_v = k[:, k.shape[1] - keep:], v[:, v.shape[1] - keep:]
        if keep == 0:
            self.k = self.v = None
        elif self.k is not None and self.k.shape == tail_k.shape:
            self.k.copy_(tail_k)  # full: write in place, so the buffers never move
            self.v.copy_(tail_v)  # (a captured CUDA graph keeps reading the right memory)
        else:
            self.k, self.v = tail_k.clone(), tail_v.clone()
        return k, v

    def full(self) -> bool:
        """True once the window holds ``max_frames`` frames (never when unbounded)."""
        if self.max_frames is None:
            return False
        return self.max_frames == 0 or (self.k is not None and self.k.shape[1] == self.max_frames)

    def nbytes(self) -> int:
        return 0 if self.k is None else 2 * self.k.numel() * self.k.element_size()


@dataclass
class MSCCache:
    """State of one MSC layer while streaming: hi-res keeps ``v-1`` frames at full
    resolution, low-res ``(k-1)·s`` pooled frames (all when ``k`` is None)."""

    hires: FrameKV
    lowres: FrameKV
    commit: bool = True  # False: attend the cache without writing (a denoising pass)

    def extend(self, branch: FrameKV, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return branch.extend(k, v, commit=self.commit)

    def full(self) -> bool:
        return self.hires.full() and self.lowres.full()

    def nbytes(self) -> int:
        return self.hires.nbytes() + self.lowres.nbytes()


@dataclass
class StackCache:
    """Caches of every layer of a stack, plus the absolute index of the next frame as a
    device scalar (advanced in place, so a captured CUDA graph advances it too)."""

    layers: list = field(default_factory=list)
    position: Optional[Tensor] = None  # () long: frames already written
    commit: bool = True

    def positions(self, count: int, device: torch.device) -> Tensor:
        """Absolute frame indices ``(count,)`` of the next ``count`` frames."""
        if self.position is None:
            self.position = torch.zeros((), dtype=torch.long, device=device)
        return self.position + torch.arange(count, device=device)

    def advance(self, count: int) -> None:
        if self.commit:
            self.position.add_(count)

    @property
    def frames_seen(self) -> int:
        return 0 if self.position is None else int(self.position)

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def full(self) -> bool:
        """Every layer's window is full: shapes and buffers stay fixed from now on."""
        return all(layer.full() for layer in self.layers)

    def set_commit(self, commit: bool) -> None:
        self.commit = commit
        for layer in self.layers:
            layer.commit = commit
