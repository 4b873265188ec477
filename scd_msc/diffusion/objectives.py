"""Training objectives: where a model, the noise process and a clip meet in one call.

* :func:`scd_loss` — SCD (Bai et al., arXiv 2602.10095): the causal encoder runs once
  over the (context-noised) clip, the context of frame ``i`` is the encoding of frames
  ``< i``, and the frame-wise decoder denoises every frame, folded into the batch, with
  ``K = decoder_multi_batch`` independent noise draws per encoder pass.
* :func:`diffusion_forcing_loss` — the causal DiT (Chen et al. 2024): every frame noised
  to its own level, one frame-causal pass.

The model supplies pure calls only (``contexts``/``decode`` for SCD, ``__call__`` for
the DiT) and names its objective in ``model.objective``; no parameters live here.
Conditions (DESIGN.md §7): ``actions (B, F)`` — ``actions[:, i]`` leads to frame ``i``:
it conditions frame ``i``'s encoder tokens and the decoder that renders frame ``i`` —
and ``labels (B,)``; :func:`null_dropout` replaces ids by the null id for guidance.

Shapes: ``B`` batch · ``F`` frames · ``C, H, W`` a frame · ``N`` tokens · ``D`` width ·
``K`` noise draws per encoder pass.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from scd_msc.diffusion._random import rand, randn
from scd_msc.diffusion.flow import FlowConfig, FlowMatching

Objective = Callable[..., dict[str, Tensor]]


def scd_loss(model: nn.Module, video: Tensor, flow: FlowMatching, generator: Optional[torch.Generator] = None,
             actions: Optional[Tensor] = None, labels: Optional[Tensor] = None) -> dict[str, Tensor]:
    """video ``(B, F, C, H, W)`` in [-1, 1], actions ``(B, F)``, labels ``(B,)`` -> ``{"loss": scalar}``."""
    b, f = video.shape[:2]
    x_ctx, t_ctx = flow.context_noise(video, generator)  # (B, F, C, H, W), (B, F)
    c = model.contexts(x_ctx, t_ctx, actions, labels).flatten(0, 1)  # (B·F, N, D): frame i from frames < i
    x0 = video.flatten(0, 1)  # (B·F, C, H, W)
    a = None if actions is None else actions.flatten(0, 1)  # (B·F,): the action that leads to each frame
    y = None if labels is None else labels.repeat_interleave(f)  # (B·F,)
    c, x0, a, y = (None if z is None else flow.expand_multi_batch(z) for z in (c, x0, a, y))  # (K·B·F, ...)
    t = flow.sample_timesteps((x0.shape[0],), generator, x0.device)  # (K·B·F,)
    eps = randn(x0.shape, generator, x0.device, x0.dtype)
    pred = model.decode(flow.add_noise(x0, t, eps), t.to(x0.dtype), c, a, y)
    return {"loss": flow.loss(pred, flow.velocity_target(x0, eps))}


def diffusion_forcing_loss(model: nn.Module, video: Tensor, flow: FlowMatching,
                           generator: Optional[torch.Generator] = None, actions: Optional[Tensor] = None,
                           labels: Optional[Tensor] = None) -> dict[str, Tensor]:
    """video ``(B, F, C, H, W)`` in [-1, 1] -> ``{"loss": scalar}``: one pass, per-frame levels."""
    x_t, t, target = flow.training_inputs(video, generator)  # t: (B, F)
    return {"loss": flow.loss(model(x_t, t.to(video.dtype), actions=actions, labels=labels), target)}


OBJECTIVES: dict[str, Objective] = {"scd": scd_loss, "diffusion_forcing": diffusion_forcing_loss}


def training_loss(model: nn.Module, video: Tensor, flow: FlowMatching | FlowConfig | None = None,
                  generator: Optional[torch.Generator] = None, actions: Optional[Tensor] = None,
                  labels: Optional[Tensor] = None) -> dict[str, Tensor]:
    """The loss of ``model.objective`` (a key of :data:`OBJECTIVES`) on ``video``."""
    if not isinstance(flow, FlowMatching):
        flow = FlowMatching(flow)
    return OBJECTIVES[model.objective](model, video, flow, generator, actions, labels)


def null_dropout(ids: Optional[Tensor], null_id: int, p: float,
                 generator: Optional[torch.Generator] = None) -> Optional[Tensor]:
    """Each id replaced by ``null_id`` with probability ``p`` (what classifier-free
    guidance is trained with); ``None`` and ``p = 0`` pass through and draw nothing."""
    if ids is None or p == 0.0:
        return ids
    drop = rand(ids.shape, generator, ids.device) < p  # same shape as ids
    return torch.where(drop, torch.full_like(ids, null_id), ids)
