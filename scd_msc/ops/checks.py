"""Argument checks of the public attention functions.

Every failure is a ``ValueError`` that names the argument, the value it got and what
was expected, together with the shapes involved.
"""

from __future__ import annotations

from torch import Tensor

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


def check_positive(name: str, value: object, shapes: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        expected = "an int >= 1" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {expected}, got {value!r}; {shapes}")


def check_window(window: object, q: Tensor, k: Tensor, v: Tensor) -> None:
    shapes = _shapes(q, k, v)
    check_positive("window", window, shapes)
    assert isinstance(window, int)
    if window % 2 == 0:
        raise ValueError(f"window must be odd, got {window}; {shapes}")
    hp, wp = q.shape[2], q.shape[3]
    if window > min(hp, wp):
        raise ValueError(
            f"window={window} is larger than the token grid Hp×Wp={hp}×{wp}; {shapes}")


def shapes_of(q: Tensor, k: Tensor, v: Tensor) -> str:
    return _shapes(q, k, v)
