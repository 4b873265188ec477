"""ODE samplers for rectified flow: shifted schedule, Euler, Heun, context-perturbation CFG.

Convention (see ``flow.py``): ``x_t = (1 - t) * x0 + t * eps`` and the network predicts
``v = eps - x0``, so ``dx_t/dt = v`` and sampling integrates from ``t = 1`` (noise) to
``t = 0`` (data) over a descending schedule ``1 = t_0 > t_1 > ... > t_S = 0``.

Shapes: ``N`` is whatever the caller folded into the batch (for the SCD decoder,
``B * F`` frames); ``...`` is the per-sample shape, e.g. ``(C, H, W)``. ``S`` is steps.

Guidance follows SCD: the unconditional branch is the same decoder on a *perturbed*
context ``c + eta * zeta``, ``zeta ~ N(0, I)``, so no extra encoder pass is needed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from scd_msc.checks import number, positive_int
from scd_msc.diffusion._random import randn

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``velocity_fn(x (N, ...), t (N,)) -> v (N, ...)``."""
ContextVelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``velocity_fn(x (N, ...), t (N,), context (N, ...)) -> v (N, ...)``."""
StepCallback = Callable[[int, float, torch.Tensor], None]
"""``callback(i, t_next, x (N, ...))``, called after step ``i`` (0-based) lands on ``t_next``."""


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3 shift ``t' = shift * t / (1 + (shift - 1) * t)`` (Esser et al. 2024, eq. 23).

    Keeps 0 and 1 fixed and is monotone; ``shift > 1`` moves every interior point
    towards 1 (more steps spent at high noise), ``shift < 1`` towards 0, ``1`` is identity.
    """
    number("shift", shift, low=0, low_open=True)
    return shift * t / (1 + (shift - 1) * t)


def timestep_schedule(
    steps: int, shift: float = 1.0, device: torch.device | str | None = None
) -> torch.Tensor:
    """Descending schedule of ``steps + 1`` times, exactly 1 first and exactly 0 last.

    Uniform in ``[1, 0]`` then SD3-shifted. Returns float64 on ``device``; samplers cast.
    """
    positive_int("steps", steps)
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device=device)  # (S+1,)
    t = shift_timesteps(t, shift)
    t[0], t[-1] = 1.0, 0.0  # exact ends (shift < 1 gives 1 - 2e-16 at t = 1 in float64)
    return t


