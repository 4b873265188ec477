"""SCD-MSC, SCD-dense and the causal DiT: exactness of streaming, causality, bounded
caches, learning, presets and argument errors (tiny presets, CPU, fp32)."""

import numpy as np
import pytest
import torch

from scd_msc import PRESETS, build_model
from scd_msc.data.synthetic import moving_digits
from scd_msc.diffusion import Sampler
from scd_msc.models import count_parameters, randomize_zero_init

FAMILIES = ["scd-msc", "scd-dense", "causal-dit"]


def tiny(family, **kw):
    """A tiny model whose zero-initialised layers are randomised (a fresh adaLN-zero
    model is the identity, which would make the tests below vacuous)."""
    torch.manual_seed(0)
    model = build_model(f"{family}-tiny", **{"backend": "reference", **kw}).eval()
    assert randomize_zero_init(model) > 0
    return model


def video(b=2, f=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, f, 1, 32, 32, generator=g) * 2 - 1


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("with_prompt", [False, True])
def test_stream_equals_recompute(family, with_prompt):
    model = tiny(family)
    prompt = video(f=3) if with_prompt else None
    a = model.generate(2, 5, steps=3, generator=gen(), prompt=prompt, cache=True)
    b = model.generate(2, 5, steps=3, generator=gen(), prompt=prompt, cache=False)
    assert a.shape == (2, 5, 1, 32, 32)
    assert a.std() > 0.1  # frames are not trivially constant
    assert (a - b).abs().max() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_context_noise_streams_exactly_and_changes_frames(family):
    model = tiny(family)
    prompt = video(f=3)
    a = model.generate(2, 5, steps=2, generator=gen(), prompt=prompt, cache=True, context_noise=0.3)
    b = model.generate(2, 5, steps=2, generator=gen(), prompt=prompt, cache=False, context_noise=0.3)
    clean = model.generate(2, 5, steps=2, generator=gen(), prompt=prompt)
    assert (a - b).abs().max() <= 1e-4
    assert not torch.allclose(a, clean, atol=1e-3)


def test_context_noise_scd_encodes_the_noised_prompt_at_its_level():
    """Reference: the prompt noised by hand with the session's first draws, encoded at t_c."""
    from scd_msc.diffusion._random import randn

    model, prompt, t_c = tiny("scd-msc"), video(f=3), 0.3
    session = model.stream(2, steps=1, prompt=prompt, generator=gen(), context_noise=t_c)
    eps = randn(prompt.shape, gen(), prompt.device, prompt.dtype)
    with torch.no_grad():
        want = model.encoder((1 - t_c) * prompt + t_c * eps, torch.full((2, 3), t_c))[:, -1]
        at_zero = model.encoder((1 - t_c) * prompt + t_c * eps, torch.zeros(2, 3))[:, -1]
    assert (session.context - want).abs().max() <= 1e-5
    assert not torch.allclose(session.context, at_zero, atol=1e-3)  # the level reaches the gates


def test_context_noise_dit_first_frame_matches_a_by_hand_rollout():
    from scd_msc.diffusion._random import randn

    model, prompt, t_c = tiny("causal-dit"), video(f=3), 0.2
    frame = model.stream(2, steps=3, prompt=prompt, generator=gen(), context_noise=t_c).step()
    g = gen()
    noised = (1 - t_c) * prompt + t_c * randn(prompt.shape, g, prompt.device, prompt.dtype)
    levels = torch.full((2, 3), t_c)

    def velocity(x, t):  # x (B, C, H, W) at t (B,): the whole history, then the new frame
        return model(torch.cat([noised, x[:, None]], 1), torch.cat([levels, t[:, None]], 1))[:, -1]

    with torch.no_grad():
        want = Sampler().sample(velocity, randn(frame.shape, g, frame.device, frame.dtype), 3)
    assert (frame - want).abs().max() <= 1e-4


@pytest.mark.parametrize("conditioning", ["add", "adaln"])
def test_other_conditionings_stream_exactly(conditioning):
    model = tiny("scd-msc", conditioning=conditioning)
    a = model.generate(1, 4, steps=2, generator=gen(), cache=True)
    b = model.generate(1, 4, steps=2, generator=gen(), cache=False)
    assert (a - b).abs().max() <= 1e-4


