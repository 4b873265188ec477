"""Lightning wrapper around ``ClipDataset``: batches ``{"video": (B, F, C, H, W), "key": list[str]}``
(plus ``actions`` ``(B, F)`` and ``label`` ``(B,)`` int64 when the shards carry them).

Pixels are in [-1, 1]; latent shards give latents as stored. Rank and world size come
from the attached trainer (or are passed in) and are handed to the dataset explicitly.

Loader workers are not persistent: every pass over a loader (a training epoch, a
validation run) starts fresh workers, each with a copy of the dataset that carries the
pass's epoch (:class:`EpochLoader`), and shuts them down when the pass ends, so nothing
is left for interpreter shutdown. (Persistent workers + pin-memory threads left to
interpreter shutdown made ``scd-msc train`` hang at exit on GPUs.) The workers ignore
SIGINT and SIGTERM (:func:`ignore_interrupts`): a signal sent to the whole process
group (``timeout``, ``kill -- -PGID``, SLURM at its time limit) is handled by the main
process alone, which saves ``last.ckpt`` and then ends the pass.
"""

from __future__ import annotations

import signal
from typing import Any

import lightning as L
import webdataset as wds
from torch.utils.data import DataLoader

from .config import AUTO, DataConfig
from .dataset import ClipDataset, collate_clips
from .probe import probe_shards


def ignore_interrupts(worker_id: int) -> None:
    """``worker_init_fn`` of the loaders: the worker ignores SIGINT and SIGTERM. Without
    it a group-wide signal kills the workers first and training dies in the DataLoader
    ("worker ... killed by signal") before Lightning can save ``last.ckpt``. The main
    process ends the workers through the DataLoader's queues when the pass ends; torch's
    watchdog ends them if the main process dies. (A worker stuck inside a call is then
    no longer ended by the DataLoader's last-resort SIGTERM; SIGKILL still does.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class EpochLoader(DataLoader):
    """A DataLoader over a :class:`ClipDataset` that sets the dataset's epoch before each
    pass: pass ``k`` (the ``k``-th ``iter()``, from 0) reads epoch ``k``. Workers are not
    persistent, so each pass pickles the dataset, epoch included, into fresh workers, and
    shard draws and clip offsets differ per pass (as ``ClipDataset`` does by itself when
    it is iterated in-process). A resumed run starts again from epoch 0 with another
    seed (``training/train.py`` adds the start step to ``data.seed``)."""

    def __init__(self, dataset: ClipDataset, **kwargs: Any):
        super().__init__(dataset, worker_init_fn=ignore_interrupts, persistent_workers=False, **kwargs)
        self.passes = 0

    def __iter__(self):
        self.dataset.set_epoch(self.passes)
        self.passes += 1
        return super().__iter__()


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

    def _loader(self, dataset: ClipDataset) -> wds.DataPipeline:
        c = self.config
        return wds.DataPipeline(EpochLoader(dataset, batch_size=c.batch_size, num_workers=c.num_workers,
                                            collate_fn=collate_clips, pin_memory=c.pin_memory))

    def train_dataloader(self) -> wds.DataPipeline:
        n = self.config.epoch_batches
        return self._loader(self._dataset(self.config.train_shards, True)).with_epoch(n).with_length(n, silent=True)

    def val_dataloader(self) -> wds.DataPipeline | list:
        if not self.config.val_shards:
            return []
        loader = self._loader(self._dataset(self.config.val_shards, False))
        n = self.config.val_batches
        return loader if n is None else loader.with_epoch(n).with_length(n, silent=True)
