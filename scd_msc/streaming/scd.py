"""The SCD session: the frame-wise decoder runs ``S`` steps on ``(c, noise)``; the finished
frame then goes through the causal encoder once, appending to every layer's cache, and
its encoding is the next frame's context ``c`` (Bai et al., arXiv 2602.10095).

Per frame, before its steps, one call makes the decoder's modulation (adaLN and gates,
:meth:`~scd_msc.models.decoder.FrameDecoder.modulation`) at every level the sampler will
step through (:meth:`~scd_msc.diffusion.Sampler.levels`); each step reads its rows instead of
running those small products itself (not for ``conditioning='adaln'``, whose adaLN reads the
context).

With conditions (DESIGN.md §7): the decoder that renders frame ``i`` from ``c_{i-1}`` is
conditioned on the action ``a_i`` that leads to it, and frame ``i`` goes through the
encoder with ``a_i`` too, so ``c_i`` summarises frames and actions ``<= i``.

Shapes: ``B`` batch · ``F`` frames · ``C`` channels · ``H, W`` pixels · ``N`` tokens per
frame · ``D`` width.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from scd_msc.diffusion import Sampler
from scd_msc.streaming.fast import CompileArg
from scd_msc.streaming.session import Session


class SCDSession(Session):
    """Streams an :class:`~scd_msc.models.SCDModel` (``start_context``, ``encode``,
    ``decode``, ``new_cache``). ``guidance != 1`` guides by perturbing the context;
    ``cond_guidance != 1`` by the null action/label (both compose)."""

    def __init__(self, model: nn.Module, batch_size: int, steps: int, sampler: Sampler,
                 generator: Optional[torch.Generator], cache: bool = True, guidance: float = 1.0,
                 prompt: Optional[Tensor] = None, context_noise: float = 0.0,
                 prompt_actions: Optional[Tensor] = None, labels: Optional[Tensor] = None,
                 cond_guidance: float = 1.0, compile: CompileArg = None):
        super().__init__(model, batch_size, steps, sampler, generator, context_noise, labels, cond_guidance,
                         compile)
        self.guidance = guidance
        self.cache = model.new_cache() if cache else None
        self.history: list[Tensor] = []  # committed (noised) frames so far, for cache=False
        self.history_actions: list[Tensor] = []  # and the actions that led to them
        self.context = model.start_context(batch_size).detach().to(self.dtype)  # (B, N, D), like every later one
        # decoder_context='prefix': the context frame's keys/values, once per frame
        self.prefix = model.new_decoder_cache() if model.cfg.decoder_context == "prefix" else None
        # the decoder's modulation at each of the S levels (None: conditioning='adaln'), once per frame
        t_dtype = torch.promote_types(self.dtype, torch.float32)  # the sampler's t
        self.levels = (None if model.cfg.conditioning == "adaln" else
                       torch.tensor(sampler.levels(steps), device=self.device, dtype=t_dtype))  # (S,)
        self.rows = batch_size * (1 if self.cond_guidance == 1.0 else 2)  # B': of each decoder call (call_ids)
        self.level_rows = None if self.levels is None else self.levels.repeat_interleave(self.rows)  # (S·B',)
        self.table: Optional[Tensor] = None  # (S, B', M), written in place
        self.begin(prompt, prompt_actions)

    def _decode(self, x: Tensor, t: Tensor, c: Tensor, *ids: Tensor) -> Tensor:
        """The decoder call, all tensors (graph-capturable): x ``(B', C, H, W)``, t ``(B',)``,
        c ``(B', N, D)``, ids ``(B',)`` each (:meth:`Session.ids`; in the table when there is one)."""
        if self.table is not None:
            return self.fn("decode")(x, t, c, None, None, self.table, self.levels)
        return self.fn("decode")(x, t, c, *self.unpack(ids))

    def _write_prefix(self, c: Tensor) -> Tensor:
        self.fn("decoder_prefix")(c, self.prefix)
        return c

    def _decode_step(self, x: Tensor, t: Tensor, *ids: Tensor) -> Tensor:
        """``prefix`` mode: one step over the noisy frame, reading the context's cache."""
        if self.table is not None:
            return self.fn("decode_step")(x, t, self.prefix, None, None, self.table, self.levels)
        return self.fn("decode_step")(x, t, self.prefix, *self.unpack(ids))

    def _modulation(self, t: Tensor, *ids: Tensor) -> Tensor:
        return self.fn("decoder_modulation")(t, *self.unpack(ids))

    def _write_table(self, action: Optional[Tensor]) -> None:
        """The decoder's modulation at every level of this frame's ``S`` steps, for the
        rows of its calls (:meth:`Session.call_ids`), in one call: the steps read their
        rows (its small products run once per frame instead of once per step)."""
        s = self.levels.shape[0]
        ids = (i.repeat(s) for i in self.call_ids(action))  # (S·B',) each: level-major, like level_rows
        table = self.graphed("modulation", self._modulation)(self.level_rows, *ids)
        table = table.unflatten(0, (s, self.rows))  # (S, B', M)
        if self.table is None:
            self.table = table
        else:  # in place: the step graphs read this memory
            self.table.copy_(table)

    @torch.no_grad()
    def denoise(self, action: Optional[Tensor] = None) -> Tensor:
        if self.levels is not None:
            self._write_table(action)
        if self.prefix is not None:  # the context once, then S steps over the noisy tokens only
            self.stateful("prefix", self._write_prefix, eager_calls=2)(self.context)
            step = self.guided(self.graphed("decode_step", self._decode_step), action)
            return self.sampler.sample(step, self.prior(), self.steps, generator=self.generator)
        decode = self.guided(self.graphed("decode", self._decode), action)  # fixed shapes: graphable at once
        return self.sampler.sample(decode, self.prior(), self.steps, guidance=self.guidance,
                                   context=self.context, generator=self.generator)

    def write(self, frames: Tensor, t: Tensor, actions: Optional[Tensor]) -> Tensor:
        """frames ``(B, F, C, H, W)`` at levels ``(B, F)``, made with ``actions`` ``(B, F)``
        -> the next context ``(B, N, D)``."""
        if self.cache is not None:
            return self.model.encode(frames, t, self.cache, actions, self.labels)[:, -1]
        self.history.extend(frames.unbind(1))
        if actions is not None:
            self.history_actions.extend(actions.unbind(1))
        video = torch.stack(self.history, dim=1)  # (B, F_all, C, H, W)
        past = torch.stack(self.history_actions, dim=1) if self.history_actions else None  # (B, F_all)
        return self.model.encode(video, self.t_commit.expand(-1, video.shape[1]), None, past, self.labels)[:, -1]

    def write_one(self, frame: Tensor, *action: Tensor) -> Tensor:
        """frame ``(B, C, H, W)``, already noised, and its action ``(B,)`` -> next context
        ``(B, N, D)``, through the cache."""
        actions = action[0][:, None] if action else None  # (B, 1)
        return self.fn("encode")(frame[:, None], self.t_commit, self.cache, actions, self.labels)[:, -1]

    def written(self, out: Optional[Tensor]) -> None:
        self.context = out
