"""Typed configuration of every model family (one dataclass, validated before build)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from scd_msc.diffusion import FlowConfig
from scd_msc.ops.backends import BACKENDS
from scd_msc.ops.msc import GATINGS, UPSAMPLES
from scd_msc.ops.schedule import MSCScheduleConfig

FAMILIES = ("scd-msc", "scd-dense", "causal-dit")
CONDITIONINGS = ("token_concat", "add", "adaln")


@dataclass
class ModelConfig:
    """``family``: ``scd-msc`` (MSC encoder + MSC decoder), ``scd-dense`` (the same with
    dense attention) or ``causal-dit`` (``enc_depth + dec_depth`` dense frame-causal
    blocks). Images are ``channels × image_size²``, tokens ``(image_size/patch)²``."""

    family: str = "scd-msc"
    channels: int = 1
    image_size: int = 32
    patch: int = 4
    dim: int = 64
    heads: int = 4
    hires_heads: Optional[int] = None
    enc_depth: int = 4
    dec_depth: int = 2
    mlp_ratio: float = 4.0
    schedule: MSCScheduleConfig = field(default_factory=MSCScheduleConfig)
    decoder_window: int = 3
    decoder_down: int = 2
    conditioning: str = "token_concat"
    gating: str = "branch"
    upsample: str = "nearest"
    backend: str = "auto"
    dense_window_frames: Optional[int] = None  # dense encoder / DiT: frames attended (None: all)
    flow: FlowConfig = field(default_factory=FlowConfig)
    sampler: str = "euler"
    guidance_perturb: float = 0.5  # eta of CFG by context perturbation (c + eta·zeta)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    def validate(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        if self.gating not in GATINGS or self.upsample not in UPSAMPLES:
            raise ValueError(f"gating/upsample must be in {GATINGS}/{UPSAMPLES}, "
                             f"got {self.gating!r}/{self.upsample!r}")
        if self.backend not in BACKENDS + ("auto",):
            raise ValueError(f"model.backend={self.backend!r}: expected one of {', '.join(BACKENDS + ('auto',))}")
        if self.image_size % self.patch:
            raise ValueError(f"image_size ({self.image_size}) must be divisible by patch ({self.patch})")
        if self.dim % self.heads or (self.dim // self.heads) % 8:
            raise ValueError(f"dim/heads must be a multiple of 8, got {self.dim}/{self.heads}")
        for name in ("channels", "enc_depth", "dec_depth", "decoder_down"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.decoder_window % 2 == 0 or self.decoder_window > self.grid:
            raise ValueError(f"decoder_window must be odd and <= the token grid {self.grid}, "
                             f"got {self.decoder_window}")
        if self.schedule.window > self.grid:
            raise ValueError(f"schedule.window ({self.schedule.window}) exceeds the token grid {self.grid}")
