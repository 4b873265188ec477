"""Data: synthetic clip generators, game video, webdataset shard writing and reading, Lightning data module.

See DESIGN.md sections 5 and 7. Every name below is imported on first use (PEP 562):
``dataset``/``decode``/``shards`` import torch and webdataset, ``ShardDataModule`` imports
Lightning, and the spawned game workers (``scd_msc.data.games``) must not import torch.
"""

import importlib

_EXPORTS = {
    "DataConfig": "config",
    "ClipDataset": "dataset", "collate_clips": "dataset", "expand_shards": "dataset",
    "node_shards": "dataset", "worker_shards": "dataset",
    "REASONS": "decode", "ClipSpec": "decode", "SkipCounter": "decode", "SkipSample": "decode",
    "decode_sample": "decode",
    "Conditions": "conditions", "shard_conditions": "conditions",
    "ProbeError": "probe", "ShardInfo": "probe", "probe_shards": "probe",
    "ShardSummary": "shards", "make_shards": "shards",
    "SOURCES": "sources", "encode_latents": "sources", "load_callable": "sources",
    "bouncing_shapes": "synthetic", "moving_digits": "synthetic",
    "decode_video": "video", "encode_mp4": "video", "iter_video_frames": "video",
    "resize_frames": "video", "to_channels": "video",
    "ShardDataModule": "datamodule",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
