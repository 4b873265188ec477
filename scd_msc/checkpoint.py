"""Loading models from checkpoints: the contract between training and inference.

A training checkpoint is Lightning's ``.ckpt``: ``state_dict`` holds the network under
the prefix ``model.`` (and, when EMA is on, the averaged copy under ``ema_model.``), and
``hyper_parameters["config"]`` holds the whole :class:`~scd_msc.config.ExperimentConfig`
as a plain dict. :func:`load_model` rebuilds the network from its ``model`` section (and
the attention backend from ``runtime``), so inference needs no training code and no data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from scd_msc.config import ExperimentConfig, config_from_dict
from scd_msc.models import model_from_config


def stored_config(ckpt: dict, path: str) -> ExperimentConfig:
    """The experiment config a training checkpoint was written with (older layouts upgraded)."""
    try:
        return config_from_dict(ckpt["hyper_parameters"]["config"])
    except (KeyError, TypeError) as err:
        raise ValueError(f"checkpoint {path!r} is not an scd_msc training checkpoint "
                         f"(missing {err}); expected hyper_parameters.config and state_dict") from err


@dataclass
class Checkpoint:
    """A loaded training checkpoint: the network (eval mode) and the config it was trained with."""

    model: nn.Module
    config: ExperimentConfig


def load_model(path: str, map_location: str | torch.device = "cpu", ema: bool = True) -> nn.Module:
    """The model stored in a training checkpoint (EMA weights when present and ``ema``)."""
    return load_checkpoint(path, map_location, ema).model


def load_checkpoint(path: str, map_location: str | torch.device = "cpu", ema: bool = True) -> Checkpoint:
    """The model and config of a training checkpoint (EMA weights when present and ``ema``).
    The runtime knobs it was trained with (``config.runtime``: backend, sampler) are the
    defaults of inference."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist or is not a file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated or not a torch file
        raise ValueError(f"checkpoint {path!r} could not be read: {err}") from err
    cfg = stored_config(ckpt, path)
    if "state_dict" not in ckpt:
        raise ValueError(f"checkpoint {path!r} is not an scd_msc training checkpoint "
                         "(missing 'state_dict'); expected hyper_parameters.config and state_dict")
    state = ckpt["state_dict"]
    model = model_from_config(cfg.model, cfg.runtime.backend)
    prefix = "ema_model." if ema and any(k.startswith("ema_model.") for k in state) else "model."
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path!r} does not match its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return Checkpoint(model.eval(), cfg)
