"""The session a page drives: reset, step, the recording. No web stack here.

:class:`Game` holds a model conditioned on actions and one streaming session of batch
1. :meth:`Game.reset` opens a fresh session from the next held-out prompt clip (they are
taken in turn) or from a blank start, with the noise generator re-seeded by ``seed``: the
same reset and the same keys give the same frames. :meth:`Game.step` makes the next
frame with one action id. Every frame shown (prompt frames too) goes to the optional
``--record`` mp4, across resets, until :meth:`Game.close`.

All model work runs on the one thread that calls these methods (the server keeps a
single worker thread for it: CUDA graphs and grad mode are per thread).

Shapes: ``K`` prompt clips · ``F0`` prompt frames · ``C`` channels · ``H, W`` pixels.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from scd_msc.diffusion import Sampler
from scd_msc.inference import conditions
from scd_msc.media import Mp4Writer, save_png, to_uint8
from scd_msc.play.keys import Bindings

STARTS = ("clip", "blank")


@dataclass
class Frame:
    """One frame sent to the page: ``image`` uint8 ``(H, W, C)``; ``index`` counts the
    frames since the reset (prompt frames first); ``ms``: the model's time for it (0 for
    a prompt frame); ``action``: the id that led to it (None for a prompt frame)."""

    image: np.ndarray
    index: int
    ms: float = 0.0
    action: Optional[int] = None
    prompt: bool = False

    def png(self) -> bytes:
        """The image as PNG bytes (grey frames as 8-bit grey)."""
        buf = io.BytesIO()
        save_png(self.image, buf)
        return buf.getvalue()

    def meta(self) -> dict[str, Any]:
        return {"type": "frame", "index": self.index, "ms": self.ms, "action": self.action, "prompt": self.prompt}


@dataclass
class Prompts:
    """Held-out clips to re-prompt from: ``video (K, F0, C, H, W)`` on the model's device
    and dtype, the ``actions (K, F0)`` that led to their frames (None without)."""

    video: Tensor
    actions: Optional[Tensor] = None

    def __len__(self) -> int:
        return self.video.shape[0]


class Game:
    """A model conditioned on ``model.cfg.actions`` actions, stepped one frame at a time.

    ``decode``: latents -> pixels for a latent model (``--decoder``), None for pixels;
    ``labels (1,)`` for a class-conditioned model; ``compile``: the sessions' fast path
    (None: compiled + CUDA graphs on CUDA, eager on CPU)."""

    def __init__(self, model: nn.Module, bindings: Bindings, steps: int, seed: int = 0,
                 prompts: Optional[Prompts] = None, sampler: Optional[Sampler] = None,
                 labels: Optional[Tensor] = None, record: Optional[str] = None, fps: float = 8.0,
                 decode: Optional[Callable[[Tensor], Tensor]] = None, compile: Optional[bool] = None,
                 context_noise: float = 0.0, cond_guidance: float = 1.0):
        self.model, self.bindings, self.steps, self.seed = model, bindings, steps, seed
        self.prompts, self.sampler, self.labels, self.decode = prompts, sampler, labels, decode
        self.compile, self.context_noise, self.cond_guidance = compile, context_noise, cond_guidance
        self.num_actions = model.cfg.actions
        self.device = next(model.parameters()).device
        self.recorder = None if record is None else Mp4Writer(record, fps)
        self.session: Any = None
        self.resets = 0  # prompt clip i is used by reset i (mod K)
        self.index = 0

    def info(self) -> dict[str, Any]:
        """What the page shows: the actions and their keys, the frame size, the starts."""
        cfg = self.model.cfg
        return {"type": "info", "actions": self.bindings.as_dict(), "null": self.num_actions,
                "steps": self.steps, "family": cfg.family, "starts": list(self.starts()),
                "prompt_clips": 0 if self.prompts is None else len(self.prompts)}

    def starts(self) -> tuple[str, ...]:
        return STARTS if self.prompts is not None else ("blank",)

    def _image(self, frame: Tensor) -> np.ndarray:
        """A model frame ``(1, C, H, W)`` (latents when ``decode``) -> uint8 ``(H, W, C)``."""
        return to_uint8(frame if self.decode is None else self.decode(frame))

    def _show(self, frame: Frame) -> Frame:
        if self.recorder is not None:
            self.recorder.write(frame.image)
        self.index += 1
        return frame

    @torch.no_grad()  # as generate: the sessions and their CUDA graphs run under no_grad, not inference mode
    def reset(self, start: str = "clip") -> list[Frame]:
        """A fresh session from the next prompt clip (``clip``) or nothing (``blank``);
        returns the prompt frames. ValueError for a start this game cannot make."""
        if start not in self.starts():
            why = "no --prompt-shards given" if start == "clip" else "expected one of " + ", ".join(self.starts())
            raise ValueError(f"start={start!r}: {why}")
        generator = torch.Generator(self.device).manual_seed(self.seed)
        prompt = prompt_actions = None
        if start == "clip":
            assert self.prompts is not None
            k = self.resets % len(self.prompts)
            prompt = self.prompts.video[k:k + 1]  # (1, F0, C, H, W)
            prompt_actions = None if self.prompts.actions is None else self.prompts.actions[k:k + 1]
            self.resets += 1
        kwargs = conditions.stream_kwargs(prompt_actions, self.labels, self.cond_guidance)
        self.session = self.model.stream(1, self.steps, prompt=prompt, generator=generator,
                                         sampler=self.sampler,
                                         context_noise=self.context_noise, compile=self.compile, **kwargs)
        self.index = 0
        if prompt is None:
            return []
        return [self._show(Frame(self._image(prompt[:, f]), self.index, prompt=True)) for f in range(prompt.shape[1])]

    def check_action(self, action: Any) -> int:
        """``action`` as an id in ``[0, N]`` (``N``: the null id), or a ValueError."""
        if isinstance(action, bool) or not isinstance(action, int) or not 0 <= action <= self.num_actions:
            raise ValueError(f"action={action!r}: expected an id in [0, {self.num_actions}] "
                             f"({self.num_actions} = null, no action)")
        return action

    @torch.no_grad()  # as generate: the sessions and their CUDA graphs run under no_grad, not inference mode
    def step(self, action: int) -> Frame:
        """The next frame, made with ``action``; a blank session is opened first if none is."""
        action = self.check_action(action)
        if self.session is None:
            self.reset("blank")
        start = time.perf_counter()
        ids = torch.tensor([action], dtype=torch.long, device=self.device)  # (1,)
        image = self._image(self.session.step(ids))  # .cpu() inside waits for the device
        ms = (time.perf_counter() - start) * 1e3
        return self._show(Frame(image, self.index, ms, action))

    def close(self) -> Optional[str]:
        """Finish the recording; returns its path when it holds frames."""
        if self.recorder is None or not self.recorder.frames:
            return None
        self.recorder.close()
        return str(self.recorder.path)
