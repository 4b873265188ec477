"""MSC multi-scale causal attention layer (Xu & Cao, arXiv 2412.09828).

Heads split into ``h_hi`` High-Res heads (full grid, local ``w × w`` window, last ``v``
frames) and ``h_lo`` Low-Res heads (``r × r`` average-pooled tokens, global space,
every ``s``-th past frame, at most ``k``). A per-frame noise-level embedding gates the
two branches (noise erases fine detail first); both gates start at 1.

Shapes: ``B`` batch · ``F`` frames · ``Hp, Wp`` token grid · ``N = Hp·Wp`` · ``D``
width · ``h`` heads · ``d`` head dim · ``r`` low-res down factor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from scd_msc import checks
from scd_msc.ops.attention import hires_attention, lowres_attention
from scd_msc.ops.embed import rope3d, timestep_embedding
from scd_msc.ops.schedule import MSCLayerSpec

if TYPE_CHECKING:  # streaming builds the caches; the layer only reads and writes them
    from scd_msc.streaming.cache import MSCCache

GATINGS = ("branch", "head", "off")
UPSAMPLES = ("nearest", "bilinear")


@dataclass(kw_only=True)
class AttentionConfig:
    """What every MSC layer of a model shares (``ModelConfig.attention``); per-layer
    numbers come from an :class:`MSCLayerSpec`. Keyword-only, so that a layer's config
    below takes ``dim, heads`` first. Errors name the fields by their config path
    (``_PREFIX``); ``hires_heads`` is checked against the heads by :meth:`validate`."""

    _PREFIX: ClassVar[str] = "model.attention."

    hires_heads: Optional[int] = None  # None: heads // 2
    gating: str = "branch"  # "branch" | "head" | "off"
    upsample: str = "nearest"  # "nearest" | "bilinear"
    gate_embed_dim: int = 32

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, heads: Optional[int] = None) -> None:
        """Check every field; with ``heads``, also ``hires_heads <= heads``."""
        p = self._PREFIX
        checks.integer(f"{p}hires_heads", self.hires_heads, low=0, high=heads, allow=(None,),
                       detail="" if heads is None else f"the layers have {heads} heads")
        checks.choice(f"{p}gating", self.gating, GATINGS)
        checks.choice(f"{p}upsample", self.upsample, UPSAMPLES)

    def hires_count(self, heads: int) -> int:
        """How many of a layer's ``heads`` are hi-res (the rest are low-res)."""
        return heads // 2 if self.hires_heads is None else self.hires_heads


@dataclass
class MSCAttentionConfig(AttentionConfig):
    """One layer: the shared settings plus width, heads, causality and the backend.
    Built in code (``models/layers.py``, the benchmarks), so errors name the arguments."""

    _PREFIX: ClassVar[str] = ""

    dim: int = 256
    heads: int = 4
    causal: bool = True
    backend: str = "auto"

    def validate(self) -> None:  # type: ignore[override]
        checks.positive_int("heads", self.heads)
        if self.dim % self.heads:
            raise checks.error("dim", self.dim, f"a multiple of heads={self.heads}")
        super().validate(self.heads)


def pool_tokens(x: Tensor, r: int) -> Tensor:
    """``(B, F, Hp, Wp, h, d) -> (B, F, ⌈Hp/r⌉, ⌈Wp/r⌉, h, d)``; edge cells average the
    tokens they cover."""
    if r == 1:
        return x
    b, f, _, _, h, _ = x.shape
    y = rearrange(x, "b f y x h d -> (b f) (h d) y x")
    y = F.avg_pool2d(y, r, ceil_mode=True)  # ((B F), h·d, Hp/r, Wp/r)
    return rearrange(y, "(b f) (h d) y x -> b f y x h d", b=b, h=h)


