"""Typed configuration of the data pipeline (``OmegaConf.structured(DataConfig)``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class DataConfig:
    """Where the shards are and what a training batch looks like.

    ``train_shards`` / ``val_shards``: brace patterns (``shards/shard-{000000..000099}.tar``),
    globs (``shards/*.tar``) or ``::``-joined lists of those. ``channels`` / ``image_size``
    describe pixel frames, or latents (C, h == w) for ``latent.npy`` shards. Samples of
    another shape or shorter than ``clip_frames`` are skipped and counted.
    ``epoch_batches``: training batches per epoch *per rank* (the stream is endless).
    ``val_batches``: validation batches per rank (the val pass is cut, or repeated, to
    exactly this many so that every rank runs the same number; None = one full pass).
    """

    train_shards: str = ""
    val_shards: Optional[str] = None
    clip_frames: int = 16
    image_size: int = 64
    channels: int = 1  # the embedded default data set (moving digits) is grey
    batch_size: int = 8
    num_workers: int = 2
    epoch_batches: int = 1000
    val_batches: Optional[int] = 50
    seed: int = 0
    shuffle_buffer: int = 64
    resize: bool = False
    pin_memory: bool = False
    max_consecutive_skips: int = 1000

    def __post_init__(self) -> None:
        for name in ("clip_frames", "image_size", "channels", "batch_size", "epoch_batches"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{name}={value!r}: expected a positive integer")
        for name in ("num_workers", "seed", "shuffle_buffer"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"data.{name}={value!r}: expected a non-negative integer")
        if self.val_batches is not None and (not isinstance(self.val_batches, int) or self.val_batches < 1):
            raise ValueError(f"data.val_batches={self.val_batches!r}: expected a positive integer or None")
