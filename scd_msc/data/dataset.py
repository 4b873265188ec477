"""Shard reader: webdataset tar shards -> ``{"video": (F, C, H, W) float, "key": str}`` samples
(plus ``actions`` ``(F,)`` and ``label`` ``()`` int64 when the shards carry them, DESIGN.md section 7).

Two modes:

* **resampled** (training): an endless stream. Shards are first split by node
  (``node_shards(urls, rank, world_size)``, rank and world size passed in, never read from
  ``torch.distributed`` here) and, when there are enough, by DataLoader worker; each
  worker then draws shards with replacement from its share and takes each clip at a
  random offset. All randomness comes from ``numpy.random.default_rng([seed, rank,
  worker, epoch])``: runs are reproducible and ranks read disjoint shards whenever
  ``len(shards) >= world_size`` (otherwise every rank reads every shard, with a
  warning). The epoch counter advances on every ``iter()`` of this object or is set
  by ``set_epoch``; DataLoader workers iterate copies, so a loader sets the epoch before
  each pass (``ShardDataModule``'s ``EpochLoader`` does).
* **finite** (validation / evaluation): every shard of this rank and worker once, in
  order, offset 0.

Built from webdataset's own stages (``tarfile_to_samples``, ``shuffle``);
``wds.WebDataset(resampled=True)`` is not used because its shard
resampler seeds itself from the clock and the node splitter would then only deal out
draws of independent random streams, so ranks could read the same shard at once.

Unusable samples (see ``decode.REASONS``) and unreadable or truncated tar files are
skipped and counted in ``dataset.skipped`` (per pass: each ``iter()`` starts from zero),
never fatal. The counts live in the worker processes, so every sample carries its
worker's counts so far in this pass (``sample["skipped"]``: ``{"worker": id, "pass":
epoch, "used": n, <reason>: n}``) and a batch those of its last sample;
``training/skips.py`` sums them over workers and passes.
"""

from __future__ import annotations

import glob
import logging
import os
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from scd_msc.checks import integer, non_negative_int, positive_int

from .decode import ClipSpec, SkipCounter, SkipSample, decode_sample

log = logging.getLogger(__name__)

_REMOTE = ("pipe:", "http://", "https://", "s3://", "gs://", "ais://")


def expand_shards(spec: str | Sequence[str]) -> list[str]:
    """Shard list from a brace pattern (``data/shard-{000000..000009}.tar``), a glob
    (``data/*.tar``), ``::``-joined patterns, or a list of those. Local files must exist."""
    parts = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for part in parts:
        for url in wds.shardlists.expand_urls(str(part)):
            if url.startswith(_REMOTE):
                urls.append(url)
            elif glob.has_magic(url):
                urls.extend(sorted(glob.glob(url)))
            elif os.path.isfile(url):
                urls.append(url)
            else:
                raise ValueError(f"shards={spec!r}: expected existing shard files, {url!r} does not exist")
    if not urls:
        raise ValueError(f"shards={spec!r}: expected at least one shard, the pattern matched none")
    return urls


def node_shards(urls: Sequence[str], rank: int, world_size: int) -> list[str]:
    """Explicit node splitting: shards ``rank, rank + world_size, ...`` of ``urls``."""
    positive_int("world_size", world_size)
    integer("rank", rank, low=0, high=world_size - 1, detail=f"world_size={world_size}")
    return list(urls[rank::world_size])


def worker_shards(urls: Sequence[str], worker: int, num_workers: int) -> list[str]:
    """Worker splitting within one node: shards ``worker, worker + num_workers, ...``."""
    return list(urls[worker::num_workers])


def _resample(urls: list[str], rng: np.random.Generator) -> Iterator[dict]:
    """Endless ``dict(url=...)`` stream drawn with replacement (webdataset's shard-stream format)."""
    while True:
        yield {"url": urls[int(rng.integers(len(urls)))]}


