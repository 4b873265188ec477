"""Causal DiT baseline: ``enc_depth + dec_depth`` dense frame-causal blocks.

Trained diffusion-forcing style (an independent noise level per frame; Chen et al.
2024). Inference keeps a KV cache of *clean* past frames: each new frame runs ``S``
full-depth passes that attend to the cache without writing it, then one pass at
``t = 0`` writes its clean keys/values (with ``context_noise = t_c > 0``: the frame
noised to ``t_c``, in one pass at ``t_c``). ``dense_window_frames`` bounds the frames
attended (and cached); None attends all.

Shapes: ``B`` batch · ``F`` frames · ``C`` channels · ``H, W`` pixels · ``D`` width.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from scd_msc.diffusion import FlowMatching
from scd_msc.models.config import ModelConfig
from scd_msc.models.encoder import attention_config
from scd_msc.models.layers import Block, Patchify, TimestepEmbedder, Unpatchify, run_blocks
from scd_msc.models.streaming import Generates, StreamSession, check_generation_args
from scd_msc.ops.cache import StackCache
from scd_msc.ops.dense import DenseAttention


class CausalDiT(Generates, nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.flow = FlowMatching(cfg.flow)
        self.patchify = Patchify(cfg.channels, cfg.patch, cfg.dim)
        self.t_embed = TimestepEmbedder(cfg.dim)
        attn = attention_config(cfg, causal=True)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, DenseAttention(attn, cfg.dense_window_frames), cfg.mlp_ratio)
            for _ in range(cfg.enc_depth + cfg.dec_depth))
        self.final = Unpatchify(cfg.channels, cfg.patch, cfg.dim)

    def new_cache(self) -> StackCache:
        return StackCache(layers=[b.attn.new_cache() for b in self.blocks])

    def forward(self, x: Tensor, t: Tensor, cache: Optional[StackCache] = None) -> Tensor:
        """x ``(B, F, C, H, W)`` noisy frames at levels t ``(B, F)`` -> velocity, like x.
        With ``cache`` the frames follow the cached ones; the cache is written only when
        its ``commit`` flag is set."""
        h = self.patchify(x)  # (B, F, Hp, Wp, D)
        cond = self.t_embed(t)  # (B, F, D)
        h = run_blocks(self.blocks, h, t, cond, cache)
        return self.final(h, cond)

    def training_loss(self, video: Tensor, generator: Optional[torch.Generator] = None) -> dict[str, Tensor]:
        """Diffusion forcing: every frame noised to its own level, one pass."""
        x_t, t, target = self.flow.training_inputs(video, generator)  # t: (B, F)
        return {"loss": self.flow.loss(self(x_t, t.to(video.dtype)), target)}

    def stream(self, batch_size: int, steps: int, prompt: Optional[Tensor] = None,
               generator: Optional[torch.Generator] = None, cache: bool = True,
               guidance: float = 1.0, context_noise: float = 0.0) -> "DiTSession":
        check_generation_args(self, batch_size, steps, prompt, context_noise=context_noise)
        if guidance != 1.0:
            raise ValueError(f"guidance={guidance} needs a context to perturb; CausalDiT has none "
                             "(use guidance=1.0)")
        return DiTSession(self, batch_size, steps, generator, cache, guidance, prompt, context_noise)


class DiTSession(StreamSession):
    def __init__(self, model: CausalDiT, batch_size: int, steps: int,
                 generator: Optional[torch.Generator], cache: bool, guidance: float,
                 prompt: Optional[Tensor], context_noise: float = 0.0):
        super().__init__(model, batch_size, steps, generator, cache, guidance, context_noise)
        self.kv = model.new_cache() if cache else None
        self.history: Optional[Tensor] = None  # (B, F, C, H, W) committed frames, for cache=False
        self.velocity_graph = self.write_graph = None
        if prompt is not None:
            self._write(prompt.to(self.device, self.dtype))

    @torch.no_grad()
    def _write(self, frames: Tensor) -> None:
        """Append clean frames ``(B, F, C, H, W)``: one pass at ``t = t_c`` (0 by default)
        writes the K/V of the frames noised to ``t_c``."""
        frames, t = self.noised(frames)  # (B, F, C, H, W), (B, F)
        if self.kv is None:
            self.history = frames if self.history is None else torch.cat([self.history, frames], 1)
            return
        self.kv.set_commit(True)
        self.model(frames, t, self.kv)

    def _velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """x ``(B, C, H, W)`` at level t ``(B,)`` -> velocity of the new frame."""
        t = t.to(x.dtype)[:, None]  # (B, 1)
        if self.kv is not None:
            self.kv.set_commit(False)
            return self.model(x[:, None], t, self.kv)[:, 0]
        if self.history is None:
            return self.model(x[:, None], t)[:, 0]
        video = torch.cat([self.history, x[:, None]], dim=1)  # (B, F+1, C, H, W)
        levels = torch.cat([self.t_commit.expand(-1, self.history.shape[1]), t], dim=1)
        return self.model(video, levels)[:, -1]

    @torch.no_grad()
    def denoise(self) -> Tensor:
        m = self.model
        fn = self._velocity
        if self.graphs and self.kv is not None and self.kv.full():  # passes only read the cache
            if self.velocity_graph is None:
                from scd_msc.models.graphs import GraphedCall

                self.velocity_graph = GraphedCall(self._velocity)
            fn = self.velocity_graph
        return m.flow.sample(fn, self.noise(), self.steps, sampler=m.cfg.sampler)

    def _write_step(self, frame: Tensor) -> Tensor:
        """frame ``(B, C, H, W)``, already noised: one pass at ``t_c`` writes its K/V."""
        self.kv.set_commit(True)
        return self.model(frame[:, None], self.t_commit, self.kv)

    @torch.no_grad()
    def commit(self, frame: Tensor) -> None:
        """One pass at ``t = t_c`` writes the (noised) frame's keys/values."""
        self.write_graph = self.graph_stateful(self.kv, self.write_graph, self._write_step)
        if self.write_graph is not None:
            self.kv.set_commit(True)
            self.write_graph(self.noised(frame[:, None])[0][:, 0])
        else:
            self._write(frame[:, None])
        self.frames_done += 1

    def cache_bytes(self) -> int:
        return 0 if self.kv is None else self.kv.nbytes()