def test_guidance_streams_exactly_and_changes_frames():
    model = tiny("scd-msc")
    a = model.generate(1, 4, steps=2, generator=gen(), guidance=3.0, cache=True)
    b = model.generate(1, 4, steps=2, generator=gen(), guidance=3.0, cache=False)
    plain = model.generate(1, 4, steps=2, generator=gen(), guidance=1.0)
    assert (a - b).abs().max() <= 1e-4
    assert not torch.allclose(a, plain)


@pytest.mark.parametrize("family", ["scd-msc", "scd-dense"])
def test_encoder_stream_equals_parallel(family):
    enc = tiny(family).encoder
    x = video(f=9)
    t = torch.rand(2, 9, generator=gen())
    with torch.no_grad():
        full = enc(x, t)
        cache = enc.new_cache()
        parts = [enc(x[:, a:b], t[:, a:b], cache) for a, b in [(0, 3)] + [(i, i + 1) for i in range(3, 9)]]
    assert (torch.cat(parts, 1) - full).abs().max() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_causality_through_the_model(family):
    model = tiny(family)
    x = video(f=6)
    t = torch.rand(2, 6, generator=gen())
    with torch.no_grad():
        for f in range(5):
            y = x.clone()
            y[:, f + 1:] = torch.rand_like(y[:, f + 1:])
            if family == "causal-dit":
                out, out2 = model(x, t), model(y, t)
                assert torch.equal(out[:, : f + 1], out2[:, : f + 1])
                assert not torch.allclose(out[:, f + 1:], out2[:, f + 1:])
            else:  # the context of frame i depends on frames < i only
                out, out2 = model.contexts(x, t), model.contexts(y, t)
                assert torch.equal(out[:, : f + 2], out2[:, : f + 2])
                if f + 2 < 6:
                    assert not torch.allclose(out[:, f + 2:], out2[:, f + 2:])


@pytest.mark.parametrize("family,kw", [("scd-msc", {}), ("causal-dit", {"dense_window_frames": 8})])
def test_cache_is_constant_with_video_length(family, kw):
    """Memory is bounded: the same cache bytes at frame 20 and 60 (4x+ a 16-frame clip)."""
    model = tiny(family, **kw)
    session = model.stream(1, steps=1, generator=gen())
    sizes = {}
    for i in range(1, 61):
        frame = session.step()
        if i in (20, 60):
            sizes[i] = session.cache_bytes()
    assert torch.isfinite(frame).all()
    assert sizes[20] == sizes[60] > 0


def test_unbounded_lowres_cache_grows():
    from scd_msc.ops.schedule import MSCLayerSpec, MSCScheduleConfig

    spec = MSCLayerSpec(window=3, frames=3, strided_frames=None)
    model = tiny("scd-msc", schedule=MSCScheduleConfig(base=spec))
    session = model.stream(1, steps=1, generator=gen())
    sizes = [session.step() is not None and session.cache_bytes() for _ in range(6)]
    assert sizes[5] > sizes[2]


@pytest.mark.parametrize("family", ["scd-msc", "causal-dit"])
def test_loss_falls_when_overfitting_one_clip(family):
    torch.manual_seed(0)
    model = build_model(f"{family}-tiny", backend="reference")
    clip = torch.from_numpy(moving_digits(8, 32, np.random.default_rng(0))).float()  # (F, H, W, 1)
    clip = (clip.permute(0, 3, 1, 2)[None] / 127.5 - 1).expand(4, -1, -1, -1, -1)  # (4, F, 1, H, W)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = gen(0)
    losses = []
    for _ in range(60):
        loss = model.training_loss(clip, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5])


def test_multi_batch_and_context_noise_train():
    from scd_msc.diffusion import FlowConfig

    model = build_model("scd-msc-tiny", backend="reference")
    flow = FlowConfig(decoder_multi_batch=3, context_noise_max=0.1)
    loss = model.training_loss(video(), generator=gen(), flow=flow)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and model.encoder.blocks[0].attn.qkv_hi.weight.grad is not None


