"""Streaming sessions: one frame per :meth:`Session.step`, with frame-level caching.

A session owns everything that evolves over a stream (STYLE.md §12): the caches, the
committed history, the frame counter and the CUDA graphs. The model it drives is a set
of pure calls (encode with a cache, decode one frame, one velocity pass that reads or
writes a cache); the :class:`~scd_msc.diffusion.Sampler` it is handed makes every
random draw and integrates the ODE. Per frame: :meth:`Session.denoise` runs the ``S``
denoising steps (caches are only read), then :meth:`Session.commit` appends the
finished frame (caches are written).

``cache=True`` keeps per-layer frame caches, so each new frame costs the same however
long the video is; ``cache=False`` recomputes the whole history every frame (the slow
reference the cache is tested against). ``context_noise = t_c > 0`` commits every
context frame (prompt frames too) noised to level ``t_c`` and tells the model that
level, as context-noise training does (``flow.context_noise_max``).

CUDA graphs (:meth:`Session.use_cuda_graphs`): the denoising call is captured as soon as
its shapes are fixed; the commit call, which writes the caches, once every cache window
is full (its buffers are then written in place and never move) and after one eager
commit at those shapes.

Shapes: ``B`` batch · ``F`` frames · ``C`` channels · ``H, W`` pixels.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from scd_msc.checks import number, positive_int
from scd_msc.diffusion import Sampler
from scd_msc.streaming.cache import StackCache
from scd_msc.streaming.graphs import GraphedCall


@runtime_checkable
class StreamingSession(Protocol):
    """What the CLI, evaluation and benchmarks use of a session."""

    batch_size: int
    steps: int
    frames_done: int

    def step(self) -> Tensor: ...

    def denoise(self) -> Tensor: ...

    def commit(self, frame: Tensor) -> None: ...

    def cache_bytes(self) -> int: ...

    def use_cuda_graphs(self) -> "StreamingSession": ...


def check_generation_args(model: nn.Module, batch_size: int, steps: int,
                          prompt: Optional[Tensor], num_frames: int = 1,
                          context_noise: float = 0.0) -> None:
    """ValueErrors naming the argument, the value and what was expected."""
    cfg = model.cfg
    for name, value in (("batch_size", batch_size), ("steps", steps), ("num_frames", num_frames)):
        positive_int(name, value)
    number("context_noise", context_noise, low=0, high=1, high_open=True)
    if prompt is not None:
        expect = (batch_size, cfg.channels, cfg.image_size, cfg.image_size)
        if prompt.dim() != 5 or prompt.shape[0] != batch_size or tuple(prompt.shape[2:]) != expect[1:]:
            raise ValueError(f"prompt must be (B, F, C, H, W) = ({batch_size}, F, {cfg.channels}, "
                             f"{cfg.image_size}, {cfg.image_size}), got {tuple(prompt.shape)}")


class Session:
    """The frame loop shared by every model family. Subclasses supply the model's part:

    * :meth:`denoise` — the sampler over the model's velocity call (read-only);
    * :meth:`write` — append committed frames ``(B, F, C, H, W)`` at levels ``(B, F)``
      (eager; with or without a cache), returning what the session keeps (or None);
    * :meth:`write_one` — the same for one frame ``(B, C, H, W)`` through full caches, as
      a function of tensors only (what a CUDA graph captures);
    * :meth:`written` — take what the write returned;
    * :attr:`cache` — the :class:`StackCache` written by commits (None without caching).
    """

    cache: Optional[StackCache] = None

    def __init__(self, model: nn.Module, batch_size: int, steps: int, sampler: Sampler,
                 generator: Optional[torch.Generator], context_noise: float = 0.0):
        self.model, self.batch_size, self.steps = model, batch_size, steps
        self.sampler, self.generator = sampler, generator
        self.context_noise = float(context_noise)
        self.frames_done = 0
        self.graphs = False
        self._graphed: dict[str, GraphedCall] = {}
        self._full_commits = 0  # commits made with every cache window full
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        cfg = model.cfg
        self.frame_shape = (batch_size, cfg.channels, cfg.image_size, cfg.image_size)
        # the level committed frames are given: (B, 1), fixed for the session (graph-safe)
        self.t_commit = torch.full((batch_size, 1), self.context_noise, device=self.device, dtype=self.dtype)

    # ------------------------------------------------------------------ the model's part

    def denoise(self) -> Tensor:
        """Run the S denoising steps of the next frame (the caches are only read)."""
        raise NotImplementedError

    def write(self, frames: Tensor, t: Tensor) -> Optional[Tensor]:
        raise NotImplementedError

    def write_one(self, frame: Tensor) -> Tensor:
        raise NotImplementedError

    def written(self, out: Optional[Tensor]) -> None:
        """Keep what a write returned (SCD: the next frame's context)."""

    # ------------------------------------------------------------------ the frame loop

    def prior(self) -> Tensor:
        """The noise the next frame starts from, ``(B, C, H, W)``."""
        return self.sampler.prior(self.frame_shape, self.generator, self.device, self.dtype)

    def noised(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """Context frames ``(B, F, C, H, W)`` as committed: noised to ``context_noise``,
        with their levels ``(B, F)``. At 0 returns ``frames`` itself and draws nothing."""
        t = self.t_commit.expand(-1, frames.shape[1])  # (B, F)
        return self.sampler.noise_to(frames, self.context_noise, self.generator), t

    @torch.no_grad()
    def begin(self, prompt: Optional[Tensor]) -> None:
        """Commit the prompt frames ``(B, F0, C, H, W)`` (clean; noised here), if any."""
        if prompt is not None:
            frames, t = self.noised(prompt.to(self.device, self.dtype))
            self.written(self.write(frames, t))

    @torch.no_grad()
    def commit(self, frame: Tensor) -> None:
        """Append a finished frame ``(B, C, H, W)``: noised to ``context_noise``, then
        written once through the model (replayed from a CUDA graph when it may be)."""
        frames, t = self.noised(frame[:, None])  # (B, 1, C, H, W), (B, 1)
        graph = self._write_graph()
        self.written(graph(frames[:, 0]) if graph is not None else self.write(frames, t))
        self.frames_done += 1

    @torch.no_grad()
    def step(self) -> Tensor:
        """The next frame ``(B, C, H, W)``: :meth:`denoise`, then :meth:`commit`."""
        frame = self.denoise()
        self.commit(frame)
        return frame

    def __iter__(self) -> Iterator[Tensor]:
        while True:
            yield self.step()

    def cache_bytes(self) -> int:
        """Bytes held by the frame caches (0 without a cache)."""
        return 0 if self.cache is None else self.cache.nbytes()

    # ------------------------------------------------------------------ CUDA graphs

    def use_cuda_graphs(self) -> "Session":
        """Replay the denoising call, and once the caches are full the commit call, from
        CUDA graphs (same numbers, far fewer launches). CUDA only."""
        if self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA model, this one is on {self.device}")
        self.graphs = True
        return self

    def graphed(self, name: str, fn: Callable[..., Tensor], ready: bool = True) -> Callable[..., Tensor]:
        """``fn`` (a read-only call of tensors) replayed from a CUDA graph when graphs are
        on and ``ready`` (its shapes and the memory it reads are fixed), else ``fn``."""
        if not (self.graphs and ready):
            return fn
        if name not in self._graphed:
            self._graphed[name] = GraphedCall(fn)
        return self._graphed[name]

    def _write_graph(self) -> Optional[GraphedCall]:
        """The graphed :meth:`write_one` once every cache window is full and one eager
        commit ran at those shapes (capture records without executing); else None."""
        if not self.graphs or self.cache is None or not self.cache.full():
            return None
        self._full_commits += 1
        if "write" not in self._graphed and self._full_commits >= 2:
            self._graphed["write"] = GraphedCall(self.write_one, warmup=0)
        return self._graphed.get("write")


class Generates:
    """Mixin: ``generate`` on top of the model's ``stream``."""

    def generate(self, batch_size: int, num_frames: int, steps: int,
                 generator: Optional[torch.Generator] = None, prompt: Optional[Tensor] = None,
                 cache: bool = True, guidance: float = 1.0,
                 callback: Optional[Callable[[int, Tensor], None]] = None,
                 context_noise: float = 0.0, sampler: Optional[Sampler] = None) -> Tensor:
        """``num_frames`` new frames ``(B, num_frames, C, H, W)`` after the optional
        ``prompt (B, F0, C, H, W)``; ``callback(i, frame)`` sees each frame as it is made."""
        check_generation_args(self, batch_size, steps, prompt, num_frames, context_noise)
        session = self.stream(batch_size, steps, prompt=prompt, generator=generator, cache=cache,
                              guidance=guidance, context_noise=context_noise, sampler=sampler)
        frames = []
        for i in range(num_frames):
            frames.append(session.step())
            if callback is not None:
                callback(i, frames[-1])
        return torch.stack(frames, dim=1)
