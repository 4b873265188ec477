"""The causal-DiT session: a KV cache of committed frames. Each new frame runs ``S``
full-depth passes that attend to the cache without writing it, then one pass at the
commit level ``t_c`` (0 by default) writes the finished frame's keys/values. With
conditions, frame ``i`` is conditioned on the action ``a_i`` that leads to it (DESIGN.md §7).

Shapes: ``B`` batch · ``F`` frames · ``C`` channels · ``H, W`` pixels.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from scd_msc.diffusion import Sampler
from scd_msc.streaming.fast import CompileArg
from scd_msc.streaming.session import Session


class DiTSession(Session):
    """Streams a :class:`~scd_msc.models.CausalDiT` (``__call__(x, t, cache, write, actions,
    labels)``, ``new_cache``); ``cond_guidance != 1``: guidance by the null action/label."""

    def __init__(self, model: nn.Module, batch_size: int, steps: int, sampler: Sampler,
                 generator: Optional[torch.Generator], cache: bool = True,
                 prompt: Optional[Tensor] = None, context_noise: float = 0.0,
                 prompt_actions: Optional[Tensor] = None, labels: Optional[Tensor] = None,
                 cond_guidance: float = 1.0, compile: CompileArg = None):
        super().__init__(model, batch_size, steps, sampler, generator, context_noise, labels, cond_guidance,
                         compile)
        self.cache = model.new_cache() if cache else None
        self.history: Optional[Tensor] = None  # (B, F, C, H, W) committed frames, for cache=False
        self.history_actions: Optional[Tensor] = None  # (B, F) the actions that led to them
        self.begin(prompt, prompt_actions)

    def velocity(self, x: Tensor, t: Tensor, *ids: Tensor) -> Tensor:
        """x ``(B', C, H, W)`` at level t ``(B',)`` with condition ids ``(B',)`` each
        (:meth:`Session.ids`) -> velocity of the new frame (reads only; ``B'`` may be a
        multiple of ``B`` when guidance batches the null rows)."""
        action, labels = self.unpack(ids)
        actions = None if action is None else action[:, None]  # (B', 1)
        t = t.to(x.dtype)[:, None]  # (B', 1)
        if self.cache is not None:  # once the cache is full its shapes are fixed: the fast path
            forward = self.fn("forward") if self.cache.full() else self.model
            return forward(x[:, None], t, self.cache, False, actions, labels)[:, 0]
        if self.history is None:
            return self.model(x[:, None], t, actions=actions, labels=labels)[:, 0]
        # guidance (B' = 2B) varies only the new frame's conditions, as a cache of the
        # committed frames must: each row sees the history with its real actions and labels
        reps, f = x.shape[0] // self.batch_size, self.history.shape[1]
        video = torch.cat([self.history.repeat(reps, 1, 1, 1, 1), x[:, None]], dim=1)  # (B', F+1, C, H, W)
        levels = torch.cat([self.t_commit.expand(-1, f).repeat(reps, 1), t], dim=1)  # (B', F+1)
        if actions is not None:
            actions = torch.cat([self.history_actions.repeat(reps, 1), actions], dim=1)  # (B', F+1)
        if labels is not None:  # per frame: the committed frames keep the clip's label
            labels = torch.cat([self.labels.repeat(reps)[:, None].expand(-1, f), labels[:, None]], dim=1)
        return self.model(video, levels, actions=actions, labels=labels)[:, -1]

    @torch.no_grad()
    def denoise(self, action: Optional[Tensor] = None) -> Tensor:
        full = self.cache is not None and self.cache.full()  # shapes fixed from here on
        velocity = self.guided(self.graphed("velocity", self.velocity, ready=full), action)
        return self.sampler.sample(velocity, self.prior(), self.steps)

    def write(self, frames: Tensor, t: Tensor, actions: Optional[Tensor]) -> None:
        """One pass at the frames' levels writes their keys/values (or keeps the frames)."""
        if self.cache is None:
            self.history = frames if self.history is None else torch.cat([self.history, frames], 1)
            if actions is not None:
                old = self.history_actions
                self.history_actions = actions if old is None else torch.cat([old, actions], 1)
            return
        self.model(frames, t, self.cache, True, actions, self.labels)

    def write_one(self, frame: Tensor, *action: Tensor) -> Tensor:
        """frame ``(B, C, H, W)``, already noised, and its action ``(B,)``: one pass at
        ``t_c`` writes its K/V."""
        actions = action[0][:, None] if action else None  # (B, 1)
        return self.fn("forward")(frame[:, None], self.t_commit, self.cache, True, actions, self.labels)
