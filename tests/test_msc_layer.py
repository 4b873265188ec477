"""MSCAttention: gates, pooling, schedules, causality and streaming == parallel."""

import dataclasses

import pytest
import torch
from einops import rearrange

from scd_msc.ops import hires_attention, lowres_attention
from scd_msc.ops.embed import Rotary, RotaryTables, deinterleave_pairs, rope3d, rope_tables
from scd_msc.ops.msc import MSCAttention, MSCAttentionConfig, pool_tokens, prepare_qkv, unpool_tokens
from scd_msc.ops.schedule import MSCLayerSpec, MSCScheduleConfig, build_schedule
from scd_msc.streaming import new_layer_cache

SPEC = MSCLayerSpec(down=2, window=3, frames=2, stride=2, strided_frames=2)


def make_layer(seed=0, spec=SPEC, **kw):
    torch.manual_seed(seed)
    cfg = MSCAttentionConfig(dim=32, heads=4, gate_embed_dim=16, **{"backend": "reference", **kw})
    return MSCAttention(cfg, spec).double()


def inputs(f=6, h=7, w=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, f, h, w, 32, generator=g, dtype=torch.float64),
            torch.rand(2, f, generator=g, dtype=torch.float64), torch.arange(f))


def test_gates_start_at_one():
    x, t, fi = inputs()
    gated, plain = make_layer(gating="branch"), make_layer(gating="off")
    plain.load_state_dict(gated.state_dict(), strict=False)
    assert torch.equal(gated.gates(t), torch.ones(2, 6, 4, dtype=torch.float64))
    torch.testing.assert_close(gated(x, t, fi), plain(x, t, fi))
    per_head = make_layer(gating="head")
    assert torch.equal(per_head.gates(t), torch.ones(2, 6, 4, dtype=torch.float64))


def test_gating_off_is_plain_concatenation():
    x, t, fi = inputs()
    layer = make_layer(gating="off")
    split = "b f y x (n h d) -> n b f y x h d"
    hq, hk, hv = prepare_qkv(layer, rearrange(layer.qkv_hi(x), split, n=3, h=2), Rotary(fi).tables(8, 1, (7, 9)))
    lo = rearrange(layer.qkv_lo(x), split, n=3, h=2)  # every token projected, then pooled
    pooled = torch.stack([pool_tokens(t, 2) for t in lo])  # (3, B, F, 4, 5, 2, d)
    lq, lk, lv = prepare_qkv(layer, pooled, Rotary(fi).tables(8, 2, (7, 9)))
    hi = hires_attention(hq, hk, hv, window=3, frames=2, backend="reference")
    lo = lowres_attention(lq, lk, lv, stride=2, frames=2, backend="reference")
    lo = unpool_tokens(lo, 2, 7, 9, "nearest")
    expect = layer.proj(rearrange(torch.cat([hi, lo], -2), "b f y x h d -> b f y x (h d)"))
    torch.testing.assert_close(layer(x, t, fi), expect)


def test_gates_follow_the_noise_level():
    x, t, fi = inputs()
    layer = make_layer()
    torch.nn.init.normal_(layer.gate_mlp[-1].weight)
    g = layer.gates(t)
    assert not torch.allclose(g[..., 0], g[..., 2])  # hi and lo branches gated apart
    assert not torch.allclose(layer(x, t, fi), layer(x, 1 - t, fi))


def test_pooling_averages_cells_and_edges():
    x = torch.arange(7 * 9, dtype=torch.float64).reshape(1, 1, 7, 9, 1, 1)
    p = pool_tokens(x, 2)
    assert p.shape == (1, 1, 4, 5, 1, 1)
    assert p[0, 0, 0, 0, 0, 0] == x[0, 0, :2, :2].mean()
    assert p[0, 0, 3, 4, 0, 0] == x[0, 0, 6, 8]  # corner cell covers one token
    up = unpool_tokens(p, 2, 7, 9, "nearest")
    assert up.shape == x.shape and up[0, 0, 1, 1] == p[0, 0, 0, 0]


