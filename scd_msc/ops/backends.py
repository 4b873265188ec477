"""Attention backends of the MSC op, chosen by name.

* ``reference`` — dense boolean mask + ``scaled_dot_product_attention``. Runs
  everywhere, has autograd; the specification the others are tested against.
* ``flex`` — FlexAttention with a ``BlockMask`` from :mod:`scd_msc.ops.masks`
  (compiled on CUDA; eager on CPU, where it is a slow forward-only check).
* ``natten`` — ``natten.functional.na3d`` (one causal query frame without gradients:
  ``na2d`` over its key frames, merged); native Hopper/CUTLASS kernels when NATTEN
  was built with its library (``libnatten``), else NATTEN's uncompiled flex fallback.
* ``auto`` — the first of natten, flex, reference that can run the call, including its
  backward when inputs require grad; its choice and each refusal's reason are logged
  at INFO, once per pattern, grid, device and grad mode.

Every backend computes softmax(q·kᵀ/√d + mask)·v over the layout of ``masks.py``.
Shapes: ``B`` batch · ``F`` frames · ``Hp, Wp`` grid · ``h`` heads · ``d`` head dim.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from scd_msc.checks import choice
from scd_msc.ops.masks import WindowSpec, dense_window_mask, window_mask_mod

log = logging.getLogger(__name__)

BACKENDS = ("reference", "flex", "natten")
AUTO_ORDER = ("natten", "flex", "reference")


class BackendUnavailableError(RuntimeError):
    """A backend named explicitly cannot run this call; the message says why and what
    to install or change."""


def needs_grad(*tensors: Tensor) -> bool:
    """True when autograd is on and one of ``tensors`` requires grad: the call then needs
    a backend with a backward pass."""
    return torch.is_grad_enabled() and any([t.requires_grad for t in tensors])


# --------------------------------------------------------------------------- reference

def reference_attention(q: Tensor, k: Tensor, v: Tensor, spec: WindowSpec) -> Tensor:
    """q ``(B, Fq, Hp, Wp, h, d)``, k/v ``(B, Fkv, Hp, Wp, h, d)`` -> like q."""
    b, fq, hp, wp, _, _ = q.shape
    mask = dense_window_mask(spec, fq, k.shape[1], hp, wp, device=q.device)  # (Fq·N, Fkv·N)
    qs, ks, vs = (rearrange(t, "b f y x h d -> b h (f y x) d") for t in (q, k, v))
    out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask)  # (B, h, Fq·N, d)
    return rearrange(out, "b h (f y x) d -> b f y x h d", f=fq, y=hp, x=wp)


# --------------------------------------------------------------------------- flex

def _has_flex() -> bool:
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


FLEX_RECOMPILE_LIMIT = 64


def with_recompile_limit(compiled: Callable[..., Tensor], limit: int) -> Callable[..., Tensor]:
    """``compiled`` (a ``torch.compile``'d function), called with dynamo's recompile limit
    raised to at least ``limit`` for the duration of each call and restored after it.

    Dynamo decides whether to recompile or to fall back to eager when a call misses its
    graph cache, i.e. during the call, reading ``torch._dynamo.config`` then; so a patch
    around the call is enough, and the process-wide setting stays the user's (library
    code does not assign it; an entry point that wants another limit may). Inside an
    outer ``torch.compile`` (compiled blocks) the call is traced into the outer graph and
    the outer budget applies, so nothing is patched there."""
    raise_limit = torch._dynamo.config.patch("recompile_limit", limit)  # made once: ~7 µs a call, not ~30

    @functools.wraps(compiled)
    def call(*args, **kwargs) -> Tensor:
        if torch.compiler.is_compiling() or limit <= torch._dynamo.config.recompile_limit:
            return compiled(*args, **kwargs)
        with raise_limit:
            return compiled(*args, **kwargs)

    return call


@functools.lru_cache(maxsize=1)
def _compiled_flex() -> Callable[..., Tensor]:
    """Compiled FlexAttention. Each mask, size, dtype and grad/autocast mode is its own
    graph; dynamo's default recompile limit (8) would otherwise drop to the unfused
    path (full score matrix) in the middle of training, so each call raises it."""
    from torch.nn.attention.flex_attention import flex_attention

    return with_recompile_limit(torch.compile(flex_attention, dynamic=False), FLEX_RECOMPILE_LIMIT)


# Kernel tiles (query, key) for the forward-only path: narrower key blocks skip more of
# a local window (hi-res 32×32×32 on an H100: 2.01 -> 1.27 ms, NATTEN 1.11 ms;
# benchmarks/flex_blocks_h100_2026-11-23.md). The backward kernel does not compile with
# them in torch 2.11, so calls that need gradients keep the default 128×128.
INFERENCE_BLOCKS = (128, 64)


@functools.lru_cache(maxsize=128)
def _block_mask(spec: WindowSpec, fq: int, fkv: int, hp: int, wp: int, device: str,
                blocks: tuple[int, int] = (128, 128)):
    """BlockMask for one pattern and size (pure; memoised because building costs ms)."""
    from torch.nn.attention.flex_attention import create_block_mask

    mask_mod = window_mask_mod(spec, fq, fkv, hp, wp)
    n = hp * wp
    return create_block_mask(mask_mod, None, None, fq * n, fkv * n, device=device,
                             BLOCK_SIZE=blocks, _compile=device.startswith("cuda"))


def flex_attention(q: Tensor, k: Tensor, v: Tensor, spec: WindowSpec) -> Tensor:
    """q ``(B, Fq, Hp, Wp, h, d)``, k/v ``(B, Fkv, Hp, Wp, h, d)`` -> like q."""
    from torch.nn.attention.flex_attention import flex_attention as eager_flex

    b, fq, hp, wp, _, _ = q.shape
    grad = needs_grad(q, k, v)
    blocks = INFERENCE_BLOCKS if q.is_cuda and not grad else (128, 128)
    block_mask = _block_mask(spec, fq, k.shape[1], hp, wp, str(q.device), blocks)
    qs, ks, vs = (rearrange(t, "b f y x h d -> b h (f y x) d") for t in (q, k, v))
    if q.is_cuda:
        opts = {"BLOCK_M": blocks[0], "BLOCK_N": blocks[1]} if blocks != (128, 128) else None
        out = _compiled_flex()(qs, ks, vs, block_mask=block_mask, kernel_options=opts)  # (B, h, Fq·N, d)
    else:  # eager: a slow forward-only check path; its "use torch.compile" advice is noise
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = eager_flex(qs, ks, vs, block_mask=block_mask)
    return rearrange(out, "b h (f y x) d -> b f y x h d", f=fq, y=hp, x=wp)


# --------------------------------------------------------------------------- natten

@torch.compiler.assume_constant_result  # a fact of the install: compiled code does not look it up
def _has_natten() -> bool:
    return importlib.util.find_spec("natten") is not None


@torch.compiler.assume_constant_result
def natten_has_library() -> bool:
    """True when NATTEN was built with its compiled kernels (``libnatten``)."""
    if not _has_natten():
        return False
    from natten import HAS_LIBNATTEN

    return bool(HAS_LIBNATTEN)


def _natten_plan(spec: WindowSpec, fq: int, fkv: int, hp: int, wp: int):
    """How to express ``spec`` with na3d: (kernel, dilation, frames after padding), or a
    reason string when NATTEN cannot express it (every window must be >= 2)."""
    (kt, ky, kx), (dt, dy, dx), (ct, cy, cx) = spec.kernel, spec.dilation, spec.causal
    if (dy, dx) != (1, 1) or cy or cx:
        return "spatial dilation or causality is not used by the MSC op"
    ky, kx = min(ky, hp), min(kx, wp)
    if ky < 2 or kx < 2:
        return f"NATTEN needs spatial windows >= 2, got {ky}×{kx} on a {hp}×{wp} grid"
    if not ct:
        if fq != fkv:
            return "non-causal streaming is not defined"
        if dt > 1 and kt * dt > fkv:
            return f"non-causal dilated window {kt}×{dt} exceeds {fkv} frames"
        kt = min(kt, fkv)
        if kt < 2:
            return f"NATTEN needs windows >= 2, got {kt} frame(s) along time"
        return (kt, ky, kx), (dt, 1, 1), fkv
    # causal: padding frames at the end never changes earlier outputs
    kt = min(kt, -(-fkv // dt))
    if kt == 1:  # only the frame itself: a dilation that reaches past the clip
        return (2, ky, kx), (fkv, 1, 1), 2 * fkv
    return (kt, ky, kx), (dt, 1, 1), max(fkv, kt * dt)


def natten_attention(q: Tensor, k: Tensor, v: Tensor, spec: WindowSpec) -> Tensor:
    """q ``(B, Fq, Hp, Wp, h, d)``, k/v ``(B, Fkv, Hp, Wp, h, d)`` -> like q."""
    import natten

    fq, fkv, hp, wp = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
    plan = _natten_plan(spec, fq, fkv, hp, wp)
    if isinstance(plan, str):
        raise BackendUnavailableError(f"natten cannot run this pattern: {plan}")
    grad = needs_grad(q, k, v)
    if fq == 1 and spec.causal[0] and not grad:
        return _natten_one_frame(q, k, v, spec)
    kernel, dilation, frames = plan
    q = F.pad(q, (0, 0, 0, 0, 0, 0, 0, 0, fkv - fq, frames - fkv))  # queries = last Fq frames
    k, v = (F.pad(t, (0, 0, 0, 0, 0, 0, 0, 0, 0, frames - fkv)) for t in (k, v))
    out = natten.functional.na3d(q, k, v, kernel_size=kernel, dilation=dilation,
                                 is_causal=(spec.causal[0], False, False))
    return out[:, fkv - fq:fkv]


def _natten_one_frame(q: Tensor, k: Tensor, v: Tensor, spec: WindowSpec) -> Tensor:
    """One causal query frame (a streamed frame, a ``prefix`` decoder step), forward only.
    In each key frame of its window the query sees the same ``ky × kx`` neighbourhood, so
    the ``m`` frames fold into the batch of one ``na2d`` call and the ``m`` outputs merge
    by their log-sum-exps (the softmax over all their keys). ``na3d`` would need the
    query padded back to every key frame: ``Fkv`` times the queries.

    q ``(B, 1, Hp, Wp, h, d)``, k/v ``(B, Fkv, Hp, Wp, h, d)`` -> like q."""
    import natten

    (kt, ky, kx), dt = spec.kernel, spec.dilation[0]
    last, hp, wp = k.shape[1] - 1, q.shape[2], q.shape[3]
    k, v = (t[:, last % dt::dt][:, -kt:] for t in (k, v))  # (B, m, Hp, Wp, h, d): the frames seen
    b, m = k.shape[:2]
    qs = q.expand(-1, m, -1, -1, -1, -1)
    out, lse = natten.functional.na2d(*(t.flatten(0, 1) for t in (qs, k, v)),
                                      kernel_size=(min(ky, hp), min(kx, wp)), return_lse=True)
    if m == 1:
        return out[:, None]
    weight = torch.softmax(lse.unflatten(0, (b, m)).float(), dim=1)[..., None]  # (B, m, Hp, Wp, h, 1)
    return (out.unflatten(0, (b, m)).float() * weight).sum(1, keepdim=True).to(q.dtype)


# --------------------------------------------------------------------------- selection

IMPLS: dict[str, Callable[[Tensor, Tensor, Tensor, WindowSpec], Tensor]] = {
    "reference": reference_attention,
    "flex": flex_attention,
    "natten": natten_attention,
}


def refusal(name: str, q: Tensor, k: Tensor, spec: WindowSpec, for_auto: bool) -> str | None:
    """Why backend ``name`` cannot (or, for ``auto``, should not) run this call; None if
    it can. ``for_auto`` adds the refusals of paths that run but are slow."""
    grad = needs_grad(q, k)
    if name == "reference":
        return None
    if name == "flex":
        if not _has_flex():
            return "torch.nn.attention.flex_attention is missing: install torch>=2.5"
        if not q.is_cuda and (grad or for_auto):
            return ("FlexAttention is compiled only on CUDA here; on CPU it runs an eager "
                    "forward-only check (use backend='reference' on CPU)")
        return None
    if name == "natten":
        if not _has_natten():
            return "natten is not installed: pip install --no-build-isolation natten"
        plan = _natten_plan(spec, q.shape[1], k.shape[1], q.shape[2], q.shape[3])
        if isinstance(plan, str):
            return plan
        if not natten_has_library():
            if grad:
                return ("NATTEN has no compiled library (libnatten), and its fallback has "
                        "no backward on CPU; build NATTEN with its library for training")
            if for_auto:
                return ("NATTEN has no compiled library (libnatten); its fallback is "
                        "uncompiled FlexAttention, slow")
        elif not q.is_cuda and for_auto:
            return "NATTEN's compiled kernels run on CUDA only"
        return None
    choice("backend", name, ("auto",) + BACKENDS)  # an unknown name fails here
    raise AssertionError("backend='auto' is resolved by resolve_backend, not refused")


def explain_backends(q: Tensor, k: Tensor, spec: WindowSpec) -> dict[str, str | None]:
    """For every backend, the reason ``auto`` would refuse it (None: usable)."""
    return {name: refusal(name, q, k, spec, for_auto=True) for name in AUTO_ORDER}


@functools.lru_cache(maxsize=1024)
def _announce(line: str) -> None:
    """Log ``line`` at INFO the first time it comes. ``auto`` resolves on every attention
    call (layers × steps); the line names the choice, the refusals, the pattern, the grid,
    the device and grad mode, so each is logged once. Frame counts are left out: a
    stream's key/value frames grow with every frame until its cache is full (without
    bound for an unbounded low-res window), and a refusal that depends on them says so.
    A bounded cache of immutable strings, not a registry: past 1024 distinct lines the
    oldest may be logged again. (Per-layer state would log one line per layer.)"""
    log.info("%s", line)


def resolve_backend(name: str, q: Tensor, k: Tensor, spec: WindowSpec) -> str:
    """The concrete backend for ``name``; explicit names never fall back. ``auto`` logs
    its choice and the reasons for its refusals once per pattern, grid, device and grad
    mode (at INFO, :func:`_announce`)."""
    if name == "auto":
        refused = []
        for candidate in AUTO_ORDER:
            reason = refusal(candidate, q, k, spec, for_auto=True)
            if reason is None:
                if not torch.compiler.is_compiling():  # logged by the eager call; no graph break
                    grad = needs_grad(q, k)
                    _announce(f"auto: using {candidate} for {spec} on a {q.shape[2]}×{q.shape[3]} grid "
                              f"({q.device.type}{', with grad' if grad else ''})"
                              + "".join(f"; refused {c}: {r}" for c, r in refused))
                return candidate
            refused.append((candidate, reason))
        raise AssertionError("reference never refuses")
    reason = refusal(name, q, k, spec, for_auto=False)
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} cannot run this call: {reason}")
    return name
