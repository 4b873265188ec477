"""Typed configuration of the data pipeline (``OmegaConf.structured(DataConfig)``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Optional, Union

from scd_msc.checks import integer, non_negative_int, positive_int

if TYPE_CHECKING:
    from .probe import ShardInfo

AUTO = "auto"


@dataclass
class DataConfig:
    """Where the shards are and what a training batch looks like.

    ``train_shards`` / ``val_shards``: brace patterns (``shards/shard-{000000..000099}.tar``),
    globs (``shards/*.tar``) or ``::``-joined lists of those. ``channels`` / ``image_size``
    describe pixel frames, or latents (C, h == w) for ``latent.npy`` shards; ``auto`` (the
    default) reads them from the first training sample (``data/probe.py``). Samples of
    another shape or shorter than ``clip_frames`` are skipped and counted.
    ``epoch_batches``: training batches per epoch *per rank* (the stream is endless).
    ``val_batches``: validation batches per rank (the val pass is cut, or repeated, to
    exactly this many so that every rank runs the same number; None = one full pass).
    """

    train_shards: str = ""
    val_shards: Optional[str] = None
    clip_frames: int = 16
    image_size: Union[int, str] = AUTO  # an int, or auto: the shards' frame side
    channels: Union[int, str] = AUTO  # an int, or auto: the shards' channels
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
        for name in ("image_size", "channels"):
            integer(f"data.{name}", getattr(self, name), low=1, allow=(AUTO,))
        for name in ("clip_frames", "batch_size", "epoch_batches"):
            positive_int(f"data.{name}", getattr(self, name))
        for name in ("num_workers", "seed", "shuffle_buffer"):
            non_negative_int(f"data.{name}", getattr(self, name))
        positive_int("data.val_batches", self.val_batches, allow_none=True)

    def with_shape_of(self, info: "ShardInfo") -> "DataConfig":
        """This config with every ``auto`` of ``channels`` / ``image_size`` taken from ``info``."""
        size = self.image_size
        if size == AUTO:
            if info.size is None:
                fix = "pass data.image_size=N data.resize=true" if info.kind == "pixels" else "encode square latents"
                raise ValueError(f"data.image_size=auto: the shards hold {info.height}×{info.width} {info.kind} "
                                 f"(not square, {info.url}); {fix}")
            size = info.size
        return replace(self, channels=info.channels if self.channels == AUTO else self.channels, image_size=size)
