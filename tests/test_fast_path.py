"""The fast path of streaming (compiled once per model, graph-replayed on CUDA) and the
decoder's context prefix: the same frames as eager, no recompiles across frames or
sessions once the caches are full, the MSC layer traced whole (``fullgraph``)."""

from __future__ import annotations

import pytest
import torch

from scd_msc import build_model
from scd_msc.models import randomize_zero_init
from scd_msc.streaming.fast import resolve_compile

FAMILIES = ["scd-msc", "scd-dense", "causal-dit"]


def tiny(family: str, device: str = "cpu", **kw) -> torch.nn.Module:
    """Zero-initialised layers randomised (else a fresh adaLN-zero model ignores its inputs)."""
    torch.manual_seed(0)
    over = {"dense_window_frames": 4} if family == "causal-dit" else {}
    model = build_model(f"{family}-tiny", backend="reference" if device == "cpu" else "auto", **{**over, **kw})
    assert randomize_zero_init(model) > 0
    return model.to(device).eval()


class CountingBackend:
    """A ``torch.compile`` backend that runs the traced graph as is and counts graphs."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, inputs: list) -> object:
        self.graphs += 1
        return gm.forward


def gen(device: str = "cpu") -> torch.Generator:
    return torch.Generator(device).manual_seed(1)


@pytest.mark.parametrize("family", ["scd-msc", "causal-dit"])
def test_per_step_calls_trace_whole_once_per_model(family):
    """fullgraph=True (a graph break would raise): SCD-MSC's decoder modulation (once per
    frame), decoder call and full-cache encoder commit are three graphs. Later frames and
    more sessions add none, also with what eval passes: views (``actions[:, j]`` of a
    clip's actions; a clip's true frame committed in teacher forcing). A compiled call
    guards on strides, and on CUDA the contiguous copy a graph captures would otherwise
    be compiled inside the capture, where Inductor cannot autotune. The traced calls give
    the eager frames."""
    model, backend = tiny(family, actions=10, classes=3), CountingBackend()
    clip = torch.rand(2, 20, 1, 32, 32, generator=gen()) * 2 - 1  # (B, k + n, C, H, W)
    actions = torch.randint(0, 10, (2, 20), generator=gen())  # (B, k + n)

    def run(action_at, compile=backend, teacher_forced: bool = False) -> torch.Tensor:
        session = model.stream(2, 2, prompt=clip[:, :4], prompt_actions=actions[:, :4], labels=torch.tensor([0, 2]),
                               generator=gen(), compile=compile)
        frames = []
        for j in range(8):  # the caches fill at frame 6
            if teacher_forced:
                frames.append(session.denoise(action_at(j)))
                session.commit(clip[:, 4 + j], action_at(j))
            else:
                frames.append(session.step(action_at(j)))
        return torch.stack(frames, 1)  # (B, 8, C, H, W)

    fast = run(lambda j: actions[:, 4 + j].clone())  # contiguous
    graphs = backend.graphs
    assert graphs == 3 if family == "scd-msc" else graphs > 0
    run(lambda j: actions[:, 4 + j])  # strided: stride 20
    run(lambda j: actions[:, 4:].flip(0)[:, j])  # another stride and offset
    run(lambda j: actions[:, 4 + j], teacher_forced=True)
    assert backend.graphs == graphs
    eager = run(lambda j: actions[:, 4 + j], compile=False)
    assert (fast - eager).abs().max() <= 1e-5


def test_compile_argument():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_compile(None, cpu) is None and resolve_compile(None, cuda) == "inductor"
    assert resolve_compile(True, cpu) == "inductor" and resolve_compile(False, cuda) is None
    assert resolve_compile("aot_eager", cpu) == "aot_eager"
    with pytest.raises(ValueError, match=r"compile=3: expected None \(auto\), True, False or a torch.compile backend"):
        resolve_compile(3, cpu)


@pytest.mark.parametrize("context, conditioning", [("recompute", "token_concat"), ("recompute", "add"),
                                                   ("prefix", "token_concat")])
def test_a_frame_from_the_modulation_table_is_the_frame_from_plain_decoder_calls(context, conditioning):
    """A session makes the decoder's modulation of all S levels once per frame and every
    step reads its rows: its frame equals the sampler run over plain decoder calls, with
    guidance on the conditions too (the table's rows are the conditioned then the null)."""
    from scd_msc.diffusion import Sampler, SamplerConfig

    model = tiny("scd-msc", decoder_context=context, conditioning=conditioning, actions=4, classes=3)
    sampler = Sampler(SamplerConfig(name="heun", timestep_shift=3.0))
    labels, action = torch.tensor([0, 2]), torch.tensor([3, 1])
    for s in (1.0, 2.5):
        session = model.stream(2, 4, generator=gen(), sampler=sampler, labels=labels, cond_guidance=s, compile=False)
        c, g = session.context, gen()
        if context == "prefix":
            cache = model.new_decoder_cache()
            model.decoder_prefix(c, cache)

        def plain(x, t, a, lab):
            if context == "prefix":
                return model.decode_step(x, t, cache, a, lab)
            return model.decode(x, t, c.repeat(x.shape[0] // c.shape[0], 1, 1), a, lab)

        def velocity(x, t):
            if s == 1.0:
                return plain(x, t, action, labels)
            v_cond, v_null = plain(*(torch.cat([u, u]) for u in (x, t)), torch.cat([action, session.null_action]),
                                   torch.cat([labels, session.null_labels])).chunk(2)
            return v_null + s * (v_cond - v_null)

        with torch.no_grad():
            expect = sampler.sample(velocity, sampler.prior((2, 1, 32, 32), g, c.device, c.dtype), 4)
            got = session.denoise(action)
        assert session.table is not None and session.table.shape[:2] == (4, 2 if s == 1.0 else 4)
        torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)


def test_adaln_decoders_make_their_modulation_every_step():
    model = tiny("scd-msc", conditioning="adaln")
    assert model.stream(1, 2, compile=False).levels is None
    with pytest.raises(ValueError, match="conditioning='adaln' adds the context to the adaLN input"):
        model.decoder_modulation(torch.rand(1))
    prefix = tiny("scd-msc", decoder_context="prefix")
    with pytest.raises(ValueError, match="modulation: made beforehand only for decoder_context='recompute'"):
        prefix.decode(torch.rand(1, 1, 32, 32), torch.rand(1), torch.randn(1, 64, 64), modulation=torch.rand(1, 8))


@pytest.mark.parametrize("family", ["scd-msc", "scd-dense"])
def test_prefix_decoder_step_equals_the_stacked_decoder(family):
    """decoder_context='prefix': the context's keys/values computed once give, at every
    step, what the decoder over the whole [c ; x_t] stack gives."""
    model = tiny(family, decoder_context="prefix", actions=3)
    g = torch.Generator().manual_seed(0)
    cache = model.new_decoder_cache()
    for _ in range(2):  # the second prefix is written in place over the first
        x, t = torch.rand(2, 1, 32, 32, generator=g) * 2 - 1, torch.rand(2, generator=g)
        c, a = torch.randn(2, 64, 64, generator=g), torch.randint(0, 4, (2,), generator=g)
        with torch.no_grad():
            model.decoder_prefix(c, cache)
            assert (model.decode_step(x, t, cache, a) - model.decode(x, t, c, a)).abs().max() <= 1e-5
    recompute = tiny(family, actions=3)
    with torch.no_grad():
        assert not torch.allclose(recompute.decode(x, t, c, a), model.decode(x, t, c, a))  # another function


def test_prefix_model_streams_exactly_trains_and_refuses_context_guidance():
    model = tiny("scd-msc", decoder_context="prefix")
    a = model.generate(2, 5, 2, generator=gen(), cache=True)
    b = model.generate(2, 5, 2, generator=gen(), cache=False)
    assert a.std() > 0.1 and (a - b).abs().max() <= 1e-4
    loss = model.training_loss(torch.rand(2, 4, 1, 32, 32) * 2 - 1, gen())["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match=r"guidance=2.0: guidance by perturbing the context needs "
                                         r"decoder_context='recompute'"):
        model.stream(1, 1, guidance=2.0)
    with pytest.raises(ValueError, match=r"model.decoder_context='prefix': expected 'recompute' unless model.conditioning='token_concat'"):
        build_model("scd-msc-tiny", decoder_context="prefix", conditioning="add")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fast path's CUDA graphs need a GPU")
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prefix", [False, True])
def test_fast_path_matches_eager_on_cuda(family, prefix):
    """The default CUDA path (inductor + CUDA graphs) against eager, past the point where
    the caches fill and every call is replayed.

    float32: 24 frames agree to 1e-3 (inductor fuses and reorders reductions: ~1e-6 per
    call, grown by the frames' feedback through the caches; a wrong cache, position or
    graph input gives O(1) errors). bfloat16: the first frame (4 decoder steps, no
    feedback yet) agrees to a relative 2e-2 (‖fast − eager‖ / ‖eager‖): bf16 keeps 8
    mantissa bits, so one operation rounds by up to 2^-9 ≈ 2e-3, and a few dozen fused,
    reordered operations per call land between 1e-3 and 1e-2."""
    if prefix and family == "causal-dit":
        pytest.skip("the DiT has no decoder")
    kw = {"decoder_context": "prefix"} if prefix else {}
    for dtype, frames in ((torch.float32, 24), (torch.bfloat16, 1)):
        model = tiny(family, "cuda", **kw).to(dtype)
        prompt = (torch.rand(2, 3, 1, 32, 32, device="cuda", generator=gen("cuda")) * 2 - 1).to(dtype)
        runs = []
        for compile in (False, None):
            session = model.stream(2, 4, prompt=prompt, generator=gen("cuda"), compile=compile)
            runs.append(torch.stack([session.step() for _ in range(24)], 1)[:, :frames].float())
            assert session.graphs == (compile is None) and (session.setup_seconds > 0) == (compile is None)
        eager, fast = runs
        if dtype == torch.float32:
            assert (fast - eager).abs().max() <= 1e-3
        else:
            assert ((fast - eager).norm() / eager.norm()).item() <= 2e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fast path's CUDA graphs need a GPU")
def test_fast_path_takes_strided_actions_on_cuda():
    """eval's calls on the default CUDA path: ``actions[:, j]`` views, past the point where
    the commit is captured (it once recompiled inside the capture and failed), give the
    eager frames (float32, tolerance as above)."""
    model = tiny("scd-msc", "cuda", actions=10, classes=3)
    actions = torch.randint(0, 10, (2, 20), device="cuda", generator=gen("cuda"))  # (B, k + n)
    prompt = torch.rand(2, 4, 1, 32, 32, device="cuda", generator=gen("cuda")) * 2 - 1
    runs = []
    for compile in (False, None):
        session = model.stream(2, 4, prompt=prompt, prompt_actions=actions[:, :4], labels=torch.tensor([0, 2]).cuda(),
                               generator=gen("cuda"), compile=compile)
        runs.append(torch.stack([session.step(actions[:, 4 + j]) for j in range(16)], 1))
        assert session.graphs == (compile is None)
    assert (runs[1] - runs[0]).abs().max() <= 1e-3