@pytest.mark.parametrize("context", ["recompute", "prefix"])
def test_activation_checkpointing_gives_the_same_gradients(context):
    """``train.activation_checkpointing``: every block recomputed in the backward pass
    (the decoder's rotation tables and the modulation made outside it) gives the
    gradients of a plain backward."""
    from scd_msc.models.layers import Block

    model = build_model("scd-msc-tiny", backend="reference", decoder_context=context)
    randomize_zero_init(model)
    grads = []
    for on in (False, True):
        for block in model.modules():
            if isinstance(block, Block):
                block.checkpointing = on
        model.zero_grad()
        model.training_loss(video(), generator=gen())["loss"].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for plain, ckpt in zip(*grads):
        torch.testing.assert_close(ckpt, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_presets_match_parameters(size):
    with torch.device("meta"):
        counts = [count_parameters(build_model(f"{f}-{size}")) for f in FAMILIES]
    assert max(counts) <= 1.1 * min(counts), counts


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=0), "^steps=0: expected an integer >= 1$"),
    (dict(num_frames=0), "^num_frames=0: expected an integer >= 1$"),
    (dict(batch_size=True), "^batch_size=True: expected an integer >= 1$"),
    (dict(prompt=torch.zeros(1, 2, 3, 32, 32)), r"prompt must be \(B, F, C, H, W\) = \(1, F, 1, 32, 32\)"),
    (dict(prompt=torch.zeros(1, 2, 1, 16, 16)), r"got \(1, 2, 1, 16, 16\)"),
    (dict(context_noise=1.0), r"^context_noise=1.0: expected a number in \[0, 1\)$"),
    (dict(context_noise=-0.1), r"^context_noise=-0.1: expected a number in \[0, 1\)$"),
    (dict(context_noise=float("nan")), r"^context_noise=nan: expected a number in \[0, 1\)$"),
])
def test_bad_generation_arguments(kwargs, match):
    model = tiny("scd-msc")
    args = {**dict(batch_size=1, num_frames=2, steps=1), **kwargs}
    with pytest.raises(ValueError, match=match):
        model.generate(**args)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match="^preset='scd-msc-huge': expected one of scd-msc-tiny, ") as err:
        build_model("scd-msc-huge")
    assert all(p in str(err.value) for p in PRESETS)
    with pytest.raises(ValueError, match=r"unknown ModelConfig field\(s\) \['widht'\]"):
        build_model("scd-msc-tiny", widht=3)


def test_dit_refuses_guidance():
    with pytest.raises(ValueError, match="guidance=2.0 needs a context"):
        tiny("causal-dit").generate(1, 1, 1, guidance=2.0)


def test_full_caches_are_written_in_place():
    """Once a window is full its buffers never move (what CUDA-graph replay relies on),
    and the frame counter lives on the device."""
    model = tiny("scd-msc")
    session = model.stream(1, steps=1, generator=gen())
    cache = session.cache
    for _ in range(20):
        session.step()
    assert cache.full() and cache.frames_seen == 20
    ptrs = [(layer.hires.k.data_ptr(), layer.lowres.v.data_ptr()) for layer in cache.layers]
    before = cache.layers[0].hires.k.clone()
    session.step()
    assert [(layer.hires.k.data_ptr(), layer.lowres.v.data_ptr()) for layer in cache.layers] == ptrs
    assert not torch.equal(cache.layers[0].hires.k, before)  # contents did move on
    assert cache.frames_seen == 21
    unbounded = tiny("causal-dit").stream(1, steps=1, generator=gen())
    unbounded.step()
    assert not unbounded.cache.full()  # all frames kept: never graphable


def test_cuda_graphs_need_cuda():
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA model"):
        tiny("scd-msc").stream(1, steps=1).use_cuda_graphs()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("family,kw", [("scd-msc", {}), ("causal-dit", {"dense_window_frames": 8})])
@pytest.mark.parametrize("context_noise", [0.0, 0.2])
def test_cuda_graphs_match_eager(family, kw, context_noise):
    """Replayed denoising and commit passes give the eager frames, past the point where
    the caches fill and the commit pass is captured too."""
    model = tiny(family, **kw).cuda()
    prompt = video(f=3).cuda()
    runs = []
    for graphs in (False, True):
        session = model.stream(2, steps=2, prompt=prompt, context_noise=context_noise,
                               generator=torch.Generator("cuda").manual_seed(1))
        if graphs:
            session.use_cuda_graphs()
        runs.append(torch.stack([session.step() for _ in range(24)], 1))
    assert (runs[0] - runs[1]).abs().max() <= 1e-3