def unpool_tokens(x: Tensor, r: int, hp: int, wp: int, mode: str) -> Tensor:
    """``(B, F, Hp/r, Wp/r, h, d) -> (B, F, Hp, Wp, h, d)``."""
    if r == 1:
        return x
    if mode == "nearest":  # every fine token takes its own cell's value
        return x.repeat_interleave(r, dim=2)[:, :, :hp].repeat_interleave(r, dim=3)[:, :, :, :wp]
    b, f, _, _, h, _ = x.shape
    y = rearrange(x, "b f y x h d -> (b f) (h d) y x")
    y = F.interpolate(y.float(), size=(hp, wp), mode="bilinear", align_corners=False)
    return rearrange(y.to(x.dtype), "(b f) (h d) y x -> b f y x h d", b=b, h=h)


class MSCAttention(nn.Module):
    """qkv (the low-res heads' share from pooled tokens, :meth:`project`) → (hi-res ‖
    low-res) attention → per-frame gates → output projection."""

    def __init__(self, cfg: MSCAttentionConfig, spec: MSCLayerSpec):
        super().__init__()
        cfg.validate()
        self.cfg, self.spec = cfg, spec
        self.heads, self.head_dim = cfg.heads, cfg.dim // cfg.heads
        self.h_hi = cfg.hires_count(cfg.heads)
        self.h_lo = cfg.heads - self.h_hi
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.q_norm = nn.RMSNorm(self.head_dim)
        self.k_norm = nn.RMSNorm(self.head_dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        n_gates = {"branch": 2, "head": cfg.heads, "off": 0}[cfg.gating]
        if n_gates:
            self.gate_mlp = nn.Sequential(nn.Linear(cfg.gate_embed_dim, cfg.gate_embed_dim),
                                          nn.SiLU(), nn.Linear(cfg.gate_embed_dim, n_gates))
            nn.init.zeros_(self.gate_mlp[-1].weight)  # 2·sigmoid(0) = 1: gates start at 1
            nn.init.zeros_(self.gate_mlp[-1].bias)

    def gates(self, t: Tensor) -> Tensor:
        """t ``(B, F)`` -> per-head gates ``(B, F, h)`` (ones when gating is off)."""
        if self.cfg.gating == "off":
            return t.new_ones(*t.shape, self.heads)
        emb = timestep_embedding(t, self.cfg.gate_embed_dim).to(self.gate_mlp[0].weight.dtype)
        g = 2 * torch.sigmoid(self.gate_mlp(emb))  # (B, F, gates)
        if self.cfg.gating == "branch":  # (B, F, 2) -> (B, F, h)
            g = torch.cat([g[..., :1].expand(*t.shape, self.h_hi),
                           g[..., 1:].expand(*t.shape, self.h_lo)], dim=-1)
        return g.to(self.qkv.weight.dtype)

    def project(self, x: Tensor) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """x ``(B, F, Hp, Wp, D)`` -> the hi-res heads' q, k, v ``(3, B, F, Hp, Wp, h_hi, d)``
        and the low-res heads' q, k, v pooled ``(3, B, F, Hp/r, Wp/r, h_lo, d)`` (None for
        a branch without heads). Average pooling and the projection are both linear and
        a cell's weights sum to 1, so the low-res heads project the pooled tokens: ``r²``
        times fewer rows in their share of the projection, and one pooling of x where
        pooled q, k and v took three."""
        r, h, d, hi = self.spec.down, self.heads, self.head_dim, self.h_hi
        split = "b f y x (n h d) -> n b f y x h d"
        if r == 1 or not hi or not self.h_lo:  # one projection serves both branches
            qkv = rearrange(self.qkv(x), split, n=3, h=h)
            lo = qkv[..., hi:, :]
            if self.h_lo and r > 1:
                lo = torch.stack([pool_tokens(t, r) for t in lo.unbind(0)])
            return (qkv[..., :hi, :] if hi else None), (lo if self.h_lo else None)
        w = self.qkv.weight.unflatten(0, (3, h, d))  # (3, h, d, D)
        b = self.qkv.bias.unflatten(0, (3, h, d))  # (3, h, d)
        hi_qkv = F.linear(x, w[:, :hi].flatten(0, 2), b[:, :hi].flatten())
        pooled = pool_tokens(x[..., None, :], r)[..., 0, :]  # (B, F, Hp/r, Wp/r, D)
        lo_qkv = F.linear(pooled, w[:, hi:].flatten(0, 2), b[:, hi:].flatten())
        return rearrange(hi_qkv, split, n=3, h=hi), rearrange(lo_qkv, split, n=3, h=self.h_lo)

    def forward(self, x: Tensor, t: Tensor, frame_index: Tensor,
                cache: Optional["MSCCache"] = None, write: bool = False) -> Tensor:
        """x ``(B, F, Hp, Wp, D)``, t ``(B, F)`` noise level per frame, frame_index
        ``(F,)`` absolute frame positions; with ``cache`` the F frames follow the cached
        ones (causal only), and ``write`` appends them to it. Returns ``(B, F, Hp, Wp, D)``."""
        b, f, hp, wp, _ = x.shape
        if cache is not None and not self.cfg.causal:
            raise ValueError("a cache needs a causal layer (cfg.causal=True)")
        s, outs = self.spec, []
        hi_qkv, lo_qkv = self.project(x)
        if self.h_hi:
            q, k, v = prepare_qkv(self, hi_qkv, frame_index)
            if cache is not None:
                k, v = cache.hires.extend(k, v, write)
            outs.append(hires_attention(q, k, v, window=s.window, frames=s.frames,
                                        causal=self.cfg.causal, backend=self.cfg.backend))
        if self.h_lo:
            q, k, v = prepare_qkv(self, lo_qkv, frame_index, s.down, grid=(hp, wp))
            if cache is not None:
                k, v = cache.lowres.extend(k, v, write)
            o = lowres_attention(q, k, v, stride=s.stride, frames=s.strided_frames,
                                 causal=self.cfg.causal, backend=self.cfg.backend)
            outs.append(unpool_tokens(o, s.down, hp, wp, self.cfg.upsample))
        o = torch.cat(outs, dim=-2) * self.gates(t)[:, :, None, None, :, None]  # (B, F, Hp, Wp, h, d)
        return self.proj(rearrange(o, "b f y x h d -> b f y x (h d)"))


def pool_positions(pos: Tensor, r: int) -> Tensor:
    """Grid positions ``(L,) -> (⌈L/r⌉,)``: each pooled cell at the mean of its tokens."""
    if r == 1:
        return pos
    return F.avg_pool1d(pos[None, None], r, ceil_mode=True)[0, 0]


def prepare_qkv(layer: nn.Module, qkv: Tensor, frame_index: Tensor, r: int = 1,
                grid: Optional[tuple[int, int]] = None):
    """qkv ``(3, B, F, Hp/r, Wp/r, h, d)``, pooled ``r × r`` from the grid ``(Hp, Wp)``
    (:meth:`MSCAttention.project`; ``grid`` is needed when ``r > 1``) -> q, k, v with q/k
    normalised by ``layer.q_norm``/``layer.k_norm`` and rotated by (frame, y, x)
    positions, pooled cells at the centres of the tokens they cover."""
    if r > 1 and grid is None:
        raise ValueError(f"prepare_qkv: r={r} needs the grid the tokens were pooled from (grid=(Hp, Wp))")
    hp, wp = (qkv.shape[3], qkv.shape[4]) if grid is None else grid
    q, k, v = qkv.unbind(0)
    py = pool_positions(torch.arange(hp, device=qkv.device, dtype=torch.float32), r)
    px = pool_positions(torch.arange(wp, device=qkv.device, dtype=torch.float32), r)
    q = rope3d(layer.q_norm(q), frame_index, py, px)
    k = rope3d(layer.k_norm(k), frame_index, py, px)
    return q, k, v
