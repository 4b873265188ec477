"""Tests of scd_msc.diffusion. The reference problem is a 2-D Gaussian mixture (GMM) whose
optimal rectified-flow velocity E[eps - x0 | x_t] is known in closed form, so sampler error
is told apart from network error. Everything is seeded; the file runs in a few seconds."""

from __future__ import annotations

import pytest
import torch

from scd_msc.diffusion import SAMPLERS, FlowConfig, FlowMatching, Sampler, SamplerConfig, guided_velocity
from scd_msc.diffusion import sample_euler, sample_heun, shift_timesteps, timestep_schedule

# ----------------------------------------------------------------------------- GMM
# x0 ~ sum_k W_k N(MU_k, SIG_k); K = 3 components in 2-D, float64 throughout.
W = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)  # (K,)
MU = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.5, -2.5]], dtype=torch.float64)  # (K, 2)
SIG = torch.tensor([[[0.5, 0.2], [0.2, 0.3]], [[0.3, -0.1], [-0.1, 0.6]],  # (K, 2, 2)
                    [[0.4, 0.0], [0.0, 0.2]]], dtype=torch.float64)


def gmm_moments() -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean (2,) and covariance (2, 2) of the mixture."""
    mean = W @ MU
    second = torch.einsum("k,kij->ij", W, SIG + MU[:, :, None] * MU[:, None, :])
    return mean, second - torch.outer(mean, mean)


def gmm_sample(n: int, g: torch.Generator) -> torch.Tensor:
    """(n, 2) float64 draws from the mixture."""
    k = torch.multinomial(W, n, replacement=True, generator=g)  # (n,)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return MU[k] + torch.einsum("nij,nj->ni", torch.linalg.cholesky(SIG)[k], z)


def gmm_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Exact v(x, t) = E[eps - x0 | x_t = x], x: (N, 2), t: (N,). Given component k, x_t ~
    N(m_k, S_k), m_k = (1-t) MU_k, S_k = (1-t)^2 SIG_k + t^2 I, so with r = x - m_k (Gaussian
    conditioning): E[eps | x, k] = t S_k^-1 r, E[x0 | x, k] = MU_k + (1-t) SIG_k S_k^-1 r, and
    posterior weights w_k ∝ W_k N(x; m_k, S_k)."""
    x, t = x.double(), t.double()[:, None, None]  # (N, 2), (N, 1, 1)
    s = (1 - t)[..., None] ** 2 * SIG + t[..., None] ** 2 * torch.eye(2, dtype=torch.float64)
    a, b, d = s[..., 0, 0], s[..., 0, 1], s[..., 1, 1]  # (N, K) entries of S_k
    det = a * d - b * b
    r = x[:, None, :] - (1 - t) * MU  # (N, K, 2)
    sr = torch.stack([d * r[..., 0] - b * r[..., 1], a * r[..., 1] - b * r[..., 0]], -1)
    sr = sr / det[..., None]  # (N, K, 2) = S_k^-1 r, 2x2 inverse in closed form
    w = torch.softmax(-0.5 * (r * sr).sum(-1) - 0.5 * det.log() + W.log(), -1)  # (N, K)
    v_k = t * sr - MU - (1 - t) * torch.einsum("kij,nkj->nki", SIG, sr)  # (N, K, 2)
    return (w[..., None] * v_k).sum(1)  # (N, 2)


