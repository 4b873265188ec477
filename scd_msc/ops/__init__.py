"""The MSC attention op: functional branches, backends, masks and the layers
(:class:`MSCAttention`, and :class:`DenseAttention` for the dense baselines)."""

from scd_msc.ops.attention import hires_attention, lowres_attention, window_attention
from scd_msc.ops.backends import (
    BACKENDS,
    BackendUnavailableError,
    explain_backends,
    natten_has_library,
    resolve_backend,
)
from scd_msc.ops.dense import DenseAttention
from scd_msc.ops.masks import WindowSpec, dense_window_mask, hires_spec, lowres_spec, window_mask_mod
from scd_msc.ops.msc import AttentionConfig, MSCAttention, MSCAttentionConfig
from scd_msc.ops.schedule import MSCLayerSpec, MSCScheduleConfig, build_schedule

__all__ = [
    "AttentionConfig",
    "BACKENDS",
    "BackendUnavailableError",
    "DenseAttention",
    "MSCAttention",
    "MSCAttentionConfig",
    "MSCLayerSpec",
    "MSCScheduleConfig",
    "WindowSpec",
    "build_schedule",
    "dense_window_mask",
    "explain_backends",
    "hires_attention",
    "hires_spec",
    "lowres_attention",
    "lowres_spec",
    "natten_has_library",
    "resolve_backend",
    "window_attention",
    "window_mask_mod",
]
