"""Typed configuration of every model family: what defines the weights, nothing else.

Runtime knobs (the attention backend, the sampler, guidance) live apart, in
:class:`scd_msc.config.RuntimeConfig`; the training objective in
:class:`scd_msc.diffusion.FlowConfig`. Two checkpoints with equal ``ModelConfig`` hold
interchangeable weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from scd_msc.ops.msc import AttentionConfig
from scd_msc.ops.schedule import MSCScheduleConfig

FAMILIES = ("scd-msc", "scd-dense", "causal-dit")
CONDITIONINGS = ("token_concat", "add", "adaln")
DECODER_CONTEXTS = ("recompute", "prefix")


@dataclass
class ModelConfig:
    """``family``: ``scd-msc`` (MSC encoder + MSC decoder), ``scd-dense`` (the same with
    dense attention) or ``causal-dit`` (``enc_depth + dec_depth`` dense frame-causal
    blocks). Images are ``channels × image_size²``, tokens ``(image_size/patch)²``.
    ``attention``: what every MSC layer shares; ``schedule``: the encoder's per-layer
    windows; ``decoder_window``/``decoder_down``: the decoder's hi-res window and low-res
    pooling; ``dense_window_frames``: frames a dense encoder / DiT layer attends (None: all).
    ``decoder_context``: ``recompute`` (the context frame of the decoder's stack is run
    at every denoising step) or ``prefix`` (it is run once per frame and its keys/values
    are reused by every step; see :mod:`scd_msc.models.decoder`).
    ``actions``: size of a discrete action set the model is conditioned on (0: none);
    ``classes``: number of class labels (0: none); see :mod:`scd_msc.models.conditions`."""

    family: str = "scd-msc"
    channels: int = 1
    image_size: int = 32
    patch: int = 4
    dim: int = 64
    heads: int = 4
    enc_depth: int = 4
    dec_depth: int = 2
    mlp_ratio: float = 4.0
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    schedule: MSCScheduleConfig = field(default_factory=MSCScheduleConfig)
    decoder_window: int = 3
    decoder_down: int = 2
    conditioning: str = "token_concat"
    decoder_context: str = "recompute"
    dense_window_frames: Optional[int] = None
    actions: int = 0
    classes: int = 0

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    def validate(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        if self.decoder_context not in DECODER_CONTEXTS:
            raise ValueError(f"decoder_context must be one of {DECODER_CONTEXTS}, got {self.decoder_context!r}")
        if self.decoder_context == "prefix" and self.conditioning != "token_concat":
            raise ValueError(f"decoder_context='prefix' needs conditioning='token_concat' (a context frame to "
                             f"keep), got conditioning={self.conditioning!r}")
        self.attention.validate(self.heads)
        if self.image_size % self.patch:
            raise ValueError(f"image_size ({self.image_size}) must be divisible by patch ({self.patch})")
        if self.dim % self.heads or (self.dim // self.heads) % 8:
            raise ValueError(f"dim/heads must be a multiple of 8, got {self.dim}/{self.heads}")
        for name in ("channels", "enc_depth", "dec_depth", "decoder_down"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("actions", "classes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: unconditioned), got {getattr(self, name)}")
        if self.decoder_window % 2 == 0 or self.decoder_window > self.grid:
            raise ValueError(f"decoder_window must be odd and <= the token grid {self.grid}, "
                             f"got {self.decoder_window}")
        if self.schedule.base.window > self.grid:
            raise ValueError(f"schedule.base.window ({self.schedule.base.window}) exceeds the token "
                             f"grid {self.grid}")
