"""Models of scd_msc: SCD (MSC or dense attention) and the causal-DiT baseline."""

from scd_msc.models.causal_dit import CausalDiT
from scd_msc.models.config import FAMILIES, ModelConfig
from scd_msc.models.presets import (PRESETS, SIZES, build_model, count_parameters, model_from_config, preset_config,
                                    randomize_zero_init, seeded_init)
from scd_msc.models.scd import SCDModel

__all__ = ["FAMILIES", "PRESETS", "SIZES", "CausalDiT", "ModelConfig", "SCDModel", "build_model",
           "count_parameters", "model_from_config", "preset_config", "randomize_zero_init", "seeded_init"]
