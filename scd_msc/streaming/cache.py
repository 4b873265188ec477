"""Frame caches for streaming: rolling windows of past keys and values, one per layer.

A window keeps the last ``max_frames`` frames of keys/values (already normalised and
rotated), so a new frame attends exactly what it would in a parallel pass over the
whole clip; ``max_frames=None`` keeps everything (an unbounded low-res ``k``). Each
attention call is told explicitly whether it ``write``s: a denoising pass reads the
cache and leaves it as it was, a commit pass appends its frames.

* :class:`MSCCache` — one MSC layer: hi-res ``v-1`` frames, low-res ``(k-1)·s`` pooled frames;
* :class:`DenseCache` — one dense layer: the last ``window_frames - 1`` frames (or all);
* :class:`StackCache` — every layer of a stack, plus the absolute index of the next frame
  as a device scalar (advanced in place, so a captured CUDA graph advances it too).

Once a window is full it is written in place: its buffers never move, which is what
CUDA-graph replay (:mod:`scd_msc.streaming.graphs`) relies on.

Shapes: ``B`` batch · ``F`` frames · ``Hp, Wp`` grid · ``h`` heads · ``d`` head dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import Tensor, nn

from scd_msc.ops.dense import DenseAttention
from scd_msc.ops.msc import MSCAttention


@dataclass
class FrameKV:
    """Rolling keys/values ``(B, F, Hp, Wp, h, d)`` of at most ``max_frames`` frames."""

    max_frames: Optional[int]
    k: Optional[Tensor] = None
    v: Optional[Tensor] = None

    def extend(self, k: Tensor, v: Tensor, write: Union[bool, str]) -> tuple[Tensor, Tensor]:
        """Cached frames followed by the new ones (what the new queries attend); with
        ``write`` the tail is kept for the next call, else the cache stays as it was;
        ``write="reset"``: the new frames alone are attended and kept (the cache starts
        over, in place when the shapes allow). A read may come with a multiple of the
        cached batch (guidance stacks the conditioned and the null rows): each group of
        rows then sees the cached frames."""
        if self.k is not None and write != "reset":
            ck, cv = self.k, self.v
            if k.shape[0] != ck.shape[0] and not write:  # (r·B, ...) queries over a (B, ...) cache
                ck, cv = (c.repeat(k.shape[0] // c.shape[0], *([1] * (c.dim() - 1))) for c in (ck, cv))
            k, v = torch.cat([ck, k], dim=1), torch.cat([cv, v], dim=1)
        if not write:
            return k, v
        keep = k.shape[1] if self.max_frames is None else min(self.max_frames, k.shape[1])
        tail_k, tail_v = k[:, k.shape[1] - keep:], v[:, v.shape[1] - keep:]
        if keep == 0:
            self.k = self.v = None
        elif self.k is not None and self.k.shape == tail_k.shape:
            self.k.copy_(tail_k)  # full: write in place, so the buffers never move
            self.v.copy_(tail_v)
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
    """One MSC layer: hi-res keeps ``v-1`` frames at full resolution, low-res ``(k-1)·s``
    pooled frames (all when ``k`` is None)."""

    hires: FrameKV
    lowres: FrameKV

    def full(self) -> bool:
        return self.hires.full() and self.lowres.full()

    def nbytes(self) -> int:
        return self.hires.nbytes() + self.lowres.nbytes()


@dataclass
class DenseCache:
    """One dense layer: the keys/values of the last ``window_frames - 1`` frames (all when None)."""

    kv: FrameKV

    def full(self) -> bool:
        return self.kv.full()

    def nbytes(self) -> int:
        return self.kv.nbytes()


LayerCache = Union[MSCCache, DenseCache]


@dataclass
class StackCache:
    """Caches of every layer of a stack, plus the absolute index of the next frame as a
    device scalar (advanced in place by the writing pass)."""

    layers: list[LayerCache] = field(default_factory=list)
    position: Optional[Tensor] = None  # () long: frames already written

    def positions(self, count: int, device: torch.device) -> Tensor:
        """Absolute frame indices ``(count,)`` of the next ``count`` frames."""
        if self.position is None:
            self.position = torch.zeros((), dtype=torch.long, device=device)
        return self.position + torch.arange(count, device=device)

    def advance(self, count: int) -> None:
        """``count`` frames were written to every layer."""
        self.position.add_(count)

    def restart(self, device: torch.device) -> None:
        """The next frames are written from position 0 (in place, graph-safe)."""
        if self.position is None:
            self.position = torch.zeros((), dtype=torch.long, device=device)
        else:
            self.position.zero_()

    @property
    def frames_seen(self) -> int:
        return 0 if self.position is None else int(self.position)

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def full(self) -> bool:
        """Every layer's window is full: shapes and buffers stay fixed from now on."""
        return all(layer.full() for layer in self.layers)


def new_layer_cache(layer: nn.Module) -> LayerCache:
    """Empty streaming state of one causal attention layer (MSC or dense)."""
    if isinstance(layer, MSCAttention):
        s = layer.spec
        lo = None if s.strided_frames is None else (s.strided_frames - 1) * s.stride
        return MSCCache(hires=FrameKV(s.frames - 1), lowres=FrameKV(lo))
    if isinstance(layer, DenseAttention):
        w = layer.window_frames
        return DenseCache(FrameKV(None if w is None else w - 1))
    raise TypeError(f"no cache for {type(layer).__name__}: expected MSCAttention or DenseAttention")


def new_stack_cache(blocks: nn.ModuleList) -> StackCache:
    """Empty caches for every block's ``attn`` layer."""
    return StackCache(layers=[new_layer_cache(block.attn) for block in blocks])
