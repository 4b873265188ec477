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
from typing import TYPE_CHECKING, ClassVar, Optional, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from scd_msc import checks
from scd_msc.ops.attention import hires_attention, lowres_attention
from scd_msc.ops.embed import Rotary, deinterleave_pairs, rope3d, timestep_embedding
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
        # one projection per head group (rows (q|k|v, head, channel)): neither needs a slice
        self.qkv_hi = nn.Linear(cfg.dim, 3 * self.h_hi * self.head_dim) if self.h_hi else None
        self.qkv_lo = nn.Linear(cfg.dim, 3 * self.h_lo * self.head_dim) if self.h_lo else None
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
        return g.to(self.proj.weight.dtype)

    def project(self, x: Tensor) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """x ``(B, F, Hp, Wp, D)`` -> the hi-res heads' q, k, v ``(3, B, F, Hp, Wp, h_hi, d)``
        and the low-res heads' q, k, v pooled ``(3, B, F, Hp/r, Wp/r, h_lo, d)`` (None for
        a branch without heads). Average pooling and the projection are both linear and
        a cell's weights sum to 1, so the low-res heads project the pooled tokens: ``r²``
        times fewer rows in their share of the projection, and one pooling of x where
        pooled q, k and v took three."""
        split = "b f y x (n h d) -> n b f y x h d"
        hi = lo = None
        if self.h_hi:
            hi = rearrange(self.qkv_hi(x), split, n=3, h=self.h_hi)
        if self.h_lo:
            pooled = pool_tokens(x[..., None, :], self.spec.down)[..., 0, :]  # (B, F, Hp/r, Wp/r, D)
            lo = rearrange(self.qkv_lo(pooled), split, n=3, h=self.h_lo)
        return hi, lo

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001 - nn.Module's
        upgrade_qkv(state_dict, prefix, self.heads, self.head_dim, {"qkv_hi": (0, self.h_hi),
                                                                    "qkv_lo": (self.h_hi, self.heads)})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor, t: Optional[Tensor], positions: Union[Tensor, Rotary],
                cache: Optional["MSCCache"] = None, write: bool = False,
                gates: Optional[Tensor] = None) -> Tensor:
        """x ``(B, F, Hp, Wp, D)``, t ``(B, F)`` noise level per frame (or its ``gates
        (B, F, h)``, :meth:`gates`, made beforehand), positions: the absolute frame indices
        ``(F,)`` or a :class:`Rotary` (with its tables); with ``cache`` the F frames follow
        the cached ones (causal only), and ``write`` appends them to it. Returns
        ``(B, F, Hp, Wp, D)``."""
        b, f, hp, wp, _ = x.shape
        if cache is not None and not self.cfg.causal:
            raise ValueError("a cache needs a causal layer (cfg.causal=True)")
        s, outs, pos = self.spec, [], Rotary.of(positions)
        hi_qkv, lo_qkv = self.project(x)
        if self.h_hi:
            q, k, v = prepare_qkv(self, hi_qkv, pos.tables(self.head_dim, 1, (hp, wp)))
            if cache is not None:
                k, v = cache.hires.extend(k, v, write)
            outs.append(hires_attention(q, k, v, window=s.window, frames=s.frames,
                                        causal=self.cfg.causal, backend=self.cfg.backend))
        if self.h_lo:
            q, k, v = prepare_qkv(self, lo_qkv, pos.tables(self.head_dim, s.down, (hp, wp)))
            if cache is not None:
                k, v = cache.lowres.extend(k, v, write)
            o = lowres_attention(q, k, v, stride=s.stride, frames=s.strided_frames,
                                 causal=self.cfg.causal, backend=self.cfg.backend)
            outs.append(unpool_tokens(o, s.down, hp, wp, self.cfg.upsample))
        gates = self.gates(t) if gates is None else gates  # (B, F, h)
        o = torch.cat(outs, dim=-2) * gates[:, :, None, None, :, None]  # (B, F, Hp, Wp, h, d)
        return self.proj(rearrange(o, "b f y x h d -> b f y x (h d)"))


def prepare_qkv(layer: nn.Module, qkv: Tensor, tables: tuple[Tensor, Tensor]):
    """qkv ``(3, B, F, Hp', Wp', h, d)`` and the rotation tables cos, sin of its tokens
    (``(F, Hp', Wp', 1, d/2)``, :meth:`Rotary.tables`) -> q, k, v with q/k normalised by
    ``layer.q_norm``/``layer.k_norm`` and rotated."""
    q, k, v = qkv.unbind(0)
    return rope3d(layer.q_norm(q), *tables), rope3d(layer.k_norm(k), *tables), v


def upgrade_qkv(state_dict: dict, prefix: str, heads: int, head_dim: int,
                groups: dict[str, tuple[int, int]]) -> None:
    """In place: a checkpoint's single ``qkv`` projection (rows ``(q|k|v, head, channel)``,
    q/k channels ``(2i, 2i+1)`` rotating together: the layout before rotate-half RoPE)
    as the projections ``groups`` (name -> heads ``[a, b)``; empty groups skipped), with
    q/k rows and the q/k norms' weights in :func:`deinterleave_pairs` order. Scores,
    and so outputs, do not change. A state dict without ``qkv`` is left alone."""
    if prefix + "qkv.weight" not in state_dict:
        return
    perm = deinterleave_pairs(head_dim)
    for kind in ("weight", "bias"):
        old = state_dict.pop(f"{prefix}qkv.{kind}", None)
        if old is None:
            continue
        old = old.unflatten(0, (3, heads, head_dim))  # (3, h, d[, D])
        old = torch.cat([old[:2, :, perm], old[2:]])
        for name, (a, b) in groups.items():
            if b > a:
                state_dict[f"{prefix}{name}.{kind}"] = old[:, a:b].flatten(0, 2)
    for norm in ("q_norm", "k_norm"):
        key = f"{prefix}{norm}.weight"
        if key in state_dict:
            state_dict[key] = state_dict[key][perm]
