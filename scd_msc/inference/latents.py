"""Latent models at inference: ``--decoder module:function`` turns their frames into pixels.

A model trained on latent shards (``scd-msc make-shards latents --encoder ...``) makes
latent frames; its checkpoint records that, and the encoder's name
(:func:`scd_msc.checkpoint.load_shard_info`). The decoder is the encoder's twin: a
callable that takes latents ``(N, c, h, w)`` float32, on the device the model runs on,
and returns pixels ``(N, C, H, W)`` in [-1, 1] (``C`` = 1 or 3; a tensor on any device
or an array). Frames are decoded one at a time as they stream.

* ``generate`` refuses to write video from a latent model without ``--decoder``.
* ``eval`` refuses too, since PSNR/SSIM need pixels in [-1, 1]; with ``--decoder`` it
  decodes the generated and the true latents and scores them in pixel space.
* ``--decoder`` with a checkpoint trained on pixels is refused; with ``--preset`` or a
  checkpoint older than the record it is taken as given.

Shapes: ``B`` batch · ``F`` frames · ``c, h, w`` latent channels and size ·
``C, H, W`` pixels.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from scd_msc.checkpoint import load_shard_info
from scd_msc.data.sources import load_callable
from scd_msc.models import ModelConfig
from scd_msc.streaming import StreamingSession


class FrameDecoder:
    """The ``--decoder`` callable with its output checked: latents ``(B, c, h, w)`` ->
    float32 pixels ``(B, C, H, W)`` clamped to [-1, 1], on the latents' device."""

    def __init__(self, spec: str, fn: Callable[[Tensor], Any]):
        self.spec, self.fn = spec, fn

    @classmethod
    def load(cls, spec: str) -> "FrameDecoder":
        return cls(spec, load_callable(spec, "--decoder"))

    @torch.no_grad()
    def __call__(self, latents: Tensor) -> Tensor:
        out = self.fn(latents.float())
        pixels = out if isinstance(out, Tensor) else torch.from_numpy(np.asarray(out, dtype=np.float32))
        if pixels.dim() != 4 or pixels.shape[0] != latents.shape[0] or pixels.shape[1] not in (1, 3):
            raise ValueError(f"--decoder={self.spec!r}: returned shape {tuple(pixels.shape)} for latents "
                             f"{tuple(latents.shape)}; expected (N={latents.shape[0]}, C in {{1, 3}}, H, W)")
        return pixels.to(latents.device, torch.float32).clamp(-1, 1)

    def clip(self, video: Tensor) -> Tensor:
        """``(B, F, c, h, w)`` -> ``(B, F, C, H, W)``, one frame at a time."""
        return torch.stack([self(video[:, f]) for f in range(video.shape[1])], dim=1)


class DecodedSession:
    """A stream session whose ``step()`` returns decoded pixels ``(B, C, H, W)``; every
    other attribute (``cache_bytes``, ...) is the wrapped session's."""

    def __init__(self, session: StreamingSession, decoder: FrameDecoder):
        self.session, self.decoder = session, decoder

    def step(self, action: Optional[Tensor] = None) -> Tensor:
        return self.decoder(self.session.step() if action is None else self.session.step(action))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def resolve_decoder(spec: Optional[str], checkpoint: Optional[str]) -> Optional[FrameDecoder]:
    """Load ``--decoder`` and check it against what the checkpoint was trained on, before
    the model is built. Raises a ``ValueError`` naming ``--decoder``."""
    try:
        info = load_shard_info(checkpoint) if checkpoint and os.path.isfile(checkpoint) else None
    except ValueError as err:
        raise ValueError(f"--checkpoint: {err}") from None
    if info is not None and info.kind == "latents" and spec is None:
        made = f"made with make-shards latents --encoder {info.encoder}" if info.encoder else "encoder not recorded"
        shape = f"{info.channels}×{info.height}×{info.width}"
        raise ValueError(f"--decoder: missing; the checkpoint's model makes {shape} latents ({made}): "
                         "pass --decoder module:function that maps them to pixels")
    if info is not None and info.kind == "pixels" and spec is not None:
        raise ValueError(f"--decoder={spec!r}: the checkpoint's model makes {info.describe()}, not latents; "
                         "drop --decoder")
    return None if spec is None else FrameDecoder.load(spec)


def check_frames(cfg: ModelConfig, decoder: Optional[FrameDecoder], device: torch.device) -> None:
    """Without a decoder the model's frames must be pixels (1 or 3 channels); with one, a
    dry run on one zero latent frame checks what the decoder returns."""
    if decoder is None:
        if cfg.channels not in (1, 3):
            raise ValueError(f"--decoder: missing; the model makes {cfg.channels}-channel frames (latents), "
                             "which no video holds: pass --decoder module:function that maps them to pixels")
        return
    decoder(torch.zeros(1, cfg.channels, cfg.image_size, cfg.image_size, device=device))
