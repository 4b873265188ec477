"""Argument checks of the public attention functions.

Every failure is a ``ValueError`` that names the argument, the value it got and what
was expected, together with the shapes involved; numbers are checked by
:mod:`scd_msc.checks`.
"""

from __future__ import annotations

from torch import Tensor

from scd_msc import checks

LAYOUT = "(B, F, Hp, Wp, h, d)"


def _shapes(q: Tensor, k: Tensor, v: Tensor) -> str:
    return f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"


def check_qkv(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> None:
    """q, k, v are ``(B, F, Hp, Wp, h, d)``; k and v may hold more (earlier) frames than
    q when ``causal`` (the queries are the last ``Fq`` frames)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 6:
            raise ValueError(f"{name} must be 6-D {LAYOUT}, got {t.dim()}-D; {_shapes(q, k, v)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {_shapes(q, k, v)}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.device != k.device or q.device != v.device:
        raise ValueError(f"q, k, v must share a device, got {q.device}, {k.device}, {v.device}")
    qb, qf, qh, qw, qn, qd = q.shape
    kb, kf, kh, kw, kn, kd = k.shape
    if (qb, qh, qw, qn, qd) != (kb, kh, kw, kn, kd):
        raise ValueError(
            f"q and k must agree on B, Hp, Wp, h, d of {LAYOUT}; {_shapes(q, k, v)}")
    if causal and qf > kf:
        raise ValueError(f"q has more frames ({qf}) than k ({kf}); {_shapes(q, k, v)}")
    if not causal and qf != kf:
        raise ValueError(
            f"causal=False needs as many query as key frames, got {qf} and {kf}; {_shapes(q, k, v)}")
    if min(q.shape) < 1 or min(k.shape) < 1:
        raise ValueError(f"empty input; {_shapes(q, k, v)}")


def check_window(window: object, q: Tensor, k: Tensor, v: Tensor) -> None:
    """An odd window that fits the token grid (NATTEN's clamped windows need ``w <= Hp, Wp``)."""
    hp, wp = q.shape[2], q.shape[3]
    checks.integer("window", window, low=1, high=min(hp, wp), odd=True,
                   detail=f"token grid Hp×Wp={hp}×{wp}; {_shapes(q, k, v)}")


def shapes_of(q: Tensor, k: Tensor, v: Tensor) -> str:
    return _shapes(q, k, v)
