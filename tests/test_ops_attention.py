"""MSC branches: the reference against a loop-by-loop reading of DESIGN.md §1, exact
mask pair counts against the dense masks, every backend against the reference,
causality, and argument errors."""

import itertools
import math

import pytest
import torch

from scd_msc.ops import (
    BackendUnavailableError,
    dense_window_mask,
    explain_backends,
    hires_attention,
    hires_spec,
    lowres_attention,
    lowres_spec,
    resolve_backend,
)
from scd_msc.ops.backends import natten_has_library
from scd_msc.ops.masks import WindowSpec, dense_spec, frame_causal_mask_mod, frame_causal_pairs, window_pairs

# ----------------------------------------------------------------- independent rules


def natten_window(i: int, length: int, k: int) -> range:
    """Non-causal clamped window of k positions around i (written out, no dilation)."""
    k = min(k, length)
    start = min(max(i - k // 2, 0), length - k)
    return range(start, start + k)


def hires_allowed(f, y, x, f2, y2, x2, F, H, W, window, frames, causal):
    if causal:
        in_time = f - frames < f2 <= f
    else:
        in_time = f2 in natten_window(f, F, frames)
    return in_time and y2 in natten_window(y, H, window) and x2 in natten_window(x, W, window)


def lowres_allowed(f, f2, F, stride, frames, causal):
    if (f - f2) % stride:
        return False
    if causal:
        return f2 <= f and (frames is None or f - f2 < stride * frames)
    members = list(range(f % stride, F, stride))  # the frames of f's stride group
    k = len(members) if frames is None else frames
    return members.index(f2) in natten_window(members.index(f), len(members), k)


def loop_attention(q, k, v, allowed):
    """softmax attention one query at a time over the keys ``allowed(qpos, kpos)``."""
    B, F, H, W, h, d = q.shape
    Fk = k.shape[1]
    out = torch.zeros_like(q)
    for f, y, x in itertools.product(range(F), range(H), range(W)):
        keys = [(f2, y2, x2) for f2, y2, x2 in itertools.product(range(Fk), range(H), range(W))
                if allowed((f + Fk - F, y, x), (f2, y2, x2))]
        kk = torch.stack([k[:, a, b, c] for a, b, c in keys], dim=1)  # (B, n, h, d)
        vv = torch.stack([v[:, a, b, c] for a, b, c in keys], dim=1)
        s = torch.einsum("bhd,bnhd->bhn", q[:, f, y, x], kk) / math.sqrt(d)
        out[:, f, y, x] = torch.einsum("bhn,bnhd->bhd", s.softmax(-1), vv)
    return out


def rand_qkv(shape, kv_frames=None, dtype=torch.float64, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    kshape = (shape[0], kv_frames or shape[1], *shape[2:])
    q = torch.randn(shape, generator=g, dtype=dtype)
    k, v = (torch.randn(kshape, generator=g, dtype=dtype) for _ in range(2))
    return [t.requires_grad_(grad) for t in (q, k, v)]


# ----------------------------------------------------------------- reference == rules

@pytest.mark.parametrize("window,frames,causal", [(3, 2, True), (5, 3, True), (3, 2, False), (5, 4, False)])
def test_hires_mask_matches_rules(window, frames, causal):
    F, H, W = 5, 7, 9
    mask = dense_window_mask(hires_spec(window, frames, causal), F, F, H, W)
    pos = list(itertools.product(range(F), range(H), range(W)))
    expect = torch.tensor([[hires_allowed(*a, *b, F, H, W, window, frames, causal) for b in pos] for a in pos])
    assert torch.equal(mask, expect)
    if causal:  # every query of a frame with >= frames history sees exactly w·w·v keys
        assert int(mask[-1].sum()) == window * window * frames


@pytest.mark.parametrize("stride,frames,causal", [(2, None, True), (3, None, True), (2, 2, True), (1, 1, True),
                                                  (2, None, False), (3, 1, False), (2, 2, False)])
def test_lowres_mask_matches_rules(stride, frames, causal):
    F, H, W = 7, 3, 4
    mask = dense_window_mask(lowres_spec((H, W), stride, frames, F, causal), F, F, H, W)
    pos = list(itertools.product(range(F), range(H), range(W)))
    expect = torch.tensor([[lowres_allowed(a[0], b[0], F, stride, frames, causal) for b in pos] for a in pos])
    assert torch.equal(mask, expect)


# ----------------------------------------------------------------- exact pair counts (FLOPs)

@pytest.mark.parametrize("spec, fq, fkv, hp, wp", [
    (hires_spec(5, 3, True), 6, 6, 9, 7),
    (hires_spec(5, 3, True), 2, 6, 9, 7),  # streaming: the last 2 of 6 frames
    (hires_spec(3, 4, False), 5, 5, 7, 9),  # clamped windows at every edge
    (lowres_spec((3, 2), 2, 2, 7, True), 7, 7, 3, 2),
    (lowres_spec((3, 2), 3, None, 7, True), 3, 7, 3, 2),
    (lowres_spec((3, 3), 2, 2, 7, False), 7, 7, 3, 3),
    (WindowSpec((2, 3, 3), (2, 2, 1), (True, False, True)), 5, 5, 7, 5),
])
def test_window_pairs_match_dense_mask(spec, fq, fkv, hp, wp):
    dense = dense_window_mask(spec, fq, fkv, hp, wp)
    assert window_pairs(spec, fq, fkv, hp, wp) == int(dense.sum())


@pytest.mark.parametrize("fq, fkv, hp, wp", [(5, 5, 2, 3), (2, 5, 3, 1), (1, 1, 2, 2)])
def test_frame_causal_pairs_match_dense_mask_and_dense_spec(fq, fkv, hp, wp):
    """The count of the frame-causal mask, and the causal ``dense_spec`` over all frames
    (what DenseAttention and the attention benchmark run) is that same mask."""
    n = hp * wp
    zero = torch.zeros((), dtype=torch.long)
    dense = frame_causal_mask_mod(fq, fkv, n)(zero, zero, torch.arange(fq * n)[:, None],
                                              torch.arange(fkv * n)[None, :])
    assert frame_causal_pairs(fq, fkv, n) == int(dense.sum())
    assert torch.equal(dense_window_mask(dense_spec(None, fkv, (hp, wp), True), fq, fkv, hp, wp), dense)


def test_reference_matches_loop_attention():
    q, k, v = rand_qkv((1, 4, 5, 7, 2, 8))
    out = hires_attention(q, k, v, window=3, frames=2, backend="reference")
    rule = lambda a, b: hires_allowed(*a, *b, 4, 5, 7, 3, 2, True)
    torch.testing.assert_close(out, loop_attention(q, k, v, rule), rtol=1e-10, atol=1e-10)
    out = lowres_attention(q, k, v, stride=2, frames=None, backend="reference")
    rule = lambda a, b: lowres_allowed(a[0], b[0], 4, 2, None, True)
    torch.testing.assert_close(out, loop_attention(q, k, v, rule), rtol=1e-10, atol=1e-10)


def test_reference_streaming_queries_are_last_frames():
    q, k, v = rand_qkv((1, 2, 5, 5, 2, 8), kv_frames=5)
    out = hires_attention(q, k, v, window=3, frames=3, backend="reference")
    rule = lambda a, b: hires_allowed(*a, *b, 5, 5, 5, 3, 3, True)
    torch.testing.assert_close(out, loop_attention(q, k, v, rule), rtol=1e-10, atol=1e-10)


def test_reference_backward_matches_loop():
    q, k, v = rand_qkv((1, 3, 4, 5, 1, 8), grad=True)
    out = lowres_attention(q, k, v, stride=2, frames=1, backend="reference")
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    rule = lambda a, b: lowres_allowed(a[0], b[0], 3, 2, 1, True)
    expect = torch.autograd.grad(loop_attention(q, k, v, rule).square().sum(), (q, k, v))
    for g, e in zip(grads, expect):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-9)


def test_reference_gradcheck():
    q, k, v = rand_qkv((1, 3, 3, 5, 1, 4), grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, c: hires_attention(a, b, c, window=3, frames=2, backend="reference"), (q, k, v))


# ----------------------------------------------------------------- backends == reference

HIRES_CASES = [(3, 2, True), (5, 3, True), (3, 1, True), (3, 2, False), (5, 5, False)]
LOWRES_CASES = [(2, None, True), (3, None, True), (2, 2, True), (1, 1, True),
                (2, None, False), (2, 1, False), (1, None, False)]


def _check_backend(backend, fn, q, k, v, **kw):
    ref = fn(q, k, v, backend="reference", **kw)
    try:
        out = fn(q, k, v, backend=backend, **kw)
    except BackendUnavailableError as err:  # a pattern NATTEN cannot express: said clearly
        assert backend == "natten", err
        assert "backend 'natten' cannot run this call: NATTEN needs" in str(err) or "dilated window" in str(err)
        return False
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=2e-6)
    return True


@pytest.mark.parametrize("backend", ["flex", "natten"])
def test_backends_match_reference_hires(backend):
    q, k, v = rand_qkv((2, 5, 7, 9, 2, 8), dtype=torch.float32, seed=1)
    ran = [_check_backend(backend, hires_attention, q, k, v, window=w, frames=f, causal=c)
           for w, f, c in HIRES_CASES]
    assert sum(ran) >= len(HIRES_CASES) - 1  # natten refuses only non-causal 1-frame windows


@pytest.mark.parametrize("backend", ["flex", "natten"])
def test_backends_match_reference_lowres(backend):
    q, k, v = rand_qkv((2, 5, 7, 9, 2, 8), dtype=torch.float32, seed=2)
    ran = [_check_backend(backend, lowres_attention, q, k, v, stride=s, frames=f, causal=c)
           for s, f, c in LOWRES_CASES]
    assert ran[:4] == [True] * 4  # every causal case runs on every backend


@pytest.mark.parametrize("backend", ["flex", "natten"])
def test_backends_streaming_match_reference(backend):
    q, k, v = rand_qkv((1, 2, 7, 9, 2, 8), kv_frames=6, dtype=torch.float32, seed=3)
    assert _check_backend(backend, hires_attention, q, k, v, window=5, frames=4)
    assert _check_backend(backend, lowres_attention, q, k, v, stride=2, frames=2)


@pytest.mark.parametrize("fkv", [1, 2, 5])
def test_natten_one_query_frame_is_na2d_per_key_frame_merged(fkv, monkeypatch):
    """A streamed frame (and a prefix decoder step) runs na2d once over its key frames
    folded into the batch, merged by log-sum-exp; never na3d. Same numbers as reference."""
    import natten

    monkeypatch.setattr(natten.functional, "na3d", None)  # a call of it fails the test
    q, k, v = rand_qkv((2, 1, 7, 9, 2, 8), kv_frames=fkv, dtype=torch.float32, seed=4)
    for window, frames in [(3, 1), (5, 2), (3, 4), (7, 8)]:
        assert _check_backend("natten", hires_attention, q, k, v, window=window, frames=frames)
    for stride, frames in [(1, None), (2, None), (2, 2), (3, 1)]:
        assert _check_backend("natten", lowres_attention, q, k, v, stride=stride, frames=frames)


@pytest.mark.skipif(not (torch.cuda.is_available() and natten_has_library()),
                    reason="NATTEN's CUDA kernels need a GPU and NATTEN built with libnatten")
@pytest.mark.parametrize("fkv, frames, stride", [(2, 2, 1), (4, 4, 1), (6, 3, 2)])
def test_natten_one_query_frame_matches_reference_on_cuda(fkv, frames, stride):
    """NATTEN's kernels with their log-sum-exps, merged, against float32 reference
    attention on the same float16 inputs: within 1e-2 (float16 rounds outputs of size
    ~1 by ~5e-4; a wrong merge or frame gives errors of order 0.1)."""
    q, k, v = (t.cuda().half() for t in rand_qkv((2, 1, 16, 20, 4, 64), kv_frames=fkv, seed=5))
    ref = hires_attention(q.float(), k.float(), v.float(), window=7, frames=frames, backend="reference")
    out = hires_attention(q, k, v, window=7, frames=frames, backend="natten")
    assert (out.float() - ref).abs().max().item() <= 1e-2
    ref = lowres_attention(q.float(), k.float(), v.float(), stride=stride, frames=frames, backend="reference")
    out = lowres_attention(q, k, v, stride=stride, frames=frames, backend="natten")
    assert (out.float() - ref).abs().max().item() <= 1e-2


def test_natten_refusal_is_explained():
    q, k, v = rand_qkv((1, 5, 7, 9, 2, 8), dtype=torch.float32)
    with pytest.raises(BackendUnavailableError, match="NATTEN needs windows >= 2"):
        hires_attention(q, k, v, window=3, frames=1, causal=False, backend="natten")


# ----------------------------------------------------------------- causality

@pytest.mark.parametrize("fn,kw", [(hires_attention, dict(window=3, frames=2)),
                                   (lowres_attention, dict(stride=2, frames=None))])
def test_future_frames_never_leak(fn, kw):
    q, k, v = rand_qkv((1, 6, 5, 7, 2, 8))
    out = fn(q, k, v, backend="reference", **kw)
    for t in range(5):
        q2, k2, v2 = (x.clone() for x in (q, k, v))
        for x in (q2, k2, v2):
            x[:, t + 1:] = torch.randn_like(x[:, t + 1:])
        out2 = fn(q2, k2, v2, backend="reference", **kw)
        assert torch.equal(out[:, : t + 1], out2[:, : t + 1])
        assert not torch.allclose(out[:, t + 1:], out2[:, t + 1:])


# ----------------------------------------------------------------- backend choice

def test_auto_on_cpu_picks_reference_and_explains():
    q, k, v = rand_qkv((1, 3, 5, 5, 2, 8), dtype=torch.float32)
    spec = hires_spec(3, 2, True)
    assert resolve_backend("auto", q, k, spec) == "reference"
    reasons = explain_backends(q, k, spec)
    assert reasons["reference"] is None
    assert reasons["flex"] and reasons["natten"]  # each refusal says why


def test_named_backend_never_falls_back():
    q, k, v = rand_qkv((1, 3, 5, 5, 2, 8), dtype=torch.float32, grad=True)
    with pytest.raises(BackendUnavailableError, match="flex"):
        hires_attention(q, k, v, window=3, frames=2, backend="flex")
    with pytest.raises(BackendUnavailableError, match="natten"):
        hires_attention(q, k, v, window=3, frames=2, backend="natten")
    with pytest.raises(ValueError, match=r"^backend='cudnn': expected one of auto, reference, flex, natten$"):
        hires_attention(q, k, v, window=3, frames=2, backend="cudnn")


# ----------------------------------------------------------------- bad input

def _qkv(shape=(1, 3, 5, 7, 2, 8)):
    return [torch.randn(shape) for _ in range(3)]


@pytest.mark.parametrize("mutate,match", [
    (lambda q, k, v: (q[0], k, v), r"q must be 6-D"),
    (lambda q, k, v: (q, k, v[..., :4]), r"k and v must have the same shape"),
    (lambda q, k, v: (q, k[:, :, :4], v[:, :, :4]), r"agree on B, Hp, Wp, h, d"),
    (lambda q, k, v: (q.double(), k, v), r"share a dtype"),
    (lambda q, k, v: (q, k[:, :2], v[:, :2]), r"more frames \(3\) than k \(2\)"),
])
def test_bad_tensors(mutate, match):
    q, k, v = mutate(*_qkv())
    with pytest.raises(ValueError, match=match):
        hires_attention(q, k, v, window=3, frames=2)


@pytest.mark.parametrize("kw,message", [
    (dict(window=4, frames=2), "window=4: expected an odd integer in [1, 5]; token grid Hp×Wp=5×7"),
    (dict(window=7, frames=2), "window=7: expected an odd integer in [1, 5]; token grid Hp×Wp=5×7"),
    (dict(window=0, frames=2), "window=0: expected an odd integer in [1, 5]; token grid Hp×Wp=5×7"),
    (dict(window=3.0, frames=2), "window=3.0: expected an odd integer in [1, 5]; token grid Hp×Wp=5×7"),
    (dict(window=True, frames=2), "window=True: expected an odd integer in [1, 5]; token grid Hp×Wp=5×7"),
    (dict(window=3, frames=0), "frames=0: expected an integer >= 1"),
])
def test_bad_hires_arguments(kw, message):
    with pytest.raises(ValueError) as err:
        hires_attention(*_qkv(), **kw)
    assert str(err.value).startswith(message + "; ")
    assert str(err.value).endswith("q (1, 3, 5, 7, 2, 8), k (1, 3, 5, 7, 2, 8), v (1, 3, 5, 7, 2, 8)")  # the shapes


@pytest.mark.parametrize("kw,message", [
    (dict(stride=0), "stride=0: expected an integer >= 1"),
    (dict(stride=2, frames=0), "frames=0: expected an integer >= 1 or None"),
])
def test_bad_lowres_arguments(kw, message):
    with pytest.raises(ValueError) as err:
        lowres_attention(*_qkv(), **kw)
    assert str(err.value) == message + "; q (1, 3, 5, 7, 2, 8), k (1, 3, 5, 7, 2, 8), v (1, 3, 5, 7, 2, 8)"


def test_noncausal_needs_equal_frames():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="causal=False needs as many query as key frames"):
        lowres_attention(q[:, :1], k, v, stride=1, causal=False)


