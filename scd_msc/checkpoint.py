"""Loading models from checkpoints: the contract between training and inference.

A training checkpoint is Lightning's ``.ckpt``: ``state_dict`` holds the network under
the prefix ``model.`` (and, when EMA is on, the averaged copy under ``ema_model.``, with
its update count in ``averaging_state["n_averaged"]``), and ``hyper_parameters["config"]``
holds the whole :class:`~scd_msc.config.ExperimentConfig` as a plain dict (older layouts
are upgraded by :func:`scd_msc.config.config_from_dict`). :func:`load_model` rebuilds the
network from its ``model`` section (and the attention backend from ``runtime``), so
inference needs no training code and no data. Which weights it loads (``weights="auto" |
"ema" | "trained"``) is decided by :func:`scd_msc.ema.choose_weights` from the EMA's
decay (``train.ema_decay``) and update count. A checkpoint that cannot be read (e.g.
``last.ckpt`` cut short by a full disk) fails with one line that names the newest
readable ``step_*.ckpt`` in the same folder. ``hyper_parameters["shards"]`` says what
the training shards held
(:class:`~scd_msc.data.probe.ShardInfo`: pixels or latents, and the encoder of latent
shards); :func:`load_shard_info` reads it (None in checkpoints older than it).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
from torch import nn

from scd_msc.ae_config import AEExperimentConfig, ae_config_from_dict
from scd_msc.config import ExperimentConfig, config_from_dict
from scd_msc.data.probe import ShardInfo
from scd_msc.ema import WeightChoice, check_weights, choose_weights
from scd_msc.models import model_from_config
from scd_msc.models.autoencoder import FrameAutoencoder


def stored_config_dict(ckpt: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The config dict a training checkpoint (of ``train`` or ``train-ae``) was written with."""
    try:
        return ckpt["hyper_parameters"]["config"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"checkpoint {path!r} is not an scd_msc training checkpoint "
                         f"(missing {err}); expected hyper_parameters.config and state_dict") from err


def stored_config(ckpt: Mapping[str, Any], path: str) -> ExperimentConfig:
    """The experiment config a training checkpoint was written with (older layouts upgraded)."""
    return config_from_dict(stored_config_dict(ckpt, path))


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def newest_readable_sibling(path: str) -> Optional[str]:
    """The ``step_*.ckpt`` with the highest step in ``path``'s folder (``path`` itself
    excluded) that ``torch.load`` can open, or None."""
    folder = os.path.dirname(path) or "."
    steps = [(int(m.group(1)), p) for p in glob.glob(os.path.join(folder, "step_*.ckpt"))
             if (m := re.fullmatch(r"step_(\d+)\.ckpt", os.path.basename(p)))
             and not os.path.samefile(p, path)]
    for _, candidate in sorted(steps, reverse=True):
        try:  # mmap: reads the index, not the tensors
            torch.load(candidate, map_location="cpu", mmap=True, weights_only=False)
        except Exception:  # noqa: BLE001 -- unreadable too: try the next older one
            continue
        return candidate
    return None


