"""Named presets: ``{scd-msc, scd-dense, causal-dit}-{tiny, small, base}``.

For each size the three families share width, depth (``enc_depth + dec_depth`` blocks)
and patching, so parameter counts agree within a few percent (``scd-msc params``).
``tiny`` runs the tests on a CPU in seconds; ``small`` has 1024 tokens per frame.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from scd_msc.checks import choice
from scd_msc.models.causal_dit import CausalDiT
from scd_msc.models.config import FAMILIES, ModelConfig
from scd_msc.models.scd import SCDModel
from scd_msc.ops.schedule import MSCLayerSpec, MSCScheduleConfig


def _pyramid(window: int, frames: int, strided_frames: int, down_max: int) -> MSCScheduleConfig:
    base = MSCLayerSpec(down=2, window=window, frames=frames, stride=2, strided_frames=strided_frames)
    return MSCScheduleConfig(name="pyramid", base=base, down_max=down_max)


SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(channels=1, image_size=32, patch=4, dim=64, heads=4, enc_depth=4, dec_depth=2,
                 schedule=_pyramid(window=3, frames=3, strided_frames=4, down_max=4),
                 decoder_window=3, decoder_down=2),
    "small": dict(channels=1, image_size=64, patch=2, dim=384, heads=6, enc_depth=10, dec_depth=2,
                  schedule=_pyramid(window=7, frames=4, strided_frames=8, down_max=4),
                  decoder_window=7, decoder_down=4),
    "base": dict(channels=3, image_size=128, patch=2, dim=768, heads=12, enc_depth=20, dec_depth=4,
                 schedule=_pyramid(window=7, frames=4, strided_frames=8, down_max=8),
                 decoder_window=7, decoder_down=4),
}

PRESETS = tuple(f"{family}-{size}" for family in FAMILIES for size in SIZES)


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """The :class:`ModelConfig` of preset ``name`` with ``overrides`` applied."""
    choice("preset", name, PRESETS)
    family, size = name.rsplit("-", 1)
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown ModelConfig field(s) {unknown}; known: {sorted(fields)}")
    return ModelConfig(family=family, **{**SIZES[size], **overrides})


def model_from_config(cfg: ModelConfig, backend: str = "auto") -> nn.Module:
    """The network of ``cfg``; ``backend`` (a runtime knob, not part of the weights)
    names the attention backend of every layer."""
    cfg.validate()
    return CausalDiT(cfg, backend) if cfg.family == "causal-dit" else SCDModel(cfg, backend)


def build_model(name: str, backend: str = "auto", **overrides: Any) -> nn.Module:
    """``build_model("scd-msc-tiny", backend="reference", dim=128)`` -> a model."""
    return model_from_config(preset_config(name, **overrides), backend)


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Modules built inside the block get the initial weights of ``seed``; the caller's
    global RNG state is restored after it. torch's module initialisers (``nn.Linear``,
    ``nn.Conv2d``, ...) draw from the global CPU RNG and take no generator, so this is
    the one place that seeds it, for the block only (``torch.random.fork_rng``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def randomize_zero_init(model: nn.Module, std: float = 0.05, seed: int = 0) -> int:
    """Draw every all-zero parameter of ``model`` from N(0, ``std``²) (a CPU generator of
    ``seed``; the global RNG is untouched) and return how many there were. A fresh
    adaLN-zero model outputs zero velocity, so its frames are its starting noise whatever
    its inputs: a check of one path against another (eager vs compiled, stream vs
    recompute, two actions) on such a model compares nothing."""
    g = torch.Generator().manual_seed(seed)
    drawn = 0
    for p in model.parameters():
        if not p.abs().sum():
            p.copy_(torch.randn(p.shape, generator=g) * std)
            drawn += 1
    return drawn


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