def test_auto_logs_its_choice_once_per_pattern_and_grid(caplog):
    """One INFO line per (pattern, grid, device, grad mode) naming the choice and every
    refusal's reason; repeated calls and other frame counts (a stream's growing cache)
    log nothing more."""
    import logging

    from scd_msc.ops import backends

    backends._announce.cache_clear()
    spec = hires_spec(3, 2, True)
    with caplog.at_level(logging.INFO, logger="scd_msc.ops.backends"):
        for frames in (3, 3, 4):
            q, k, _ = rand_qkv((1, frames, 5, 7, 2, 8), dtype=torch.float32)
            assert resolve_backend("auto", q, k, spec) == "reference"
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert len(lines) == 1, lines
        reasons = explain_backends(q, k, spec)
        assert lines[0] == (f"auto: using reference for {spec} on a 5×7 grid (cpu); refused natten: "
                            f"{reasons['natten']}; refused flex: {reasons['flex']}")
        q, k, _ = rand_qkv((1, 3, 5, 7, 2, 8), dtype=torch.float32, grad=True)
        resolve_backend("auto", q, k, spec)  # with grad: another line (natten's reason differs)
        resolve_backend("auto", q, k, hires_spec(5, 2, True))  # another pattern: another line
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(lines) == 3 and "(cpu, with grad)" in lines[1] and "kernel=(2, 5, 5)" in lines[2], lines


