"""Functional API of the two MSC branches (Xu & Cao, arXiv 2412.09828).

Shapes: ``B`` batch · ``F`` frames · ``Hp, Wp`` token grid (pooled for the low-res
branch) · ``h`` heads · ``d`` head dim. All tensors are ``(B, F, Hp, Wp, h, d)``;
``k``/``v`` may hold more frames than ``q`` when causal: the queries are then the last
``Fq`` of the ``Fkv`` frames (streaming with a cache of earlier frames).
"""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from scd_msc.checks import positive_int
from scd_msc.ops import checks
from scd_msc.ops.backends import IMPLS, resolve_backend
from scd_msc.ops.masks import WindowSpec, covers_all, hires_spec, lowres_spec


def window_attention(q: Tensor, k: Tensor, v: Tensor, spec: WindowSpec,
                     backend: str = "auto") -> Tensor:
    """Attention under any :class:`WindowSpec` (arguments already checked). When the
    pattern covers every key, ``auto`` and ``reference`` run unmasked SDPA."""
    if backend in ("auto", "reference") and covers_all(spec, q.shape[1], k.shape[1], q.shape[2], q.shape[3]):
        qs, ks, vs = (rearrange(t, "b f y x h d -> b h (f y x) d") for t in (q, k, v))
        out = F.scaled_dot_product_attention(qs, ks, vs)  # (B, h, Fq·N, d)
        return rearrange(out, "b h (f y x) d -> b f y x h d", f=q.shape[1], y=q.shape[2])
    name = resolve_backend(backend, q, k, spec)
    return IMPLS[name](q, k, v, spec)


def hires_attention(q: Tensor, k: Tensor, v: Tensor, *, window: int, frames: int,
                    causal: bool = True, backend: str = "auto") -> Tensor:
    """High-Res branch: query ``(f, y, x)`` sees key ``(f', y', x')`` when
    ``f - frames < f' <= f`` (causal; a clamped window of ``frames`` otherwise) and
    ``(y', x')`` is in the ``window × window`` neighbourhood of ``(y, x)``, clamped to
    the grid (NATTEN semantics).

    q ``(B, Fq, Hp, Wp, h, d)``, k/v ``(B, Fkv, Hp, Wp, h, d)`` -> ``(B, Fq, Hp, Wp, h, d)``.
    """
    checks.check_qkv(q, k, v, causal)
    checks.check_window(window, q, k, v)
    positive_int("frames", frames, detail=checks.shapes_of(q, k, v))
    return window_attention(q, k, v, hires_spec(window, frames, causal), backend)


def lowres_attention(q: Tensor, k: Tensor, v: Tensor, *, stride: int,
                     frames: int | None = None, causal: bool = True,
                     backend: str = "auto") -> Tensor:
    """Low-Res branch on pooled tokens: query frame ``f`` sees every position of key
    frame ``f'`` when ``f' <= f``, ``(f - f') mod stride == 0`` and ``f - f' <
    stride·frames`` (``frames=None``: unbounded). Non-causal: a clamped window of
    ``frames`` strided frames.

    q ``(B, Fq, Hp, Wp, h, d)``, k/v ``(B, Fkv, Hp, Wp, h, d)`` -> ``(B, Fq, Hp, Wp, h, d)``.
    """
    checks.check_qkv(q, k, v, causal)
    shapes = checks.shapes_of(q, k, v)
    positive_int("stride", stride, detail=shapes)
    positive_int("frames", frames, allow_none=True, detail=shapes)
    spec = lowres_spec((q.shape[2], q.shape[3]), stride, frames, k.shape[1], causal)
    return window_attention(q, k, v, spec, backend)