def read_checkpoint(path: str, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """``torch.load`` of a training checkpoint, or a one-line ValueError that says why it
    could not be read and names the newest readable ``step_*.ckpt`` next to it."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist or is not a file")
    try:
        return torch.load(path, map_location=map_location, mmap=mmap, weights_only=False)
    except Exception as err:  # noqa: BLE001 -- truncated, or not a torch file
        alt = newest_readable_sibling(path)
        hint = (f"the newest readable checkpoint next to it is {alt!r}" if alt else
                "no readable step_*.ckpt next to it")
        raise ValueError(f"checkpoint {path!r} could not be read ({_first_line(err)}); {hint}") from None


@dataclass
class LoadedCheckpoint:
    """A network in eval mode, which of the checkpoint's weights it holds, and the config
    it was trained with (its ``runtime`` knobs, backend and sampler, are the defaults of
    inference)."""

    model: nn.Module
    weights: WeightChoice
    config: ExperimentConfig


def _ema_updates(ckpt: Mapping[str, Any]) -> int | None:
    n = (ckpt.get("averaging_state") or {}).get("n_averaged")
    return None if n is None else int(n)


def load_checkpoint(path: str, map_location: str | torch.device = "cpu",
                    weights: str = "auto") -> LoadedCheckpoint:
    """The model stored in a training checkpoint, with the weights ``weights`` selects:
    ``trained``, ``ema`` (an error when the checkpoint has none), or ``auto``: the EMA
    once it has seen ``10 / (1 - ema_decay)`` updates, else the trained weights
    (:mod:`scd_msc.ema` says why). Raises ``ValueError`` naming the problem."""
    check_weights(weights)
    ckpt = read_checkpoint(path, map_location)
    cfg = stored_config(ckpt, path)
    model = model_from_config(cfg.model, cfg.runtime.backend)
    choice = load_weights(model, ckpt, path, weights, cfg.train.ema_decay)
    return LoadedCheckpoint(model.eval(), choice, cfg)


def load_weights(model: nn.Module, ckpt: Mapping[str, Any], path: str, weights: str, ema_decay: float) -> WeightChoice:
    """Load the checkpoint's trained or EMA weights (``weights``, as :func:`load_checkpoint`)
    into ``model``; a one-line ``ValueError`` when they do not fit it."""
    if "state_dict" not in ckpt:
        raise ValueError(f"checkpoint {path!r} is not an scd_msc training checkpoint "
                         "(missing 'state_dict'); expected hyper_parameters.config and state_dict")
    state = ckpt["state_dict"]
    has_ema = any(k.startswith("ema_model.") for k in state)
    decay = ema_decay if ema_decay > 0 else None
    choice = choose_weights(weights, has_ema, _ema_updates(ckpt), decay, where=f"checkpoint {path!r}")
    prefix = "ema_model." if choice.weights == "ema" else "model."
    loaded = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(loaded, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path!r} does not match its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return choice


def load_model(path: str, map_location: str | torch.device = "cpu", weights: str = "auto") -> nn.Module:
    """The network of :func:`load_checkpoint` (``weights``: ``auto``, ``ema`` or ``trained``)."""
    return load_checkpoint(path, map_location, weights).model


def load_shard_info(path: str) -> Optional[ShardInfo]:
    """What the checkpoint's training shards held, or None when it was not recorded.

    Reads only the hyper-parameters (memory-mapped), however large the checkpoint; an
    unreadable file fails as :func:`read_checkpoint` says."""
    stored = read_checkpoint(path, mmap=True).get("hyper_parameters", {}).get("shards")
    return ShardInfo.from_dict(stored) if isinstance(stored, dict) else None


def file_sha256(path: str) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


@dataclass
class LoadedAutoencoder:
    """A ``scd-msc train-ae`` checkpoint: the autoencoder in eval mode, which weights it
    holds, its config, and the file's ``path`` and ``sha256`` (what latent shards and
    models trained on them record). ``encode`` / ``decode`` follow the contract of
    ``make-shards latents --encoder`` / ``generate --decoder`` and run on the device of
    their input (the model follows it)."""

    model: FrameAutoencoder
    weights: WeightChoice
    config: AEExperimentConfig
    path: str
    sha256: str

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels ``(F, C, H, W)`` in [-1, 1] -> unit-scale latents ``(F, c, h, w)``."""
        return self.model.to(x.device).encode(x.float())

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(N, c, h, w)`` -> pixels ``(N, C, H, W)`` in [-1, 1]."""
        return self.model.to(z.device).decode(z.float())


def load_autoencoder(path: str, map_location: str | torch.device = "cpu", weights: str = "auto") -> LoadedAutoencoder:
    """The autoencoder of a ``scd-msc train-ae`` checkpoint (``weights`` as in
    :func:`load_checkpoint`); a one-line ``ValueError`` for anything else."""
    check_weights(weights)
    ckpt = read_checkpoint(path, map_location)
    stored = stored_config_dict(ckpt, path)
    if not isinstance(stored, dict) or "loss" not in stored:
        raise ValueError(f"checkpoint {path!r} is not an autoencoder checkpoint (no loss section in its config); "
                         "expected one written by scd-msc train-ae")
    cfg = ae_config_from_dict(stored)
    model = FrameAutoencoder(cfg.model)
    choice = load_weights(model, ckpt, path, weights, cfg.train.ema_decay)
    return LoadedAutoencoder(model.eval(), choice, cfg, path, file_sha256(path))