def test_compiled_calls_raise_the_recompile_limit_only_while_they_run():
    """Flex compiles a graph per mask, size and mode; past dynamo's recompile limit (8 by
    default) it would silently run eager. The limit is raised around each call and the
    process-wide setting is left as it was."""
    from torch._dynamo.testing import CompileCounter

    from scd_msc.ops.backends import with_recompile_limit

    before = torch._dynamo.config.recompile_limit
    counter = CompileCounter()
    double = with_recompile_limit(torch.compile(lambda x: x * 2, backend=counter, dynamic=False), before + 4)
    for n in range(1, before + 4):  # before + 3 shapes: each its own graph
        assert torch.equal(double(torch.ones(n)), torch.full((n,), 2.0))
        assert torch._dynamo.config.recompile_limit == before
    assert counter.frame_count == before + 3


NO_NATTEN = """
import builtins, sys
sys.modules["natten"] = None  # as if not installed: find_spec gives None, import fails
real = builtins.__import__
def no_natten(name, *args, **kwargs):
    if name == "natten" or name.startswith("natten."):
        raise ModuleNotFoundError("No module named 'natten'")
    return real(name, *args, **kwargs)
builtins.__import__ = no_natten

import torch
from scd_msc.models import build_model
from scd_msc.ops import BackendUnavailableError, explain_backends, hires_spec

torch.manual_seed(0)
model = build_model("scd-msc-tiny", backend="auto")
video = torch.rand(2, 3, 1, 32, 32) * 2 - 1  # (B, F, C, H, W)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
loss = model.training_loss(video, torch.Generator().manual_seed(0))["loss"]
loss.backward()
opt.step()
frame = model.generate(1, 1, 2, generator=torch.Generator().manual_seed(0))
print("trained", bool(torch.isfinite(loss)), "frame", tuple(frame.shape), bool(torch.isfinite(frame).all()))
q = torch.zeros(1, 2, 5, 5, 2, 8)
print("auto refuses natten:", explain_backends(q, q, hires_spec(3, 2, True))["natten"])
try:
    build_model("scd-msc-tiny", backend="natten").generate(1, 1, 1)
except BackendUnavailableError as err:
    print("natten:", err)
print("imported natten:", "natten" in sys.modules and sys.modules["natten"] is not None)
"""


def test_without_natten_the_package_trains_and_generates_and_refuses_natten():
    """NATTEN is an extra: blocked as if not installed, a tiny model trains a step and
    streams a frame with ``auto``; ``backend='natten'`` is refused in one line that says
    what to install."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", NO_NATTEN], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "trained True frame (1, 1, 1, 32, 32) True", proc.stdout
    assert lines[1] == "auto refuses natten: natten is not installed: pip install --no-build-isolation natten"
    assert lines[2] == ("natten: backend 'natten' cannot run this call: natten is not installed: "
                        "pip install --no-build-isolation natten")
    assert lines[3:] == ["imported natten: False"]
