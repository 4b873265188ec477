"""The autoencoder of a latent model at inference: which file, checked, and fast.

A model trained on shards of ``make-shards latents --autoencoder AE.ckpt`` records that
autoencoder (path and sha256, in the :class:`~scd_msc.data.probe.ShardInfo` its
checkpoint keeps). ``generate``, ``eval``, ``play`` and the training sample strips decode
its frames through it: :func:`load_recorded` finds the file (the recorded path, or
``--autoencoder`` for a moved one) and refuses one whose sha256 differs from the record,
in one line naming both hashes. :class:`AutoencoderCodec` is the decoder those paths call
frame by frame, and the encoder of pixel prompts and of ``eval``'s true frames.

On CUDA the per-frame decode takes the fast path of the streaming sessions
(:mod:`scd_msc.streaming.fast`): compiled once per autoencoder and replayed from a CUDA
graph (:class:`~scd_msc.streaming.graphs.GraphedCall`, re-captured when the batch size
changes); on a CPU it runs eagerly. ``compile=False`` (``--eager``) opts out.

Shapes: ``B`` batch · ``F`` frames · ``c, h, w`` latents · ``C, H, W`` pixels.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

from scd_msc.checkpoint import LoadedAutoencoder, load_autoencoder
from scd_msc.data.probe import ShardInfo, short_hash
from scd_msc.inference.latents import FrameDecoder
from scd_msc.streaming.fast import CompileArg, compiled, resolve_compile
from scd_msc.streaming.graphs import GraphedCall


class AutoencoderCodec(FrameDecoder):
    """A ``scd-msc train-ae`` autoencoder on ``device``: ``__call__`` / ``clip`` decode
    (as any ``--decoder``), ``encode`` turns pixel clips into the model's latents."""

    def __init__(self, ae: LoadedAutoencoder, device: torch.device, compile: CompileArg = None):
        self.ae, self.device = ae, device
        self.model = ae.model.to(device).eval()
        backend = resolve_compile(compile, device)
        decode = self.model.decode if backend is None else compiled(self.model, "decode", backend)
        if backend is not None and device.type == "cuda":
            decode = GraphedCall(decode)
        super().__init__(f"autoencoder {ae.path}", decode)

    @property
    def latent_channels(self) -> int:
        return self.ae.config.model.latent_channels

    def pixel_shape(self, latent_size: int) -> tuple[int, int]:
        """``(C, H)`` of the frames behind ``h = latent_size`` latents."""
        cfg = self.ae.config.model
        return cfg.channels, latent_size * cfg.factor

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """Pixels ``(B, F, C, H, W)`` in [-1, 1] -> latents ``(B, F, c, h, w)`` float32 on ``video``'s
        device (all frames in one call: encoding is not on the streaming path)."""
        b = video.shape[0]
        z = self.model.encode(video.flatten(0, 1).to(self.device, torch.float32))  # (B·F, c, h, w)
        return z.unflatten(0, (b, -1)).to(video.device)  # (B, F, c, h, w)


def load_recorded(info: Optional[ShardInfo], arg: Optional[str], owner: str = "the checkpoint's",
                  fix: str = "pass --autoencoder AE.ckpt with the file the model was trained on"
                  ) -> Optional[LoadedAutoencoder]:
    """The autoencoder a model's latents decode through: ``arg`` (``--autoencoder``) or the
    path recorded by ``owner`` (the checkpoint's, the shards'), its sha256 checked against
    the record. None when neither is there. One-line ``ValueError`` naming ``--autoencoder``
    (or the recorded file) and both hashes; ``fix`` says what to do about a recorded file
    that is missing or changed."""
    recorded = info.autoencoder if info is not None and info.kind == "latents" else None
    if arg is None and recorded is None:
        return None
    want = info.autoencoder_sha256 if recorded else None
    name = f"--autoencoder={arg!r}" if arg is not None else f"{owner} autoencoder {recorded!r}"
    if arg is None and not os.path.isfile(recorded):
        raise ValueError(f"{name} (sha256 {short_hash(want)}) is not there: {fix}")
    try:
        ae = load_autoencoder(arg or recorded, map_location="cpu")
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    if want and ae.sha256 != want:
        raise ValueError(f"{name}: sha256 {short_hash(ae.sha256)} does not match {owner} {short_hash(want)}"
                         + ("" if arg is not None else f": {fix}"))
    return ae