@pytest.mark.parametrize("h, hires_heads", [(7, None), (8, None), (7, 0), (7, 4)])  # edge cells or not
def test_lowres_heads_project_the_pooled_tokens(h, hires_heads):
    x, _, _ = inputs(h=h)
    layer = make_layer(hires_heads=hires_heads)
    n_hi = layer.h_hi
    split = "b f y x (n h d) -> n b f y x h d"
    hi, lo = layer.project(x)
    if n_hi:
        torch.testing.assert_close(hi, rearrange(layer.qkv_hi(x), split, n=3, h=n_hi))
    if layer.h_lo:
        every = rearrange(layer.qkv_lo(x), split, n=3, h=layer.h_lo)  # pooling after the projection
        torch.testing.assert_close(lo, torch.stack([pool_tokens(t, 2) for t in every]))
    assert (hi is None) == (n_hi == 0) and (lo is None) == (layer.h_lo == 0)
    assert (layer.qkv_hi is None) == (n_hi == 0) and (layer.qkv_lo is None) == (layer.h_lo == 0)


@pytest.mark.parametrize("hires_heads", [None, 0, 4])
def test_a_checkpoint_of_the_interleaved_layout_gives_the_same_scores(hires_heads):
    """A state dict of one ``qkv`` projection whose q/k pairs (2i, 2i+1) rotate together
    (the layout before rotate-half RoPE) loads into the split projections: every head's
    scores and values are those of the old layout under the textbook rotation."""
    x, _, fi = inputs()
    layer = make_layer(hires_heads=hires_heads, spec=MSCLayerSpec(down=1, window=3, frames=2, stride=1))
    g = torch.Generator().manual_seed(5)
    old = {k: v for k, v in layer.state_dict().items() if "qkv_" not in k}
    old["qkv.weight"] = torch.randn(96, 32, generator=g, dtype=torch.float64)
    old["qkv.bias"] = torch.randn(96, generator=g, dtype=torch.float64)
    old["q_norm.weight"], old["k_norm.weight"] = (torch.rand(8, generator=g, dtype=torch.float64) + 0.5
                                                  for _ in range(2))
    layer.load_state_dict(old)  # strict: no key left over or missing
    q, k, v = rearrange(torch.nn.functional.linear(x, old["qkv.weight"], old["qkv.bias"]),
                        "b f y x (n h d) -> n b f y x h d", n=3, h=4)
    ys, xs = torch.arange(7.0), torch.arange(9.0)
    rq = _rope_reference(torch.nn.functional.rms_norm(q, (8,), old["q_norm.weight"]), fi, ys, xs)
    rk = _rope_reference(torch.nn.functional.rms_norm(k, (8,), old["k_norm.weight"]), fi, ys, xs)
    hi, lo = layer.project(x)
    new = torch.cat([t for t in (hi, lo) if t is not None], dim=-2)  # (3, B, F, Hp, Wp, h, d), r = 1
    nq, nk, nv = prepare_qkv(layer, new, Rotary(fi).tables(8, 1, (7, 9)))
    scores = "bfyxhd,bgvuhd->bhfyxgvu"
    torch.testing.assert_close(torch.einsum(scores, nq, nk), torch.einsum(scores, rq, rk), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(nv, v)


def test_rotary_tables_in_memory_are_the_computed_ones_and_stay_float32():
    tables = RotaryTables(2, (7, 9), 8, (1, 2, 2))
    tables.to(torch.bfloat16)
    given = tables.positions(1, 1)
    for r in (1, 2):
        cos, sin = given.tables(8, r, (7, 9))
        ref = Rotary(torch.tensor([1])).tables(8, r, (7, 9))
        assert cos.dtype == torch.float32 and cos.shape == ref[0].shape
        torch.testing.assert_close((cos, sin), ref)
    with pytest.raises(ValueError, match="frames 1..2: the tables hold frames 0..1"):
        tables.positions(1, 2)


@pytest.mark.parametrize("layer_index,hires", [(0, None), (2, None), (2, 0), (2, "all")],
                         ids=["pooled-2x", "pooled-4x", "all-low-res", "all-hi-res"])
def test_linear_flops_of_an_msc_block_are_what_torch_runs(layer_index, hires):
    """MFU's count of an MSC block's linear layers (training/flops.py) against torch's
    count of the block's matrix products: the low-res heads project pooled tokens, also
    when every head is low-res."""
    from torch.utils.flop_counter import FlopCounterMode

    from scd_msc.models.layers import Mlp, layer_config
    from scd_msc.models.presets import preset_config
    from scd_msc.training.flops import _msc_linear

    cfg = preset_config("scd-msc-tiny")
    hires = cfg.heads if hires == "all" else hires
    cfg = dataclasses.replace(cfg, attention=dataclasses.replace(cfg.attention, hires_heads=hires))
    spec = build_schedule(cfg.schedule, cfg.enc_depth)[layer_index]
    attn = MSCAttention(layer_config(cfg.dim, cfg.heads, cfg.attention, causal=True, backend="reference"), spec)
    mlp = Mlp(cfg.dim, cfg.mlp_ratio)
    x = torch.randn(1, 3, cfg.grid, cfg.grid, cfg.dim)
    with FlopCounterMode(display=False) as counter:
        attn(x, torch.rand(1, 3), torch.arange(3))
        mlp(x)
    ran = sum(v for op, v in counter.get_flop_counts()["Global"].items() if str(op) in ("aten.mm", "aten.addmm"))
    assert _msc_linear(cfg, spec, 3) == pytest.approx(ran, rel=1e-3)  # the gates' tiny MLP is left out
    full = 2 * (4 + 2 * cfg.mlp_ratio) * cfg.dim ** 2 * 3 * cfg.grid ** 2  # every head on full tokens
    if hires == cfg.heads:
        assert _msc_linear(cfg, spec, 3) == pytest.approx(full)
    else:
        assert _msc_linear(cfg, spec, 3) < 0.95 * full


def _rope_reference(x, frames, ys, xs, base=10_000.0):
    """The textbook axial rotation: pair (2i, 2i+1) turned by its angle and written back
    in place; pairs 0..d/4-1 follow the frame, the next d/8 y, the last d/8 x."""
    d = x.shape[-1]
    parts = [(frames, d // 2), (ys, d // 4), (xs, d // 4)]
    angles = []
    for axis, (pos, ch) in enumerate(parts):
        freq = base ** (-torch.arange(0, ch, 2, dtype=torch.float64) / ch)
        a = pos.double()[:, None] * freq  # (L, ch/2)
        shape = [1, 1, 1, ch // 2]
        shape[axis] = -1
        angles.append(a.reshape(shape).expand(len(frames), len(ys), len(xs), ch // 2))
    ang = torch.cat(angles, dim=-1)[:, :, :, None]  # (F, Hp, Wp, 1, d/2)
    out = x.clone()
    out[..., 0::2] = x[..., 0::2] * ang.cos() - x[..., 1::2] * ang.sin()
    out[..., 1::2] = x[..., 0::2] * ang.sin() + x[..., 1::2] * ang.cos()
    return out


def test_rope_is_the_pairwise_rotation_on_deinterleaved_channels():
    """Rotate-half pairs (i, i + d/2) of channels taken in deinterleave_pairs order are
    the textbook pairs (2i, 2i+1), regrouped the same way."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, 2, 16, generator=g, dtype=torch.float64)
    frames, ys, xs = torch.tensor([0, 3, 7]), torch.arange(4.0), torch.arange(5.0) + 0.5
    ref = _rope_reference(x, frames, ys, xs)
    perm = deinterleave_pairs(16)
    assert perm.tolist() == [0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15]
    out = rope3d(x[..., perm], *rope_tables(frames, ys, xs, 16))
    torch.testing.assert_close(out, ref[..., perm], rtol=1e-5, atol=1e-5)  # fp32 inside


def test_rope_scores_depend_on_offsets_only():
    g = torch.Generator().manual_seed(1)
    q, k = (torch.randn(1, 3, 4, 5, 2, 16, generator=g, dtype=torch.float64) for _ in range(2))
    frames, ys, xs = torch.tensor([0, 1, 2]), torch.arange(4.0), torch.arange(5.0)

    def scores(shift_f, shift_y, shift_x):
        fr, yy, xx = frames + shift_f, ys + shift_y, xs + shift_x
        tables = rope_tables(fr, yy, xx, 16)
        rq, rk = rope3d(q, *tables), rope3d(k, *tables)
        return torch.einsum("bfyxhd,bgvuhd->bhfyxgvu", rq, rk)

    torch.testing.assert_close(scores(0, 0, 0), scores(11, -3, 2.5), rtol=1e-4, atol=1e-4)  # fp32 inside
    assert not torch.allclose(scores(0, 0, 0), torch.einsum("bfyxhd,bgvuhd->bhfyxgvu", q, k))


def test_future_frames_never_leak():
    x, t, fi = inputs()
    layer = make_layer()
    out = layer(x, t, fi)
    for f in range(5):
        x2, t2 = x.clone(), t.clone()
        x2[:, f + 1:] += 1.0
        t2[:, f + 1:] = 0.5
        out2 = layer(x2, t2, fi)
        torch.testing.assert_close(out[:, : f + 1], out2[:, : f + 1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "flex", "natten"])
@pytest.mark.parametrize("strided_frames", [2, None])
def test_stream_equals_parallel(backend, strided_frames):
    spec = MSCLayerSpec(down=2, window=3, frames=3, stride=2, strided_frames=strided_frames)
    layer = make_layer(backend=backend, spec=spec).float()
    x, t, fi = (a.float() if a.is_floating_point() else a for a in inputs(f=7))
    with torch.no_grad():
        full = layer(x, t, fi)
        cache = new_layer_cache(layer)
        chunks = [(0, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7)]  # a 2-frame prompt, then 1 by 1
        streamed = torch.cat([layer(x[:, a:b], t[:, a:b], fi[a:b], cache=cache, write=True)
                              for a, b in chunks], 1)
    assert (streamed - full).abs().max() <= 1e-4
    expect_frames = 2 if strided_frames else 7  # (k-1)·s low-res frames, or all
    assert cache.lowres.k.shape[1] == expect_frames and cache.hires.k.shape[1] == 2


def test_noncausal_layer_refuses_cache():
    layer = make_layer(causal=False)
    x, t, fi = inputs()
    with pytest.raises(ValueError, match="needs a causal layer"):
        layer(x, t, fi, cache=new_layer_cache(layer))


def test_pyramid_schedule_pools_more_in_deeper_layers():
    specs = build_schedule(MSCScheduleConfig(name="pyramid", base=MSCLayerSpec(down=2), down_max=8), depth=6)
    assert [s.down for s in specs] == [2, 2, 4, 4, 8, 8]
    assert [s.down for s in build_schedule(MSCScheduleConfig(name="uniform"), 3)] == [2, 2, 2]


@pytest.mark.parametrize("kw,message", [
    (dict(name="zigzag"), "model.schedule.name='zigzag': expected one of uniform, pyramid, explicit"),
    (dict(base=MSCLayerSpec(window=4)), "model.schedule.base.window=4: expected an odd integer >= 1"),
    (dict(base=MSCLayerSpec(stride=0)), "model.schedule.base.stride=0: expected an integer >= 1"),
    (dict(down_max=1), "model.schedule.down_max=1: expected an integer >= 2; model.schedule.base.down=2"),
    (dict(name="explicit", layers=[SPEC, MSCLayerSpec(strided_frames=0)]),
     "model.schedule.layers[1].strided_frames=0: expected an integer >= 1 or None"),
])
def test_bad_schedule(kw, message):
    with pytest.raises(ValueError) as err:
        MSCScheduleConfig(**kw)
    assert str(err.value) == message
    cfg = MSCScheduleConfig()  # changed in place after construction: build_schedule checks again
    for key, value in kw.items():
        setattr(cfg, key, value)
    with pytest.raises(ValueError) as err:
        build_schedule(cfg, depth=2)
    assert str(err.value) == message


def test_explicit_schedule_needs_one_spec_per_layer():
    with pytest.raises(ValueError, match="schedule 'explicit' needs layers with 2 entries, got None"):
        build_schedule(MSCScheduleConfig(name="explicit"), depth=2)


@pytest.mark.parametrize("kw,message", [
    (dict(gating="soft"), "gating='soft': expected one of branch, head, off"),
    (dict(hires_heads=5), "hires_heads=5: expected an integer in [0, 4] or None; the layers have 4 heads"),
    (dict(upsample="cubic"), "upsample='cubic': expected one of nearest, bilinear"),
])
def test_bad_layer_config(kw, message):
    with pytest.raises(ValueError) as err:
        make_layer(**kw)
    assert str(err.value) == message
