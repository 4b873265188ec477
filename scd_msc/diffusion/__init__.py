"""Noise process, objectives and samplers of scd_msc (no parameters; the networks live in ``models/``).

Rectified flow / flow matching (Liu, Gong & Liu 2022, "Flow Straight and Fast";
Lipman et al. 2022): ``x_t = (1 - t) * x0 + t * eps``, ``t = 1`` is noise, ``t = 0`` data,
the network regresses ``v = eps - x0``. Training timesteps are logit-normal and the
sampling schedule uses the timestep shift ``t' = s*t / (1 + (s-1)*t)`` of Stable
Diffusion 3 (Esser et al. 2024, "Scaling Rectified Flow Transformers"). Classifier-free
guidance perturbs the encoder context (``c + eta * zeta``) as in SCD (Bai et al., 2026).

* :mod:`.flow` — the noise process of training (:class:`FlowMatching`, :class:`FlowConfig`);
* :mod:`.objectives` — the SCD and diffusion-forcing losses (:func:`training_loss`);
* :mod:`.samplers` — Euler/Heun solvers and guidance; :mod:`.sampler` — the
  :class:`Sampler` a streaming session is handed.
"""

from scd_msc.diffusion.flow import FlowConfig, FlowMatching
from scd_msc.diffusion.objectives import OBJECTIVES, diffusion_forcing_loss, null_dropout, scd_loss, training_loss
from scd_msc.diffusion.sampler import Sampler, SamplerConfig
from scd_msc.diffusion.samplers import (
    SAMPLERS,
    ContextVelocityFn,
    StepCallback,
    VelocityFn,
    guided_velocity,
    sample_euler,
    sample_heun,
    shift_timesteps,
    timestep_schedule,
)

__all__ = [
    "OBJECTIVES",
    "SAMPLERS",
    "ContextVelocityFn",
    "FlowConfig",
    "FlowMatching",
    "Sampler",
    "SamplerConfig",
    "StepCallback",
    "VelocityFn",
    "diffusion_forcing_loss",
    "guided_velocity",
    "null_dropout",
    "sample_euler",
    "sample_heun",
    "scd_loss",
    "shift_timesteps",
    "timestep_schedule",
    "training_loss",
]
