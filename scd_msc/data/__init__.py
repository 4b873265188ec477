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
    "decode_video": "video", "iter_video_frames": "video", "resize_frames": "video",
    "encode_mp4": "scd_msc.media", "to_channels": "scd_msc.media",  # writing lives in scd_msc/media.py
    "ShardDataModule": "datamodule",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = _EXPORTS[name]
        return getattr(importlib.import_module(module if "." in module else f"{__name__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
