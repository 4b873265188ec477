"""Lightning wrapper around ``ClipDataset``: batches ``{"video": (B, F, C, H, W), "key": list[str]}``
(plus ``actions`` ``(B, F)`` and ``label`` ``(B,)`` int64 when the shards carry them).

Pixels are in [-1, 1]; latent shards give latents as stored. Rank and world size come
from the attached trainer (or are passed in) and are handed to the dataset explicitly.
"""

from __future__ import annotations

import lightning as L
import webdataset as wds
from torch.utils.data import DataLoader

from .config import AUTO, DataConfig
from .dataset import ClipDataset, collate_clips
from .probe import probe_shards


class ShardDataModule(L.LightningDataModule):
    """Train on an endless resampled shard stream, validate on one ordered pass.

    Args:
        config: the ``DataConfig``; ``auto`` channels / image_size are read from the
            first training sample (``probe_shards``).
        rank, world_size: override the trainer's ``global_rank`` / ``world_size``
            (for use without a trainer, e.g. in tests or custom loops).
    """

    def __init__(self, config: DataConfig, rank: int | None = None, world_size: int | None = None):
        super().__init__()
        if not config.train_shards:
            raise ValueError("data.train_shards='': expected a shard pattern, e.g. 'shards/*.tar'")
        if AUTO in (config.channels, config.image_size):
            config = config.with_shape_of(probe_shards(config.train_shards))
        self.config = config
        self._rank, self._world_size = rank, world_size
        self._loaders: list[DataLoader] = []  # every torch DataLoader made, for teardown

    def _place(self) -> tuple[int, int]:
        trainer = self.trainer
        rank = self._rank if self._rank is not None else (trainer.global_rank if trainer else 0)
        world = self._world_size if self._world_size is not None else (trainer.world_size if trainer else 1)
        return rank, world

    def _dataset(self, shards: str, resampled: bool) -> ClipDataset:
        c = self.config
        rank, world = self._place()
        return ClipDataset(shards, c.clip_frames, c.channels, c.image_size, rank=rank, world_size=world,
                           resampled=resampled, seed=c.seed, shuffle_buffer=c.shuffle_buffer,
                           resize=c.resize, max_consecutive_skips=c.max_consecutive_skips)

    def _loader(self, dataset: ClipDataset) -> wds.WebLoader:
        c = self.config
        # persistent workers keep each worker's dataset copy, so its epoch counter (the
        # seed of shard draws and offsets) advances instead of replaying epoch 0.
        loader = wds.WebLoader(dataset, batch_size=c.batch_size, num_workers=c.num_workers,
                               collate_fn=collate_clips, pin_memory=c.pin_memory,
                               persistent_workers=c.num_workers > 0)
        self._loaders += [stage for stage in loader.pipeline if isinstance(stage, DataLoader)]
        return loader

    def teardown(self, stage: str) -> None:
        """Shut the persistent workers (and pin-memory threads) down when fit ends. Left
        to interpreter shutdown, ``scd-msc train`` on GPUs hung after its last checkpoint
        (2×H200); py-spy on an H100 showed it in the DataLoader's worker clean-up."""
        for loader in self._loaders:
            iterator = getattr(loader, "_iterator", None)  # torch keeps it when workers persist
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
                loader._iterator = None
        self._loaders.clear()

    def train_dataloader(self) -> wds.WebLoader:
        n = self.config.epoch_batches
        return self._loader(self._dataset(self.config.train_shards, True)).with_epoch(n).with_length(n, silent=True)

    def val_dataloader(self) -> wds.WebLoader | list:
        if not self.config.val_shards:
            return []
        loader = self._loader(self._dataset(self.config.val_shards, False))
        n = self.config.val_batches
        return loader if n is None else loader.with_epoch(n).with_length(n, silent=True)
