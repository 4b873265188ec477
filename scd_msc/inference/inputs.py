"""What the inference commands read before any work: the model, the device, clips.

Every function raises a ``ValueError`` that names the argument, the value and what was
expected, so the commands can print it and exit with code 2.

Shapes: ``B`` batch · ``F`` frames · ``C`` channels · ``H, W`` pixels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
import webdataset as wds
from torch import nn
from torch.utils.data import DataLoader

from scd_msc.checkpoint import load_checkpoint
from scd_msc.checks import choice
from scd_msc.config import RuntimeConfig
from scd_msc.data import ClipDataset, collate_clips
from scd_msc.ema import WeightChoice, WeightsError, check_weights
from scd_msc.models import PRESETS, ModelConfig, model_from_config, preset_config, seeded_init


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device={name!r}: CUDA is not available here; use cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"--device={name!r}: expected auto, cpu or cuda[:N]")
    return torch.device(name)


DTYPES = ("auto", "float32", "bfloat16")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA (as training's bf16-mixed), float32 on CPU."""
    choice("--dtype", name, DTYPES)
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


@dataclass
class ModelSource:
    """Where the model comes from: a checkpoint path or a preset name (random init), and
    which of a checkpoint's weights (``auto``, ``ema``, ``trained``: ``scd_msc/ema.py``)."""

    checkpoint: Optional[str]
    preset: Optional[str]
    weights: str = "auto"

    def check(self) -> None:
        """Exactly one of the two, a known preset, and weights a preset can have."""
        if (self.checkpoint is None) == (self.preset is None):
            raise ValueError("--checkpoint/--preset: expected exactly one of them, got "
                             + ("both" if self.checkpoint else "neither"))
        if self.preset is not None:
            choice("--preset", self.preset, PRESETS)
        try:
            check_weights(self.weights)
        except WeightsError as err:
            raise ValueError(f"--{err}") from None  # weights='x': ... -> --weights='x': ...
        if self.preset is not None and self.weights == "ema":
            raise ValueError(f"--weights='ema': --preset {self.preset} has random weights and no EMA; "
                             "expected auto or trained")

    def describe(self) -> dict[str, Optional[str]]:
        return {"checkpoint": self.checkpoint, "preset": self.preset}


@dataclass
class Loaded:
    """What :func:`load` returns: the model, its checkpoint weights (None for a preset)
    and its runtime knobs (backend, sampler)."""

    model: nn.Module
    weights: Optional[WeightChoice]
    runtime: RuntimeConfig


def load(source: ModelSource, device: torch.device, seed: int = 0,
         dtype: torch.dtype = torch.float32) -> Loaded:
    """The model in eval mode on ``device``, which weights of the checkpoint it holds
    (``None`` for a preset) and the runtime knobs to run it with (the checkpoint's, or the
    defaults for a preset). A checkpoint is validated by :func:`load_checkpoint`
    (ValueError when missing, unreadable, mismatched, or without the EMA ``--weights ema``
    asks for); a preset is built with a random init seeded by ``seed`` (the global RNG is
    left as it was), then cast to ``dtype``."""
    source.check()
    choice = None
    if source.checkpoint is not None:
        try:
            loaded = load_checkpoint(source.checkpoint, map_location="cpu", weights=source.weights)
        except WeightsError as err:
            raise ValueError(f"--{err}") from None
        except ValueError as err:
            raise ValueError(f"--checkpoint: {err}") from None
        model, choice, runtime = loaded.model, loaded.weights, loaded.config.runtime
    else:
        runtime = RuntimeConfig()
        with seeded_init(seed):
            model = model_from_config(preset_config(source.preset), runtime.backend)
    return Loaded(model.to(device=device, dtype=dtype).eval(), choice, runtime)


def preset_cfg(source: ModelSource) -> Optional[ModelConfig]:
    """The config of a preset without building it (None for a checkpoint)."""
    return None if source.preset is None else preset_config(source.preset)


def _first_sample_shape(urls: list[str]) -> str:
    """What the first sample of the shards holds, for error messages."""
    try:
        sample = next(iter(wds.tarfile_to_samples()(iter([{"url": urls[0]}]))))
    except Exception as err:  # noqa: BLE001 -- unreadable tar: say so
        return f"the first shard could not be read ({err!r:.100})"
    if "frames.npy" in sample:
        arr = np.load(io.BytesIO(sample["frames.npy"]), allow_pickle=False)
        return f"its first clip has frames.npy of shape (F, H, W, C) = {tuple(arr.shape)}"
    return f"its first sample has fields {sorted(k for k in sample if not k.startswith('__'))}"


def read_clips(shards: str, arg: str, frames: int, count: int, cfg: ModelConfig,
               exact: bool = True) -> dict:
    """The first ``count`` usable clips of ``frames`` frames from ``shards`` (one ordered
    pass, offset 0) as a batch: ``video (count, frames, C, H, W)`` in [-1, 1], ``key``, and
    ``actions (count, frames)`` / ``label (count,)`` when the shards carry them. Clips must
    have the model's ``channels`` and ``image_size``. With ``exact=False`` fewer clips (at
    least one) are returned when the shards hold fewer."""
    try:
        data = ClipDataset(shards, frames, cfg.channels, cfg.image_size, resampled=False)
    except ValueError as err:
        raise ValueError(f"{arg}: {err}") from None
    clips: list[dict] = []
    for sample in data:
        clips.append(sample)
        if len(clips) == count:
            break
    if not clips or (exact and len(clips) < count):
        need = (f"{frames} frame(s) with C×H×W = {cfg.channels}×{cfg.image_size}×{cfg.image_size} "
                "(the model's channels × image_size²)")
        detail = (f"skipped: {data.skipped.summary()}; {_first_sample_shape(data.urls)}"
                  if data.skipped.total else "no more clips in the shards")
        raise ValueError(f"{arg}={shards!r}: expected {count} clip(s) of {need}, found {len(clips)} ({detail})")
    try:
        return collate_clips(clips)
    except ValueError as err:  # some clips carry conditions, others not
        raise ValueError(f"{arg}={shards!r}: {err}") from None


def clip_batches(shards: str, frames: int, cfg: ModelConfig, batch: int) -> Iterator[dict]:
    """Batches ``{"video": (B, frames, C, H, W), "key": [...]}`` of the shards' clips in
    order (one pass, offset 0, main process)."""
    data = ClipDataset(shards, frames, cfg.channels, cfg.image_size, resampled=False)
    return iter(DataLoader(data, batch_size=batch, collate_fn=collate_clips, num_workers=0))