def moment_errors(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(mean error, cov error, SE(mean), SE(cov)) of samples x (n, 2), SEs estimated from x:
    SE(mean_i) = sqrt(Var x_i / n), SE(cov_ij) = sqrt(Var[(x_i - m_i)(x_j - m_j)] / n)."""
    n, (mean, cov), xc = x.shape[0], gmm_moments(), x - x.mean(0)
    prod = (xc[:, :, None] * xc[:, None, :]).reshape(n, 4)  # (n, 4)
    se_cov = (prod.var(0) / n).sqrt().reshape(2, 2)
    return x.mean(0) - mean, torch.cov(x.T) - cov, (x.var(0) / n).sqrt(), se_cov


# ------------------------------------------------------------------------ schedule
@pytest.mark.parametrize("steps,shift", [(1, 3.0), (7, 0.3), (50, 1.0), (50, 0.3), (50, 3.0)])
def test_schedule_endpoints_and_monotone(steps: int, shift: float) -> None:
    s = timestep_schedule(steps, shift)  # (S+1,)
    assert s.shape == (steps + 1,) and s[0].item() == 1.0 and s[-1].item() == 0.0
    assert bool((s[1:] < s[:-1]).all())


def test_shift_behaves_as_documented() -> None:
    base, inner = timestep_schedule(10, 1.0), slice(1, -1)
    assert torch.equal(base, torch.linspace(1, 0, 11, dtype=torch.float64))  # shift 1: identity
    assert bool((timestep_schedule(10, 3.0)[inner] > base[inner]).all())  # more high-noise steps
    assert bool((timestep_schedule(10, 0.5)[inner] < base[inner]).all())
    torch.testing.assert_close(timestep_schedule(10, 3.0), 3 * base / (1 + 2 * base))
    assert shift_timesteps(torch.tensor(0.5), 3.0).item() == pytest.approx(0.75)
    t = torch.rand(100, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    twice = shift_timesteps(shift_timesteps(t, 2.0), 1.5)  # shifts compose multiplicatively
    torch.testing.assert_close(twice, shift_timesteps(t, 3.0))


# ------------------------------------------------------------------ noise process
def test_add_noise_and_target_consistency() -> None:
    g, flow = torch.Generator().manual_seed(0), FlowMatching()
    x0 = torch.randn(2, 3, 4, 5, 7, generator=g, dtype=torch.float64)  # (B, F, C, H, W), odd grid
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = flow.sample_timesteps((2, 3), g).double()  # (B, F)
    x_t, v = flow.add_noise(x0, t, eps), flow.velocity_target(x0, eps)
    torch.testing.assert_close(x_t - t[..., None, None, None] * v, x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(x_t[1, 2], (1 - t[1, 2]) * x0[1, 2] + t[1, 2] * eps[1, 2])
    x_e = flow.add_noise(x0, torch.tensor([[0.0, 1.0, 0.0]] * 2, dtype=torch.float64), eps)
    assert torch.equal(x_e[:, 0], x0[:, 0]) and torch.equal(x_e[:, 1], eps[:, 1])  # exact ends
    assert flow.add_noise(x0[:, 0], t[:, 0], eps[:, 0]).shape == (2, 4, 5, 7)  # per-sample t (B,)
    x_t, t, v = flow.training_inputs(x0.float(), g)  # (B, F, C, H, W), (B, F), (B, F, C, H, W)
    assert x_t.shape == v.shape == x0.shape and t.shape == (2, 3)
    torch.testing.assert_close(x_t - t[..., None, None, None] * v, x0.float(), atol=1e-5, rtol=0)


def test_logit_normal_timesteps() -> None:
    flow = FlowMatching(FlowConfig(logit_normal_mean=0.7, logit_normal_std=0.5))
    t = flow.sample_timesteps((400, 250), torch.Generator().manual_seed(0))  # (B, F)
    assert t.shape == (400, 250) and t.dtype == torch.float32
    assert bool((t > 0).all() & (t < 1).all())
    # median of sigmoid(N(mu, s^2)) is sigmoid(mu); the sample median of 1e5 draws has
    # SE ~ 1.25 * s / sqrt(n) * sigmoid'(mu) = 0.0005 here, so 0.005 is ~10 SE.
    assert t.median().item() == pytest.approx(torch.tensor(0.7).sigmoid().item(), abs=5e-3)
    assert torch.logit(t.double()).std().item() == pytest.approx(0.5, abs=1e-2)  # SE 0.001
    assert torch.equal(t, flow.sample_timesteps((400, 250), torch.Generator().manual_seed(0)))


def test_context_noise_and_multi_batch() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, 4, 4, generator=g)  # (B, F, C, H, W)
    x_same, t0 = FlowMatching().context_noise(x, g)
    assert x_same is x and t0.shape == (2, 5) and not t0.any()
    x_ctx, t_ctx = FlowMatching(FlowConfig(context_noise_max=0.3)).context_noise(x, g)
    assert x_ctx.shape == x.shape and t_ctx.shape == (2, 5) and t_ctx.unique().numel() == 10
    assert bool((t_ctx >= 0).all() & (t_ctx < 0.3).all())
    eps = (x_ctx - (1 - t_ctx[..., None, None, None]) * x) / t_ctx[..., None, None, None]
    assert eps.std().item() == pytest.approx(1.0, abs=0.15)  # added noise is N(0, 1); SE 0.03
    assert FlowMatching().expand_multi_batch(x) is x
    out = FlowMatching(FlowConfig(decoder_multi_batch=3)).expand_multi_batch(x)  # (K*B, F, ...)
    assert torch.equal(out, torch.cat([x, x, x]))  # row k*B + b is x[b]


# ------------------------------------------------------- samplers on the exact GMM flow
@pytest.mark.parametrize("sampler,steps,bias", [(sample_euler, 100, 0.1), (sample_heun, 30, 0.015)])
def test_exact_velocity_recovers_gmm(sampler, steps: int, bias: float) -> None:
    """20k samples; tolerance = 4 standard errors (estimated from the samples) + a budget for
    the discretisation bias, measured once with 400k samples: Euler-100 shrinks var_x by 0.060
    (0.116 at 50 steps: first order), Heun-30 by 0.006; mean bias < 0.002. Budgets ~2x those."""
    noise = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.double)
    d_mean, d_cov, se_mean, se_cov = moment_errors(sampler(gmm_velocity, noise, steps))
    assert bool((d_mean.abs() <= 4 * se_mean + 0.01).all()), (d_mean, se_mean)
    assert bool((d_cov.abs() <= 4 * se_cov + bias).all()), (d_cov, se_cov)


def test_convergence_order() -> None:
    """Path-wise error against a 400-step Heun reference halves (Euler) / quarters (Heun)."""
    noise = torch.randn(1000, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref = sample_heun(gmm_velocity, noise, 400)
    err = lambda f, steps: (f(gmm_velocity, noise, steps) - ref).norm(dim=1).mean().item()  # noqa
    assert 1.7 < err(sample_euler, 20) / err(sample_euler, 40) < 2.3  # measured 2.00
    assert 3.3 < err(sample_heun, 20) / err(sample_heun, 40) < 4.7  # measured 3.97


# --------------------------------------------------------------- training end to end
def test_trained_mlp_matches_gmm() -> None:
    """500 Adam steps of a 2-layer MLP with FlowMatching.loss, then Heun-20 sampling. The loss
    floor is the exact field's loss (~2.28); the untrained net starts near 3.05; we ask for >= 75%
    of that gap closed (measured ~87%, seeds 0-4). Samples must match the mean to 0.15 (measured
    <= 0.045; sqrt(tr Cov) = 2.3) and the covariance to 20% relative Frobenius (measured 9-10%),
    loose against the 10k-sample SE (~0.02): a small net slightly over-disperses."""
    torch.manual_seed(0)  # initial weights only; data and noise come from `g`
    g, flow, nn = torch.Generator().manual_seed(0), FlowMatching(), torch.nn
    net = nn.Sequential(nn.Linear(3, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(),
                        nn.Linear(128, 2))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 500)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # (N, 2), (N,) -> (N, 2)
        return net(torch.cat([x, t[:, None]], -1))

    losses = []
    for _ in range(500):
        x0 = gmm_sample(1024, g).float()  # (N, 2)
        t = flow.sample_timesteps((1024,), g)  # (N,)
        eps = torch.randn(x0.shape, generator=g)
        loss = flow.loss(velocity(flow.add_noise(x0, t, eps), t), flow.velocity_target(x0, eps))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())

    x0, t = gmm_sample(100_000, g), flow.sample_timesteps((100_000,), g).double()
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)  # floor: exact field's loss
    floor = flow.loss(gmm_velocity(flow.add_noise(x0, t, eps), t), flow.velocity_target(x0, eps))
    first, last = sum(losses[:20]) / 20, sum(losses[-50:]) / 50  # loss falls towards floor
    assert last - floor.item() < 0.25 * (first - floor.item()), (first, last, floor)
    with torch.no_grad():
        x = sample_heun(velocity, torch.randn(10_000, 2, generator=g), 20).double()  # (N, 2)
    mean, cov = gmm_moments()
    assert (x.mean(0) - mean).norm().item() < 0.15
    assert ((torch.cov(x.T) - cov).norm() / cov.norm()).item() < 0.2


# ---------------------------------------------------------------- guidance and hooks
@pytest.mark.parametrize("sampler,evals", [(sample_euler, 8), (sample_heun, 15)])
def test_guidance(sampler, evals: int) -> None:
    proj, calls = torch.randn(4, 15, generator=torch.Generator().manual_seed(1)), []
    noise = torch.randn(6, 3, 5, generator=torch.Generator().manual_seed(2))  # (N, 3, 5)
    c = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))  # (N, 4) context

    def fn(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # nonlinear in c
        calls.append(1)
        return torch.tanh(x + (c @ proj).reshape(x.shape)) * (1 + t[:, None, None])

    rng_state, gen = torch.random.get_rng_state(), torch.Generator().manual_seed(0)
    plain = sampler(lambda x, t: fn(x, t, c), noise, 8)
    calls.clear()
    same = sampler(fn, noise, 8, guidance=1.0, context=c, perturb_scale=0.5, generator=gen)
    assert torch.equal(same, plain) and len(calls) == evals  # guidance 1: one call per eval
    assert torch.equal(sampler(fn, noise, 8, guidance=3.0, context=c, perturb_scale=0.0), plain)
    runs = [sampler(fn, noise, 8, 1.0, 3.0, context=c, perturb_scale=0.5,
                    generator=gen.manual_seed(7)) for _ in range(2)]  # (N, 3, 5) each
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], plain)
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # global RNG untouched
    t = torch.full((6,), 0.4)  # guided_velocity is the documented formula
    v = guided_velocity(fn, noise, t, c, 2.5, 0.3, torch.Generator().manual_seed(0))
    zeta = torch.randn(c.shape, generator=torch.Generator().manual_seed(0))
    v_pert = fn(noise, t, c + 0.3 * zeta)
    torch.testing.assert_close(v, v_pert + 2.5 * (fn(noise, t, c) - v_pert))


def test_callback_and_sampler_object() -> None:
    seen: list[tuple[int, float]] = []
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hook = lambda i, t, x: seen.append((i, t))  # noqa: E731
    x = sample_heun(gmm_velocity, noise, 5, 2.0, callback=hook)
    assert [i for i, _ in seen] == list(range(5))
    assert [t for _, t in seen] == timestep_schedule(5, 2.0)[1:].tolist()  # ends on exactly 0
    sampler = Sampler(SamplerConfig(name="heun", timestep_shift=2.0))
    assert torch.equal(sampler.sample(gmm_velocity, noise, 5), x)
    assert set(SAMPLERS) == {"euler", "heun"}


# ------------------------------------------------------------------------ bad inputs
_V, _VC, _NZ, _X = (lambda x, t: x), (lambda x, t, c: x), torch.zeros(2, 3), torch.zeros(2, 3, 4)
BAD_CALLS = [  # (call, message the ValueError must match)
    *[(lambda s=s: sample_euler(_V, _NZ, s), f"^steps={s!r}: expected an integer >= 1$") for s in (0, -1, 2.5, True)],
    *[(lambda s=s: timestep_schedule(4, s), f"^shift={s!r}: expected a number > 0$")
      for s in (0.0, -1.0, float("nan"))],
    (lambda: sample_heun(_V, _NZ, 4, guidance=2.0), "guidance"),  # guidance needs a context
    (lambda: sample_euler(_VC, _NZ, 4, 1.0, 2.0, context=_NZ, perturb_scale=0.1), "Generator"),
    (lambda: sample_euler(_VC, _NZ, 4, context=_NZ, perturb_scale=-1.0), r"^perturb_scale=-1.0: expected a number >= 0$"),
    *[(lambda k=k, v=v: FlowConfig(**{k: v}), rf"^flow.{k}={v!r}: expected {what}$") for k, v, what in [
        ("logit_normal_std", 0.0, "a number > 0"), ("context_noise_max", 1.5, r"a number in \[0, 1\]"),
        ("decoder_multi_batch", 0, "an integer >= 1"), ("decoder_multi_batch", 2.0, "an integer >= 1")]],
    (lambda: SamplerConfig(timestep_shift=-2.0), r"^runtime.sampler.timestep_shift=-2.0: expected a number > 0$"),
    (lambda: FlowMatching.add_noise(_X, torch.zeros(3), _X), "prefix"),
    (lambda: FlowMatching.add_noise(_X, torch.zeros(2, 3), torch.zeros(2, 3, 5)), "eps shape"),
    (lambda: FlowMatching.loss(_X, torch.zeros(2, 3, 1)), "pred_v shape"),
    (lambda: SamplerConfig(name="dpm"), "^runtime.sampler.name='dpm': expected one of euler, heun$"),
]


@pytest.mark.parametrize("call,match", BAD_CALLS)
def test_bad_inputs_raise(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()

