"""``scd-msc eval``: the report files and keys, the metric code, and the frame
alignment of the protocol (an oracle that knows the future scores a perfect match)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from scd_msc.cli import main
from scd_msc.data import ClipDataset, make_shards
from scd_msc.inference.evaluate import PSNR_MAX, colour_ratios, evaluate, frame_metrics, worst_ratio
from scd_msc.inference.report import write_report
from scd_msc.media import to_uint8

K, N = 3, 4  # context and horizon: 7 of the 8 frames of each clip


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[int, str]:
    out = {}
    for size in (32, 16):
        folder = tmp_path_factory.mktemp(f"eval{size}")
        make_shards("moving-digits", folder, 8, size, clips=3, channels=1, seed=2, progress=False)
        out[size] = str(folder / "*.tar")
    return out


def test_eval_writes_report(tmp_path, shards, capsys):
    out = tmp_path / "report"
    argv = ["eval", "--preset", "scd-msc-tiny", "--shards", shards[32], "--context", str(K), "--horizon",
            str(N), "--clips", "3", "--steps", "2", "--batch", "2", "--out", str(out), "--seed", "3"]
    assert main(argv) == 0
    summary = json.loads((out / "eval.json").read_text())
    for key in ("per_horizon", "mean_psnr_1_8", "mean_ssim_1_8", "model", "family", "preset", "checkpoint",
                "clips", "context", "horizon", "steps", "seed"):
        assert key in summary, key
    assert (summary["clips"], summary["context"], summary["horizon"], summary["seed"]) == (3, K, N, 3)
    assert summary["family"] == "scd-msc" and summary["model"]["image_size"] == 32
    rows = summary["per_horizon"]
    assert [r["step"] for r in rows] == list(range(1, N + 1))
    assert all(math.isfinite(r["psnr"]) and -1 <= r["ssim"] <= 1 for r in rows)
    assert summary["mean_psnr_1_8"] == pytest.approx(sum(r["psnr"] for r in rows) / N, rel=1e-5)
    per_clip = summary["clip_psnr_1_8"]  # the same mean, clip by clip (for paired comparisons)
    assert len(per_clip) == 3 and summary["mean_psnr_1_8"] == pytest.approx(sum(per_clip) / 3, rel=1e-5)
    assert summary["shuffled_actions"] is None  # no actions: the true scores and the floor only
    floor = summary["repeat_last"]
    assert [r["step"] for r in floor["per_horizon"]] == list(range(1, N + 1)) and len(floor["clip_psnr_1_8"]) == 3
    assert "| 1 |" in (out / "eval.md").read_text()
    strip = Image.open(out / "strip.png")
    assert strip.height > 2 * 3 * 32 and strip.width > (K + N) * 32  # 3 clips × 2 rows, 7 frames
    assert Image.open(out / "strip.gif").n_frames == K + N
    printed = capsys.readouterr().out
    assert "mean over steps 1..4: PSNR" in printed and "mean over steps 1..4, repeat last context frame" in printed
    assert "shuffled" not in printed


def test_eval_errors(tmp_path, shards, capsys):
    base = ["eval", "--preset", "scd-msc-tiny", "--out", str(tmp_path / "r"), "--steps", "1"]
    cases = [(["--shards", shards[16], "--context", "2", "--horizon", "2"], "skipped: wrong_size=3"),
             (["--shards", shards[32], "--context", "0", "--horizon", "2"], "--context=0: expected an integer >= 1"),
             (["--shards", shards[32], "--context", "2", "--horizon", "2", "--context-noise", "-0.5"],
              "--context-noise=-0.5: expected a number in [0, 1)"),
             (["--shards", shards[32], "--context", "4", "--horizon", "8"], "skipped: too_short=3")]
    for extra, message in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert "scd-msc eval: error:" in err and message in err
    assert not (tmp_path / "r").exists()


def test_metrics_of_a_perfect_and_a_noisy_prediction():
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 3, 1, 32, 32, generator=g) * 2 - 1  # (B, F, C, H, W)
    psnr, ssim = frame_metrics(truth.clone(), truth)
    assert psnr.shape == ssim.shape == (2, 3)
    assert (psnr == PSNR_MAX).all() and torch.allclose(ssim, torch.ones(2, 3))  # identical: 100 dB, not inf
    noisy = truth + 0.1 * torch.randn(truth.shape, generator=g)
    psnr, ssim = frame_metrics(noisy, truth)
    # noise of std 0.1 on [-1, 1] is 0.05 on [0, 1]: PSNR = -10 log10(0.05²) ≈ 26 dB
    assert psnr.mean().item() == pytest.approx(26.0, abs=1.0) and (ssim < 0.99).all()
    with pytest.raises(ValueError, match="same"):
        frame_metrics(truth[:, :2], truth)


class Oracle(nn.Module):
    """A "model" that finds the prompt among the known clips and streams their true
    continuation: scoring it checks that frame j is compared with truth frame k + j."""

    def __init__(self, clips: torch.Tensor):
        super().__init__()
        self.clips = clips  # (M, F, C, H, W)
        self.dummy = nn.Parameter(torch.zeros(1))
        self.cfg = SimpleNamespace(actions=0, classes=0)  # unconditioned

    def stream(self, batch_size, steps, prompt=None, generator=None, cache=True, guidance=1.0,
               context_noise=0.0, sampler=None, compile=None):
        k = prompt.shape[1]
        match = [next(i for i, c in enumerate(self.clips) if torch.equal(c[:k], p)) for p in prompt]
        frames = iter(self.clips[match, k:].unbind(1))  # each (B, C, H, W)

        class Session:
            def step(self):
                return next(frames)
        return Session()


def test_oracle_scores_perfectly(tmp_path, shards):
    data = ClipDataset(shards[32], K + N, 1, 32, resampled=False)
    samples = list(data)
    clips = torch.stack([s["video"] for s in samples])
    batches = [{"video": clips[:2], "key": ["a", "b"]}, {"video": clips[2:], "key": ["c"]}]
    result = evaluate(Oracle(clips), batches, K, steps=1, total=3, examples=2, progress=False)
    assert result.clips == 3 and result.horizon == N
    assert (result.psnr == PSNR_MAX).all() and torch.allclose(result.ssim, torch.ones(3, N))
    assert torch.equal(result.generated, result.truth)  # the strip's rows agree too
    summary = write_report(result, {"model": {"family": "oracle", "parameters": 1, "channels": 1,
                                              "image_size": 32, "preset": "oracle"},
                                    "shards": "-", "steps": 1, "seed": 0, "device": "cpu"}, tmp_path)
    assert summary["mean_psnr_1_8"] == PSNR_MAX and summary["mean_ssim_1_8"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "eval.json").read_text())["per_horizon"][0]["psnr"] == PSNR_MAX


def test_eval_in_bfloat16_records_the_dtype_and_scores_close_to_float32(tmp_path, shards):
    """--dtype bfloat16 casts the model (prompt included); the same seed scores close to float32."""
    scores = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        argv = ["eval", "--preset", "scd-msc-tiny", "--shards", shards[32], "--context", str(K), "--horizon",
                str(N), "--clips", "2", "--steps", "2", "--out", str(out), "--dtype", dtype, "--no-progress"]
        assert main(argv) == 0
        summary = json.loads((out / "eval.json").read_text())
        assert summary["model"]["dtype"] == dtype
        scores[dtype] = summary["mean_psnr_1_8"]
    assert scores["bfloat16"] == pytest.approx(scores["float32"], abs=0.5)


class Previous(nn.Module):
    """A "model" that predicts the last frame committed to its session: autoregressively it
    repeats the last context frame (the floor); teacher-forced it predicts frame ``k + j``
    as the true frame ``k + j - 1``, which checks that the true frames are committed in order."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.cfg = SimpleNamespace(actions=0, classes=0)

    def stream(self, batch_size, steps, prompt=None, generator=None, context_noise=0.0, sampler=None, compile=None):
        class Session:
            last = prompt[:, -1]

            def denoise(self, action=None):
                return self.last.clone()

            def commit(self, frame, action=None):
                self.last = frame

            def step(self, action=None):
                frame = self.denoise(action)
                self.commit(frame, action)
                return frame
        return Session()