class ClipDataset(IterableDataset):
    """Iterable dataset of clips read from webdataset shards (see the module docstring).

    Args:
        shards: brace pattern, glob or list (see ``expand_shards``).
        clip_frames, channels, image_size: what a usable clip is (others are skipped).
        rank, world_size: this process's place in distributed training.
        resampled: endless random stream (True) or one ordered pass (False).
        seed: base seed of the shard draws, the shuffle buffer and the clip offsets.
        shuffle_buffer: samples held in the shuffle buffer (resampled mode only; 0 = off).
        resize: resize pixel clips of another size instead of skipping them.
        max_consecutive_skips: raise after this many unusable samples in a row.
    """

    def __init__(self, shards: str | Sequence[str], clip_frames: int, channels: int, image_size: int, *,
                 rank: int = 0, world_size: int = 1, resampled: bool = True, seed: int = 0,
                 shuffle_buffer: int = 64, resize: bool = False, max_consecutive_skips: int = 1000):
        super().__init__()
        for name, value in (("clip_frames", clip_frames), ("channels", channels), ("image_size", image_size)):
            positive_int(name, value)
        non_negative_int("seed", seed)
        self.urls = expand_shards(shards)
        self.rank_urls = node_shards(self.urls, rank, world_size)
        if len(self.urls) < world_size:  # an empty rank would stall the others (DDP collectives)
            log.warning("%d shards for %d ranks: rank %d reads all of them (ranks overlap); "
                        "write at least world_size shards", len(self.urls), world_size, rank)
            self.rank_urls = list(self.urls)
        self.spec = ClipSpec(clip_frames, channels, image_size, resize)
        self.rank, self.world_size = rank, world_size
        self.resampled, self.seed, self.shuffle_buffer = resampled, seed, shuffle_buffer
        self.skipped = SkipCounter(max_consecutive_skips)
        self.epoch: int | None = None
        self._iterations = 0

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch that seeds the next ``iter()`` (otherwise the iteration count is used)."""
        self.epoch = epoch

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = self._worker()
        epoch = self._iterations if self.epoch is None else self.epoch
        self._iterations += 1
        self.skipped = SkipCounter(self.skipped.max_consecutive, self.skipped.quiet)  # counts of this pass
        rng = np.random.default_rng([self.seed, self.rank, worker, epoch])
        urls = self.rank_urls
        if len(urls) >= num_workers or not self.resampled:
            urls = worker_shards(urls, worker, num_workers)
        if not urls:
            return
        source = _resample(urls, rng) if self.resampled else iter([{"url": u} for u in urls])
        samples = wds.tarfile_to_samples(handler=self.skipped.handler)(source)
        if self.resampled and self.shuffle_buffer > 1:
            shuffle_rng = random.Random(int(rng.integers(2**63)))
            samples = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=shuffle_rng)(samples)
        yield from self._decode(samples, rng if self.resampled else None, epoch)
        if not self.resampled and self.skipped.total and not self.skipped.quiet:
            log.info("rank %d worker %d: finished pass, skipped %s", self.rank, worker, self.skipped.summary())

    def _decode(self, samples, rng: np.random.Generator | None, epoch: int) -> Iterator[dict]:
        worker = self._worker()[0]
        for sample in samples:
            try:
                out = decode_sample(sample, self.spec, rng)
            except SkipSample as skip:
                self.skipped.skip(skip.reason, f"{sample.get('__key__')}@{sample.get('__url__')}", skip.detail)
                continue
            self.skipped.ok()
            out["skipped"] = {"worker": worker, "pass": epoch, **self.skipped.snapshot()}
            yield out


def collate_clips(samples: list[dict]) -> dict:
    """``{"video": (B, F, C, H, W), "key": list[str]}`` from a list of samples, plus
    ``actions`` ``(B, F)`` and ``label`` ``(B,)`` int64 when the samples carry them, and
    ``skipped`` (the last sample's worker counts) when the samples carry them."""
    batch = {"video": torch.stack([s["video"] for s in samples]), "key": [s["key"] for s in samples]}
    for name in ("actions", "label"):
        have = sum(name in s for s in samples)
        if have == len(samples):
            batch[name] = torch.stack([s[name] for s in samples])
        elif have:
            raise ValueError(f"batch of {len(samples)} clips: {have} carry {name!r} and the others do not; "
                             "expected shards written with the same conditions")
    if "skipped" in samples[-1]:  # one worker makes a whole batch: its last counts are its newest
        batch["skipped"] = samples[-1]["skipped"]
    return batch
