"""Latent models at inference: their frames go through a decoder to become pixels.

A model trained on latent shards (``scd-msc make-shards latents``) makes latent frames;
its checkpoint records that, and what made them (:func:`scd_msc.checkpoint.load_shard_info`):

* shards of ``--autoencoder AE.ckpt`` (a ``scd-msc train-ae`` checkpoint): the model
  decodes through that autoencoder, found at the recorded path or at ``--autoencoder``
  (a moved copy), its sha256 checked (:mod:`scd_msc.inference.codec`). Pixel shards
  (``--prompt-shards``, ``eval --shards``) are encoded through it, and ``eval`` then
  scores against the true frames and reports the autoencoder's own ceiling;
* shards of an outside ``--encoder module:function``: ``--decoder module:function`` is
  its twin, a callable that takes latents ``(N, c, h, w)`` float32, on the device the
  model runs on, and returns pixels ``(N, C, H, W)`` in [-1, 1] (``C`` = 1 or 3; a tensor
  on any device or an array). Prompts and ``eval`` shards must then be latents.

Frames are decoded one at a time as they stream.

* ``generate`` refuses to write video from a latent model without its decoder.
* ``eval`` refuses too, since PSNR/SSIM need pixels in [-1, 1]; with latent shards it
  decodes the generated and the true latents and scores them in pixel space.
* ``--decoder`` / ``--autoencoder`` with a checkpoint trained on pixels are refused, and
  ``--decoder`` with one trained on an autoencoder's latents; with ``--preset`` or a
  checkpoint older than the record they are taken as given.

Shapes: ``B`` batch · ``F`` frames · ``c, h, w`` latent channels and size ·
``C, H, W`` pixels.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from scd_msc.checkpoint import load_shard_info
from scd_msc.data.probe import probe_shards
from scd_msc.data.sources import load_callable
from scd_msc.inference import inputs
from scd_msc.inference.inputs import resolve_device
from scd_msc.models import ModelConfig
from scd_msc.streaming import StreamingSession
from scd_msc.streaming.fast import CompileArg


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


def resolve_decoder(spec: Optional[str], checkpoint: Optional[str], autoencoder: Optional[str] = None,
                    device: torch.device = torch.device("cpu"), compile: CompileArg = None) -> Optional[FrameDecoder]:
    """The decoder of the model's frames, checked against what the checkpoint was trained
    on, before the model is built: the autoencoder it recorded (``autoencoder``:
    ``--autoencoder``, a moved copy, hash checked; :mod:`scd_msc.inference.codec`), an
    outside ``spec`` (``--decoder``), or None for pixels. ``ValueError`` naming the argument."""
    from scd_msc.inference.codec import AutoencoderCodec, load_recorded

    try:
        info = load_shard_info(checkpoint) if checkpoint and os.path.isfile(checkpoint) else None
    except ValueError as err:
        raise ValueError(f"--checkpoint: {err}") from None
    if spec is not None and autoencoder is not None:
        raise ValueError("--decoder/--autoencoder: expected at most one of them, got both")
    if info is not None and info.kind == "pixels" and (spec or autoencoder):
        flag = f"--decoder={spec!r}" if spec else f"--autoencoder={autoencoder!r}"
        raise ValueError(f"{flag}: the checkpoint's model makes {info.describe()}, not latents; "
                         f"drop {flag.split('=')[0]}")
    if info is not None and info.autoencoder and spec is not None:
        raise ValueError(f"--decoder={spec!r}: the checkpoint's model makes {info.describe()} and decodes "
                         "through it; drop --decoder (--autoencoder AE.ckpt points at a moved copy)")
    ae = load_recorded(info, autoencoder)
    if ae is not None:
        return AutoencoderCodec(ae, device, compile)
    if info is not None and info.kind == "latents" and spec is None:
        made = f"made with make-shards latents --encoder {info.encoder}" if info.encoder else "encoder not recorded"
        shape = f"{info.channels}×{info.height}×{info.width}"
        raise ValueError(f"--decoder: missing; the checkpoint's model makes {shape} latents ({made}): "
                         "pass --decoder module:function that maps them to pixels")
    return None if spec is None else FrameDecoder.load(spec)


def decoder_from_args(args: Any) -> Optional[FrameDecoder]:
    """:func:`resolve_decoder` of a command's ``--decoder``, ``--checkpoint``,
    ``--autoencoder``, ``--device`` and ``--eager``."""
    return resolve_decoder(args.decoder, args.checkpoint, args.autoencoder, resolve_device(args.device),
                           False if args.eager else None)


def check_frames(cfg: ModelConfig, decoder: Optional[FrameDecoder], device: torch.device) -> None:
    """Without a decoder the model's frames must be pixels (1 or 3 channels); an
    autoencoder must make latents of the model's channels; an outside decoder gets a dry
    run on one zero latent frame, which checks what it returns."""
    from scd_msc.inference.codec import AutoencoderCodec

    if decoder is None:
        if cfg.channels not in (1, 3):
            raise ValueError(f"--decoder: missing; the model makes {cfg.channels}-channel frames (latents), "
                             "which no video holds: pass --decoder module:function that maps them to pixels "
                             "(or --autoencoder AE.ckpt)")
        return
    if isinstance(decoder, AutoencoderCodec):
        if decoder.latent_channels != cfg.channels:
            raise ValueError(f"--autoencoder={decoder.ae.path!r}: makes {decoder.latent_channels}-channel latents; "
                             f"the model's frames have {cfg.channels} channels")
        return
    decoder(torch.zeros(1, cfg.channels, cfg.image_size, cfg.image_size, device=device))


def pixel_view(shards: str, cfg: ModelConfig, decoder: Optional[FrameDecoder], arg: str) -> Optional[ModelConfig]:
    """For a latent model whose ``shards`` hold pixels: the frame shape to read them with
    (the autoencoder's channels and size), to encode them; None when they are read as
    they are. A ``ValueError`` naming ``arg`` when pixels cannot be encoded (an outside
    ``--decoder`` has no encoder)."""
    from scd_msc.inference.codec import AutoencoderCodec

    if decoder is None:
        return None
    try:
        info = probe_shards(shards)
    except ValueError:
        return None  # reading them says what is wrong
    if info.kind != "pixels":
        return None
    if not isinstance(decoder, AutoencoderCodec):
        raise ValueError(f"{arg}={shards!r}: holds {info.describe()}; a model with an outside --decoder needs "
                         "latent shards (an autoencoder, --autoencoder, can encode pixels)")
    channels, size = decoder.pixel_shape(cfg.image_size)
    return dataclasses.replace(cfg, channels=channels, image_size=size)


def encoded(clips: dict, decoder: FrameDecoder) -> dict:
    """A batch of pixel clips with ``video`` encoded to latents and the true frames kept
    as ``pixels (B, F, C, H, W)``."""
    return {**clips, "video": decoder.encode(clips["video"]), "pixels": clips["video"]}  # type: ignore[attr-defined]


def read_clips(shards: str, arg: str, frames: int, count: int, cfg: ModelConfig, decoder: Optional[FrameDecoder],
               exact: bool = True) -> dict:
    """:func:`scd_msc.inference.inputs.read_clips` for the model's frames; pixel shards of a
    model that decodes through an autoencoder are read at the pixel shape and encoded
    (:func:`encoded`)."""
    view = pixel_view(shards, cfg, decoder, arg)
    clips = inputs.read_clips(shards, arg, frames, count, view or cfg, exact)
    return clips if view is None else encoded(clips, decoder)


def clip_batches(shards: str, frames: int, cfg: ModelConfig, batch: int, decoder: Optional[FrameDecoder],
                 arg: str = "--shards") -> Iterator[dict]:
    """:func:`scd_msc.inference.inputs.clip_batches`, pixel shards encoded as in :func:`read_clips`."""
    view = pixel_view(shards, cfg, decoder, arg)
    batches = inputs.clip_batches(shards, frames, view or cfg, batch)
    return batches if view is None else (encoded(b, decoder) for b in batches)
