"""Data: synthetic clip generators, webdataset shard writing and reading, Lightning data module.

See DESIGN.md section 5. ``ShardDataModule`` is imported lazily so that writing shards
(``scd-msc make-shards``) does not pay for importing Lightning.
"""

from .config import DataConfig
from .dataset import ClipDataset, collate_clips, expand_shards, node_shards, worker_shards
from .decode import REASONS, ClipSpec, SkipCounter, SkipSample, decode_sample
from .probe import ProbeError, ShardInfo, probe_shards
from .shards import ShardSummary, make_shards
from .sources import SOURCES, encode_latents, load_callable
from .synthetic import bouncing_shapes, moving_digits
from .video import decode_video, encode_mp4, iter_video_frames, resize_frames, to_channels

__all__ = [
    "REASONS", "SOURCES", "ClipDataset", "ClipSpec", "DataConfig", "ProbeError", "ShardDataModule", "ShardInfo",
    "ShardSummary", "SkipCounter", "SkipSample", "bouncing_shapes", "collate_clips", "decode_sample", "decode_video",
    "encode_latents", "encode_mp4", "expand_shards", "iter_video_frames", "load_callable", "make_shards",
    "moving_digits", "node_shards", "probe_shards", "resize_frames", "to_channels", "worker_shards",
]


def __getattr__(name: str):
    if name == "ShardDataModule":
        from .datamodule import ShardDataModule

        return ShardDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
