"""Typed configuration of every model family: what defines the weights, nothing else.

Runtime knobs (the attention backend, the sampler, guidance) live apart, in
:class:`scd_msc.config.RuntimeConfig`; the training objective in
:class:`scd_msc.diffusion.FlowConfig`. Two checkpoints with equal ``ModelConfig`` hold
interchangeable weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from scd_msc import checks
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

    def __post_init__(self) -> None:
        self._check_fields()

    def _check_fields(self) -> None:
        """Each field on its own (``attention`` and ``schedule`` checked themselves)."""
        checks.choice("model.family", self.family, FAMILIES)
        checks.choice("model.conditioning", self.conditioning, CONDITIONINGS)
        for name in ("channels", "image_size", "patch", "dim", "heads", "enc_depth", "dec_depth", "decoder_down"):
            checks.positive_int(f"model.{name}", getattr(self, name))
        if self.dim % (8 * self.heads):
            raise checks.error("model.dim", self.dim, f"a multiple of 8·model.heads={8 * self.heads}",
                               "so that the head dim dim/heads is a multiple of 8 (3-D RoPE)")
        checks.positive_int("model.dense_window_frames", self.dense_window_frames, allow_none=True)
        checks.choice("model.decoder_context", self.decoder_context, DECODER_CONTEXTS)
        if self.decoder_context == "prefix" and self.conditioning != "token_concat":
            raise checks.error("model.decoder_context", self.decoder_context,
                               "'recompute' unless model.conditioning='token_concat'",
                               f"a prefix keeps the context frame, which conditioning={self.conditioning!r} has not")
        for name in ("actions", "classes"):
            checks.non_negative_int(f"model.{name}", getattr(self, name), detail="0: unconditioned")
        self.attention.validate(self.heads)

    def validate(self) -> None:
        """Every check, those against the token grid too. ``__post_init__`` checks the
        fields alone: a config loaded with ``data.image_size=auto`` learns its size (and
        so its grid) after it is built. Builders call this; so does anyone who changed a
        field in place."""
        self._check_fields()
        self.schedule.validate()
        if self.image_size % self.patch:
            raise checks.error("model.image_size", self.image_size, f"a multiple of model.patch={self.patch}")
        grid = f"token grid {self.grid}×{self.grid}"
        checks.integer("model.decoder_window", self.decoder_window, low=1, high=self.grid, odd=True, detail=grid)
        checks.integer("model.schedule.base.window", self.schedule.base.window, low=1, high=self.grid, odd=True,
                       detail=grid)
