"""scd_msc: streaming video diffusion with a causal MSC encoder and a frame-wise decoder."""

from scd_msc.models import PRESETS, build_model

__all__ = ["PRESETS", "build_model"]