def test_teacher_forcing_predicts_from_the_true_history_and_colour_is_measured(tmp_path, shards):
    clips = torch.stack([s["video"] for s in ClipDataset(shards[32], K + N, 1, 32, resampled=False)])  # (3, F, 1, H, W)
    batches = [{"video": clips[:2], "key": ["a", "b"]}, {"video": clips[2:], "key": ["c"]}]
    result = evaluate(Previous(), batches, K, steps=1, total=3, examples=2, progress=False, teacher_forced=True)
    assert torch.equal(result.psnr, result.repeat_last.psnr)  # autoregressive: the floor exactly
    x = (clips.double().clamp(-1, 1) + 1) / 2  # (M, F, 1, H, W) on [0, 1]
    mse = ((x[:, K:] - x[:, K - 1:-1]) ** 2).mean((2, 3, 4))  # frame k+j against the true frame k+j-1
    by_hand = (10 * torch.log10(1 / mse)).clamp(max=PSNR_MAX).float()  # (M, n)
    assert torch.allclose(result.teacher_forced.psnr, by_hand, atol=1e-3)
    assert not torch.allclose(result.teacher_forced.psnr[:, 1:], result.psnr[:, 1:])  # steps 2..n differ
    truth_colour = x[:, K:].mean((3, 4)).float()  # (M, n, 1)
    assert torch.allclose(result.colour_truth, truth_colour, atol=1e-6)
    assert torch.allclose(result.colour, x[:, K - 1:K].expand(-1, N, -1, -1, -1).mean((3, 4)).float(), atol=1e-6)
    summary = write_report(result, {"model": {"family": "previous", "parameters": 1, "channels": 1,
                                              "image_size": 32, "preset": "previous"},
                                    "shards": "-", "steps": 1, "seed": 0, "device": "cpu"}, tmp_path)
    assert summary["teacher_forced"]["mean_psnr_1_8"] == pytest.approx(by_hand.mean().item(), rel=1e-4)
    colour = summary["mean_colour"]
    ratio = x[:, K - 1].mean() / x[:, K:].mean()  # one window of n < 64 steps, one channel
    assert colour["ratios"] == [[pytest.approx(ratio.item(), rel=1e-4)]]
    assert colour["worst_ratio"] == pytest.approx(ratio.item(), rel=1e-4) and len(colour["generated"]) == N
    assert "teacher-forced PSNR" in (tmp_path / "eval.md").read_text()
    examples = np.load(tmp_path / "examples.npz")
    assert list(examples["keys"]) == ["a", "b"] and examples["truth"].shape == (2, K + N, 32, 32, 1)
    assert np.array_equal(examples["truth"], to_uint8(clips[:2], "e f c h w -> e f h w c"))
    assert np.array_equal(examples["generated"][:, K:], np.repeat(examples["truth"][:, K - 1:K], N, axis=1))


def test_colour_ratios_per_window_and_the_worst():
    colour = torch.tensor([[[0.5, 0.2]] * 3])  # (M=1, n=3, C=2)
    truth = torch.tensor([[[0.5, 0.1], [0.5, 0.1], [1.0, 0.4]]])
    ratios = colour_ratios(colour, truth, window=2)  # steps 1-2, then step 3
    assert torch.allclose(ratios, torch.tensor([[1.0, 2.0], [0.5, 0.5]]))
    assert worst_ratio(ratios) == pytest.approx(2.0)
    assert worst_ratio(torch.tensor([[0.7, 1.2]])) == pytest.approx(0.7)
