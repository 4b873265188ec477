"""Generation API shared by every model: ``generate`` and ``stream`` sessions.

A session makes one frame per :meth:`StreamSession.step` (it is also an iterator).
``cache=True`` keeps per-layer frame caches, so each new frame costs the same however
long the video is; ``cache=False`` recomputes the whole history every frame (the slow
reference the cache is tested against). ``context_noise = t_c > 0`` commits every
context frame (prompt frames too) noised to level ``t_c``, ``(1 - t_c)·x + t_c·ε``, and
tells the model that level, as context-noise training does (``flow.context_noise_max``);
0 commits clean frames.

Shapes: ``B`` batch · ``F`` frames · ``C`` channels · ``H, W`` pixels.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
from torch import Tensor, nn

from scd_msc.diffusion._random import randn


def check_generation_args(model: nn.Module, batch_size: int, steps: int,
                          prompt: Optional[Tensor], num_frames: int = 1,
                          context_noise: float = 0.0) -> None:
    """ValueErrors naming the argument, the value and what was expected."""
    cfg = model.cfg
    for name, value in (("batch_size", batch_size), ("steps", steps), ("num_frames", num_frames)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if isinstance(context_noise, bool) or not isinstance(context_noise, (int, float)) \
            or not 0.0 <= context_noise < 1.0:
        raise ValueError(f"context_noise must be a number in [0, 1), got {context_noise!r}")
    if prompt is not None:
        expect = (batch_size, cfg.channels, cfg.image_size, cfg.image_size)
        if prompt.dim() != 5 or prompt.shape[0] != batch_size or tuple(prompt.shape[2:]) != expect[1:]:
            raise ValueError(f"prompt must be (B, F, C, H, W) = ({batch_size}, F, {cfg.channels}, "
                             f"{cfg.image_size}, {cfg.image_size}), got {tuple(prompt.shape)}")


class StreamSession:
    """Frame-by-frame generation state; subclasses define :meth:`_make_frame`."""

    def __init__(self, model: nn.Module, batch_size: int, steps: int,
                 generator: Optional[torch.Generator], cache: bool, guidance: float,
                 context_noise: float = 0.0):
        self.model, self.batch_size, self.steps = model, batch_size, steps
        self.generator, self.cache, self.guidance = generator, cache, guidance
        self.context_noise = float(context_noise)
        self.frames_done = 0
        self.graphs = False
        self.full_commits = 0  # commits made with every cache window full
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        cfg = model.cfg
        self.frame_shape = (batch_size, cfg.channels, cfg.image_size, cfg.image_size)
        # the level committed frames are given: (B, 1), fixed for the session (graph-safe)
        self.t_commit = torch.full((batch_size, 1), self.context_noise, device=self.device, dtype=self.dtype)

    def noise(self) -> Tensor:
        return randn(self.frame_shape, self.generator, self.device, self.dtype)  # (B, C, H, W)

    def noised(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """Context frames ``(B, F, C, H, W)`` as committed: noised to ``context_noise``,
        with their levels ``(B, F)``. At 0 returns ``frames`` itself and draws nothing."""
        t = self.t_commit.expand(-1, frames.shape[1])  # (B, F)
        if self.context_noise == 0.0:
            return frames, t
        eps = randn(frames.shape, self.generator, self.device, frames.dtype)  # (B, F, C, H, W)
        return (1 - self.context_noise) * frames + self.context_noise * eps, t

    @torch.no_grad()
    def step(self) -> Tensor:
        """The next frame ``(B, C, H, W)``: :meth:`denoise`, then :meth:`commit`."""
        frame = self.denoise()
        self.commit(frame)
        return frame

    def use_cuda_graphs(self) -> "StreamSession":
        """Replay the denoising passes, and once the caches are full the commit pass,
        from CUDA graphs (same numbers, far fewer launches). CUDA only."""
        if self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA model, this one is on {self.device}")
        self.graphs = True
        return self

    def graph_stateful(self, cache: object, current: Optional[object], fn: Callable) -> Optional[object]:
        """The graphed twin of a cache-writing step once it may be captured, else None."""
        if not self.graphs or cache is None or not cache.full():
            return None
        self.full_commits += 1
        if current is None and self.full_commits >= 2:  # one eager run at these shapes first
            from scd_msc.models.graphs import GraphedCall

            return GraphedCall(fn, warmup=0)
        return current

    def denoise(self) -> Tensor:
        """Run the S denoising steps of the next frame (the caches are only read)."""
        raise NotImplementedError

    def commit(self, frame: Tensor) -> None:
        """Append a finished frame ``(B, C, H, W)`` to the history/caches."""
        raise NotImplementedError

    def cache_bytes(self) -> int:
        """Bytes held by the frame caches (0 without a cache)."""
        return 0

    def __iter__(self) -> Iterator[Tensor]:
        while True:
            yield self.step()


class Generates:
    """Mixin: ``generate`` on top of the model's ``stream``."""

    def generate(self, batch_size: int, num_frames: int, steps: int,
                 generator: Optional[torch.Generator] = None, prompt: Optional[Tensor] = None,
                 cache: bool = True, guidance: float = 1.0,
                 callback: Optional[Callable[[int, Tensor], None]] = None,
                 context_noise: float = 0.0) -> Tensor:
        """``num_frames`` new frames ``(B, num_frames, C, H, W)`` after the optional
        ``prompt (B, F0, C, H, W)``; ``callback(i, frame)`` sees each frame as it is made."""
        check_generation_args(self, batch_size, steps, prompt, num_frames, context_noise)
        session = self.stream(batch_size, steps, prompt=prompt, generator=generator,
                              cache=cache, guidance=guidance, context_noise=context_noise)
        frames = []
        for i in range(num_frames):
            frames.append(session.step())
            if callback is not None:
                callback(i, frames[-1])
        return torch.stack(frames, dim=1)
