"""Loading models from checkpoints: the contract between training and inference.

A training checkpoint is Lightning's ``.ckpt``: ``state_dict`` holds the network under
the prefix ``model.`` (and, when EMA is on, the averaged copy under ``ema_model.``), and
``hyper_parameters["config"]["model"]`` holds the :class:`ModelConfig` as a plain dict.
:func:`load_model` rebuilds the network from that dict alone, so inference needs no
training code and no data. ``hyper_parameters["shards"]`` says what the training shards
held (:class:`~scd_msc.data.probe.ShardInfo`: pixels or latents, and the encoder of
latent shards); :func:`load_shard_info` reads it (None in checkpoints older than it).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional

import torch
from omegaconf import OmegaConf
from torch import nn

from scd_msc.data.probe import ShardInfo
from scd_msc.models import ModelConfig, model_from_config


def model_config_from_dict(d: Mapping[str, Any]) -> ModelConfig:
    """Validated :class:`ModelConfig` from a plain dict (unknown keys fail loudly)."""
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), dict(d))
    return OmegaConf.to_object(cfg)


def model_config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load_model(path: str, map_location: str | torch.device = "cpu", ema: bool = True) -> nn.Module:
    """The model stored in a training checkpoint (EMA weights when present and ``ema``)."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist or is not a file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated or not a torch file
        raise ValueError(f"checkpoint {path!r} could not be read: {err}") from err
    try:
        model_dict = ckpt["hyper_parameters"]["config"]["model"]
        state = ckpt["state_dict"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"checkpoint {path!r} is not an scd_msc training checkpoint "
                         f"(missing {err}); expected hyper_parameters.config.model and state_dict") from err
    model = model_from_config(model_config_from_dict(model_dict))
    prefix = "ema_model." if ema and any(k.startswith("ema_model.") for k in state) else "model."
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path!r} does not match its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.eval()


def load_shard_info(path: str) -> Optional[ShardInfo]:
    """What the checkpoint's training shards held, or None when it was not recorded.

    Reads only the hyper-parameters (memory-mapped), however large the checkpoint."""
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        stored = ckpt.get("hyper_parameters", {}).get("shards")
    except Exception as err:  # noqa: BLE001 -- not a (zip) torch file: load_model says more
        raise ValueError(f"checkpoint {path!r} could not be read: {err}") from err
    return ShardInfo.from_dict(stored) if isinstance(stored, dict) else None
