"""The sampler a streaming session is handed: prior draws, context noise, the ODE solve.

A session (``scd_msc.streaming``) never draws random numbers itself: it asks its
:class:`Sampler` for the noise a frame starts from, for context frames noised to a level
``t_c`` (``(1 - t_c)·x + t_c·ε``), and to integrate the velocity field from ``t = 1``
to ``t = 0`` with the configured solver and timestep shift. Every draw comes from the
``torch.Generator`` passed in (no global RNG).

Shapes: ``N`` samples folded into the batch · ``...`` the per-sample shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from scd_msc.checks import choice, number
from scd_msc.diffusion._random import randn
from scd_msc.diffusion.samplers import SAMPLERS, StepCallback, timestep_schedule


@dataclass
class SamplerConfig:
    """How frames are sampled (a runtime knob: it does not change the weights).

    ``name``: a solver of :data:`SAMPLERS`; ``timestep_shift``: SD3 shift of the
    schedule (> 1 spends more steps at high noise); ``guidance_perturb``: ``eta`` of
    classifier-free guidance by context perturbation (``c + eta·zeta``)."""

    _PREFIX: ClassVar[str] = "runtime.sampler."  # errors name the fields by their config path

    name: str = "euler"
    timestep_shift: float = 1.0
    guidance_perturb: float = 0.5

    def __post_init__(self) -> None:
        p = self._PREFIX
        choice(f"{p}name", self.name, SAMPLERS)
        number(f"{p}timestep_shift", self.timestep_shift, low=0, low_open=True)
        number(f"{p}guidance_perturb", self.guidance_perturb, low=0)


class Sampler:
    """Holds only its :class:`SamplerConfig`; see the module docstring."""

    def __init__(self, config: Optional[SamplerConfig] = None) -> None:
        self.config = config if config is not None else SamplerConfig()

    @staticmethod
    def prior(shape: Sequence[int], generator: Optional[torch.Generator], device: torch.device,
              dtype: torch.dtype) -> torch.Tensor:
        """Pure noise ``shape`` (``t = 1``), drawn from ``generator``."""
        return randn(shape, generator, device, dtype)

    @staticmethod
    def noise_to(x: torch.Tensor, level: float, generator: Optional[torch.Generator]) -> torch.Tensor:
        """``(1 - level)·x + level·ε``; at level 0 returns ``x`` itself and draws nothing."""
        if level == 0.0:
            return x
        eps = randn(x.shape, generator, x.device, x.dtype)  # like x
        return (1 - level) * x + level * eps

    def levels(self, steps: int) -> list[float]:
        """The levels ``velocity_fn`` is called at over ``steps`` steps, each once in this
        order of first call: the schedule without its final 0 (Heun's corrector calls
        land on the next step's level)."""
        return timestep_schedule(steps, self.config.timestep_shift).tolist()[:-1]

    def sample(self, velocity_fn: Callable[..., torch.Tensor], noise: torch.Tensor, steps: int,
               guidance: float = 1.0, context: Optional[torch.Tensor] = None,
               generator: Optional[torch.Generator] = None,
               callback: Optional[StepCallback] = None) -> torch.Tensor:
        """Integrate from ``noise (N, ...)`` at ``t = 1`` to ``t = 0``: ``velocity_fn(x, t)``,
        or ``velocity_fn(x, t, context)`` with guidance by perturbing ``context``."""
        cfg = self.config
        return SAMPLERS[cfg.name](velocity_fn, noise, steps, cfg.timestep_shift, guidance, context=context,
                                  perturb_scale=cfg.guidance_perturb if context is not None else 0.0,
                                  generator=generator, callback=callback)