def guided_velocity(
    velocity_fn: ContextVelocityFn,
    x: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    guidance: float = 1.0,
    perturb_scale: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """CFG by context perturbation: ``v = v(x, t, c') + guidance * (v(x, t, c) - v(x, t, c'))``.

    ``c' = c + eta * zeta`` with ``eta = perturb_scale``; a fresh ``zeta ~ N(0, I)`` is drawn
    from ``generator`` at each call. ``x``: (N, ...), ``t``: (N,), ``context``: (N, ...) (any
    shape the network takes). With ``guidance == 1`` or ``perturb_scale == 0`` the formula
    equals ``v(x, t, c)`` exactly, so that single call is made (no extra cost, bit-identical).
    """
    _check_guidance(guidance, perturb_scale, generator)
    v_cond = velocity_fn(x, t, context)
    if guidance == 1.0 or perturb_scale == 0.0:
        return v_cond
    assert generator is not None  # checked above
    zeta = randn(context.shape, generator, context.device, context.dtype)  # (N, ...) like context
    v_pert = velocity_fn(x, t, context + perturb_scale * zeta)
    return v_pert + guidance * (v_cond - v_pert)


def _check_guidance(
    guidance: float, perturb_scale: float, generator: torch.Generator | None
) -> None:
    number("perturb_scale", perturb_scale, low=0)
    if guidance != 1.0 and perturb_scale > 0 and generator is None:
        raise ValueError(
            f"guidance={guidance!r} with perturb_scale={perturb_scale!r} draws zeta ~ N(0, I) and "
            "needs a torch.Generator (samplers never use the global RNG): pass generator=..."
        )


def _resolve_velocity(
    velocity_fn: VelocityFn | ContextVelocityFn,
    context: torch.Tensor | None,
    guidance: float,
    perturb_scale: float,
    generator: torch.Generator | None,
) -> VelocityFn:
    """Turn the user's function into a plain ``(x, t) -> v`` one; bad arguments fail here."""
    if context is None:
        if guidance != 1.0:
            raise ValueError(
                f"guidance={guidance!r} needs context= (guidance perturbs the context); "
                "without a context only guidance=1.0 is meaningful"
            )
        return velocity_fn  # type: ignore[return-value]
    _check_guidance(guidance, perturb_scale, generator)
    return lambda x, t: guided_velocity(
        velocity_fn, x, t, context, guidance, perturb_scale, generator  # type: ignore[arg-type]
    )


def _integrate(
    fn: VelocityFn, noise: torch.Tensor, steps: int, shift: float, heun: bool,
    callback: StepCallback | None,
) -> torch.Tensor:
    """Shared loop; ``noise``: (N, ...) at ``t = 1``; returns the sample at ``t = 0``."""
    if noise.ndim < 1:
        raise ValueError(f"noise must have a batch axis (N, ...), got shape {tuple(noise.shape)}")
    # the schedule stays on the host as floats: no device sync in the loop. Velocity nets
    # get float32 timesteps under bf16/fp16 and float64 under float64.
    sched = timestep_schedule(steps, shift).tolist()  # S+1 floats, 1.0 ... 0.0
    n, t_dtype = noise.shape[0], torch.promote_types(noise.dtype, torch.float32)

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:  # (N, ...) -> (N, ...)
        v = fn(x, torch.full((n,), t, dtype=t_dtype, device=x.device))
        if v.shape != x.shape:
            raise ValueError(f"velocity_fn returned shape {tuple(v.shape)} for x {tuple(x.shape)}")
        return v

    x = noise
    for i in range(steps):
        t, t_next = sched[i], sched[i + 1]
        dt = t_next - t  # negative: we walk from noise to data
        v = velocity(x, t)
        x_euler = x + dt * v
        if heun and t_next > 0:  # trapezoid corrector; skipped on the last step to t = 0
            x = x + (0.5 * dt) * (v + velocity(x_euler, t_next))
        else:
            x = x_euler
        if callback is not None:
            callback(i, t_next, x)
    return x


def sample_euler(
    velocity_fn: VelocityFn | ContextVelocityFn,
    noise: torch.Tensor,
    steps: int,
    shift: float = 1.0,
    guidance: float = 1.0,
    *,
    context: torch.Tensor | None = None,
    perturb_scale: float = 0.0,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """First-order Euler from ``t = 1`` to ``t = 0``: ``steps`` network evaluations.

    ``noise``: (N, ...) pure noise. Without ``context``, ``velocity_fn(x, t)`` is called
    and ``guidance`` must be 1. With ``context`` (N, ...), ``velocity_fn(x, t, context)``
    is called and guidance is applied by ``guided_velocity``. ``generator`` feeds the
    context perturbation (the only randomness). Returns x0: (N, ...), like ``noise``.
    Gradients are not disabled here; wrap in ``torch.inference_mode()`` for inference.
    """
    fn = _resolve_velocity(velocity_fn, context, guidance, perturb_scale, generator)
    return _integrate(fn, noise, steps, shift, heun=False, callback=callback)


def sample_heun(
    velocity_fn: VelocityFn | ContextVelocityFn,
    noise: torch.Tensor,
    steps: int,
    shift: float = 1.0,
    guidance: float = 1.0,
    *,
    context: torch.Tensor | None = None,
    perturb_scale: float = 0.0,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Second-order Heun (Euler predictor + trapezoid corrector), ``2 * steps - 1`` evaluations.

    Same arguments and shapes as ``sample_euler``. The last step lands on ``t = 0`` with
    Euler only (as in EDM, Karras et al. 2022), since the field at ``t = 0`` is not needed.
    """
    fn = _resolve_velocity(velocity_fn, context, guidance, perturb_scale, generator)
    return _integrate(fn, noise, steps, shift, heun=True, callback=callback)


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"euler": sample_euler, "heun": sample_heun}
"""Samplers by name, for configs (``sampler: heun``)."""
