"""Benchmark tools (run as ``python -m tools.X`` from the repository root; imported here as
``tools.*`` through pytest's ``pythonpath``): the shared timing/report helpers,
``python -m tools.bench_attention --quick`` end to end on CPU (it must write its .md and
.json report), the latency tool's one-line errors, and the quality report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tools.attention_report import attn_flops
from tools.bench.env import gpu_slug, slug_from_name
from tools.bench.report import command_line, write_report
from tools.bench.timing import measure, time_cuda

ROOT = Path(__file__).resolve().parents[1]


def test_attn_flops_counts_qk_and_pv():
    assert attn_flops(pairs=10, heads=2, head_dim=8, batch=3) == 4 * 8 * 10 * 2 * 3


@pytest.mark.parametrize("name, slug", [
    ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA A100-SXM4-80GB", "a100"),
    ("NVIDIA H200", "h200"), ("NVIDIA GeForce RTX 4090", "rtx4090"),
    ("Tesla V100-SXM2-16GB", "v100"),
])
def test_gpu_slug(name, slug):
    assert slug_from_name(name) == slug
    assert gpu_slug("cpu") == "cpu"


def test_time_cuda_and_measure_on_cpu():
    t = time_cuda(lambda: torch.ones(8).sum(), warmup=1, iters=5, device="cpu")
    assert t["iters"] == 5 and 0 < t["min_ms"] <= t["median_ms"] <= t["p90_ms"]
    ok = measure(lambda: (lambda: torch.ones(8).sum()), "cpu", budget_ms=5, max_iters=5)
    assert ok["status"] == "ok" and ok["median_ms"] > 0 and ok["first_call_s"] > 0

    def broken():
        raise ValueError("no such kernel")

    assert measure(broken, "cpu")["status"] == "error"
    skipped = measure(broken, "cpu", skip_errors=(ValueError,))
    assert skipped["status"] == "skipped" and "no such kernel" in skipped["error"]


def test_write_report(tmp_path):
    md, js = write_report(tmp_path / "x_cpu_2000-01-01", "T", "python t.py", {"a": 1},
                             [{"case": "c|d", "ms": 1.5}], "## Extra\n", {"more": [1]})
    text = md.read_text()
    assert "python t.py" in text and "## Extra" in text and "c\\|d" in text
    data = json.loads(js.read_text())
    assert data["rows"] == [{"case": "c|d", "ms": 1.5}] and data["more"] == [1]
    assert {"torch", "gpu", "natten"} <= set(data["env"])


def test_bench_attention_quick_writes_report(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tools.bench_attention", "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("|")  # the table is printed last
    (md,) = list(tmp_path.glob("attention_cpu_*.md"))
    (js,) = list(tmp_path.glob("attention_cpu_*.json"))
    assert md.stem == js.stem
    data = json.loads(js.read_text())
    assert {"title", "command", "date", "env", "config", "rows", "bars", "ratios", "flops",
            "paper_estimate"} <= set(data)
    rows = data["rows"]
    assert {"size", "case", "mode", "median_ms", "p90_ms", "gflop", "tflops", "x_dense",
            "x_fcausal", "first_call_s", "status", "error"} <= set(rows[0])
    assert {r["status"] for r in rows} <= {"ok", "skipped"}, [r for r in rows if r["error"]]
    ran = {(r["case"], r["mode"]) for r in rows if r["status"] == "ok"}
    for case in ("dense/sdpa", "dense/frame-causal-reference", "hires/reference", "lowres/reference",
                 "layer/msc-reference", "layer/dense-sdpa", "layer/frame-causal-reference"):
        assert {(case, "fwd"), (case, "fwd+bwd")} <= ran
    assert all(r["median_ms"] > 0 and r["tflops"] > 0 for r in rows if r["status"] == "ok")
    assert all(r["x_dense"] == pytest.approx(1.0) for r in rows if r["case"] == "dense/sdpa")
    assert len(data["bars"]) == 5 and {b["result"] for b in data["bars"]} <= {"PASS", "FAIL", "N/A"}
    assert data["paper_estimate"][0]["paper dense/MSC"] > 1
    text = md.read_text()
    for heading in ("## Environment", "## Config", "## Bar checks", "## FLOPs the masks need",
                    "complexity estimate", "## Notes", "## Table"):
        assert heading in text
    assert "--quick" in text
    assert data["command"] == f"python -m tools.bench_attention --quick --out {tmp_path}"


def test_command_line_is_the_module_command_to_type_again():
    assert command_line("tools.bench_latency", ["--batch", "1", "8", "--out", "my dir"]) == (
        "python -m tools.bench_latency --batch 1 8 --out 'my dir'")


def test_bench_latency_without_cuda_names_what_is_missing_in_one_line(tmp_path):
    """On a CPU-only machine the README command exits 2 with one line, writing nothing."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "tools.bench_latency", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr[-3000:]
    (line,) = proc.stderr.splitlines()
    assert line.startswith("python -m tools.bench_latency: error: no CUDA GPU") and "--device cpu" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps=0: expected an integer >= 1"),
    (["--batch", "1", "0"], "--batch=[1, 0]: expected integers >= 1"),
    (["--curve-frames", "-1"], "--curve-frames=-1: expected an integer >= 0"),
    (["--size", "huge"], "--size='huge': expected one of tiny, small, base"),
])
def test_bench_latency_bad_arguments_are_one_line(argv, message, capsys):
    from tools import bench_latency

    assert bench_latency.main([*argv, "--device", "cpu"]) == 2
    assert capsys.readouterr().err == f"python -m tools.bench_latency: error: {message}\n"


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps=0: expected an integer >= 1"),
    (["--warmup", "0"], "--warmup=0: expected an integer >= 1"),
    (["--devices", "1", "0"], "--devices=[1, 0]: expected integers >= 1"),
    (["--batch-sizes", "8", "0"], "--batch-sizes=[8, 0]: expected integers >= 1"),
    (["--strategies", "ddp", "deepspeed"], "--strategies='deepspeed': expected one of ddp, fsdp"),
])
def test_bench_training_bad_arguments_are_one_line(argv, message, capsys):
    from tools import bench_training

    with pytest.raises(SystemExit) as exit_:
        bench_training.main(["--configs", "configs/moving_digits_tiny.yaml", *argv])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"python -m tools.bench_training: error: {message}"


def test_bench_training_headline_is_each_presets_fastest_one_gpu_row():
    """The JSON's ``<preset>_clips_per_s`` / ``_mfu`` come from the fastest single-GPU row
    of that preset (a batch sweep), never from a multi-GPU row."""
    from tools.bench_training import headline

    row = lambda preset, devices, batch, sps, mfu: dict(preset=preset, devices=devices, batch_per_gpu=batch,
                                                       samples_per_s=sps, mfu=mfu)
    rows = [row("scd-msc-small", 1, 8, 40.0, 0.20), row("scd-msc-small", 1, 16, 55.0, 0.27),
            row("scd-msc-small", 2, 16, 100.0, 0.25), row("causal-dit-small", 1, 8, 30.0, None)]
    assert headline(rows) == {"scd_msc_small_clips_per_s": 55.0, "scd_msc_small_mfu": 0.27,
                              "scd_msc_small_batch": 16, "causal_dit_small_clips_per_s": 30.0,
                              "causal_dit_small_mfu": None, "causal_dit_small_batch": 8}


def test_bench_training_scaling_is_per_strategy_against_its_own_least_count():
    """Efficiency of a row = its samples/s ÷ (n/m × those of the same config, batch and
    strategy at the least count m); the JSON's ``ddp_efficiency_8`` is that of DDP at 8."""
    from tools.bench_training import scaling

    row = lambda strategy, devices, sps, batch=16: dict(config="doom_small", batch_per_gpu=batch,  # noqa: E731
                                                         strategy=strategy, devices=devices, samples_per_s=sps)
    rows = [row("ddp", 1, 100.0), row("ddp", 2, 190.0), row("ddp", 8, 720.0),
            row("fsdp", 1, 80.0), row("fsdp", 2, 160.0), row("fsdp", 8, 480.0), row("ddp", 8, 1.0, batch=32),
            row("ddp", 1, 2.0, batch=32)]
    out = scaling(rows)
    assert out["scaling"] == {"ddp": {"1": 100.0, "2": 190.0, "8": 720.0}, "fsdp": {"1": 80.0, "2": 160.0, "8": 480.0}}
    assert out["ddp_efficiency_8"] == pytest.approx(0.9) and out["ddp_efficiency_2"] == pytest.approx(0.95)
    assert out["fsdp_efficiency_8"] == pytest.approx(0.75) and out["fsdp_efficiency_2"] == pytest.approx(1.0)
    assert [r["speedup"] for r in rows] == pytest.approx([1, 1.9, 7.2, 1, 2, 6, 0.5, 1])
    assert "ddp_efficiency_1" not in out
    at_two = scaling([row("ddp", 2, 200.0), row("ddp", 4, 360.0)])  # no 1-GPU run: no efficiency keys
    assert at_two == {"scaling": {"ddp": {"2": 200.0, "4": 360.0}}}


def test_bench_latency_cpu_smoke_run_writes_its_report(tmp_path):
    """The README's CPU smoke command (in-process): every model timed, the training step
    timed with the training optimizer, the .md/.json/.png report written."""
    from tools import bench_latency

    argv = ["--device", "cpu", "--size", "tiny", "--steps", "2", "--context", "2", "--batch", "1",
            "--frames", "2", "--warmup", "1", "--curve-frames", "3", "--train-batch", "1",
            "--train-frames", "2", "--train-iters", "1", "--train-warmup", "1", "--out", str(tmp_path)]
    assert bench_latency.main(argv) == 0
    (js,) = tmp_path.glob("latency_cpu_*.json")
    assert js.with_suffix(".md").exists() and js.with_name(js.stem + ".png").exists()
    data = json.loads(js.read_text())
    assert data["command"] == "python -m tools.bench_latency " + " ".join(argv)
    assert [r["model"] for r in data["rows"]] == ["scd-msc-tiny", "scd-dense-tiny", "causal-dit-tiny"]
    assert all(r["e2e_ms"] >= r["denoise_ms"] > 0 for r in data["rows"])
    assert [t["model"] for t in data["train"]] == ["scd-msc-tiny", "causal-dit-tiny"]
    assert all(t["step_ms"] > 0 for t in data["train"]) and "build_optimizer" in data["config"]["train"]
    assert len(data["curves"][0]["ms"]) == 3 and data["config"]["sampler"] == "euler"


def test_bench_latency_families_subset_times_only_those_and_leaves_the_rest_none(tmp_path):
    """``--families scd-msc --prefix`` with the curve, generate and training off: only
    SCD-MSC and its prefix twin are timed; ratios against families not run are None, not
    made up; no plot is written (no curve)."""
    from tools import bench_latency

    argv = ["--device", "cpu", "--size", "tiny", "--steps", "2", "--context", "2", "--batch", "1",
            "--frames", "2", "--warmup", "1", "--families", "scd-msc", "--prefix", "--curve-frames", "0",
            "--cli-frames", "0", "--train-iters", "0", "--out", str(tmp_path)]
    assert bench_latency.main(argv) == 0
    (js,) = tmp_path.glob("latency_cpu_*.json")
    assert not list(tmp_path.glob("*.png"))
    data = json.loads(js.read_text())
    assert [r["model"] for r in data["rows"]] == ["scd-msc-tiny", "scd-msc-tiny+prefix"]
    assert data["families"] == ["scd-msc-tiny"] and data["scd_msc_ms_per_frame"] == data["rows"][0]["e2e_ms"]
    assert data["scd_dense_ms_per_frame"] is None and data["speedup_vs_scd_dense"] is None
    assert data["train"] == [] and data["train_speedup"] is None and data["curves"] == []
    prefix = data["prefix"]["scd-msc-tiny+prefix"]
    assert prefix["denoise_speedup_vs_recompute"] == data["rows"][0]["denoise_ms"] / prefix["denoise_ms"]


def test_kernel_time_sums_device_time_per_step_and_ranks_kernels():
    """The profiler's CUDA kernels (CPU events ignored) summed per step and ranked by time."""
    from types import SimpleNamespace

    from torch.profiler import DeviceType

    from tools.bench.kernels import kernel_time

    def event(name, us, device=DeviceType.CUDA):
        return SimpleNamespace(name=name, device_type=device, time_range=SimpleNamespace(elapsed_us=lambda: us))

    events = [event("gemm", 30.0), event("na3d_fwd", 50.0), event("gemm", 30.0), event("cpu_op", 999.0, DeviceType.CPU),
              event("norm", 5.0), event("gemm", 30.0), event("gemm", 30.0)]
    t = kernel_time(events, steps=2, top=2)
    assert t["kernels_per_step"] == 6 / 2 and t["kernel_us_per_step"] == (4 * 30 + 50 + 5) / 2
    assert t["top"] == [{"kernel": "gemm", "calls_per_step": 2.0, "us_per_step": 60.0},
                        {"kernel": "na3d_fwd", "calls_per_step": 0.5, "us_per_step": 25.0}]
    from tools.bench.latency_report import kernel_time_lines

    (line,) = kernel_time_lines({"m": {"eager": {"kernel_us_per_step": 1.0, "top": []}, "compiled": t}},
                                {"m": 0.2}, steps=2)  # the last mode profiled; 0.2 ms per 2 steps
    assert line == ("- m (compiled): kernels 88 µs per step of 100 µs timed per step; "
                    "slowest: gemm 60 µs ×2; na3d_fwd 25 µs ×0.5")


def test_bench_latency_does_not_import_lightning():
    """Its training step reuses scd_msc.training.optim.build_optimizer, not the LightningModule."""
    code = "import sys, tools.bench_latency; print(sorted(m for m in sys.modules if 'lightning' in m))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr[-3000:]


def test_quality_report_reads_back_tiled_generate_gifs_and_measures_mass(tmp_path):
    """A GIF written by ``generate``'s writers (videos tiled side by side) splits back into
    the exact videos; a video that doubles in brightness after its prompt has mass ratio 2."""
    from scd_msc.media import GifWriter, to_uint8
    from tools import quality_report as qr

    g = torch.Generator().manual_seed(0)
    video = torch.rand(3, 6, 1, 16, 16, generator=g) * 0.4 - 1  # (V, T, C, H, W), dim frames in [-1, -0.6]
    video[:, 2:] = (video[:, 2:] + 1) * 2 - 1  # frames 2.. twice as bright (on [0, 1])
    writer = GifWriter(tmp_path / "long.gif")
    for t in range(6):
        writer.write(to_uint8(video[:, t]))  # (H, V·W, 1)
    writer.close()
    back = qr.gif_videos(tmp_path / "long.gif", 16)  # (V, T, H, W) in [0, 1]
    expect = torch.from_numpy(to_uint8(video.flatten(0, 1)).astype("float32") / 255)  # (H, V·T·W, 1)
    expect = expect[..., 0].reshape(16, 3, 6, 16).permute(1, 2, 0, 3)  # (V, T, H, W)
    assert back.shape == (3, 6, 16, 16) and torch.equal(torch.from_numpy(back), expect)
    curves = qr.mass_curves(back, prompt=2)
    assert curves["ratio_to_prompt"][:2] == pytest.approx([1.0, 1.0], rel=0.05)
    assert curves["ratio_to_prompt"][2:] == pytest.approx([2.0] * 4, rel=0.05)
    gap = qr.paired_gap([10.0, 12.0, None], [9.0, 10.0, 8.0])  # tools.bench.stats, used by the report
    assert gap["clips"] == 2 and gap["mean"] == pytest.approx(1.5)


def test_quality_report_end_to_end_mass_bar_is_scd_msc_s_and_variants_are_tabled(tmp_path):
    """From hand-made eval folders, GIFs and shards: SCD-MSC keeps the training mass (PASS),
    the DiT doubles it (reported, not gating), a variant row carries its eval and run."""
    from scd_msc.data.shards import make_shards
    from scd_msc.media import GifWriter
    from tools import quality_report as qr

    make_shards("moving-digits", tmp_path / "train", 16, 32, clips=8, shard_size=8, seed=0, progress=False)
    shards = str(tmp_path / "train" / "shard-000000.tar")
    ref = qr.training_mass(shards, 16, 32, 8)["mean"]
    rng = np.random.default_rng(0)

    def gif(name, scale):  # 2 videos of 64 frames whose mass is `scale` x the training mean
        path = tmp_path / f"{name}.gif"
        writer = GifWriter(path)
        for t in range(64):
            frame = (rng.random((32, 64, 1)) < ref * (scale if t >= 4 else 1)).astype(np.uint8) * 255
            writer.write(frame)
        writer.close()
        return str(path)

    def evaluation(name, psnr, t_c):
        folder = tmp_path / name
        folder.mkdir()
        per = [{"step": j + 1, "psnr": psnr, "ssim": 0.5} for j in range(16)]
        (folder / "eval.json").write_text(json.dumps({
            "mean_psnr_1_8": psnr, "mean_ssim_1_8": 0.5, "per_horizon": per, "clip_keys": ["a", "b"],
            "clip_psnr_1_8": [psnr, psnr + 1], "clips": 2, "context": 4, "horizon": 16, "steps": 25,
            "shards": "held-out", "context_noise": t_c}))
        return str(folder)

    runs = {n: tmp_path / f"run_{n}" for n in ("scd", "dit", "clean")}
    for name, run in runs.items():
        run.mkdir()
        (run / "config.yaml").write_text(f"model:\n  flow:\n    context_noise_max: {0.3 if name == 'scd' else 0.0}\n")
    argv = ["--scd-msc", evaluation("e_scd", 14.0, 0.1), gif("scd", 1.0), str(runs["scd"]),
            "--causal-dit", evaluation("e_dit", 11.0, 0.1), gif("dit", 2.0), str(runs["dit"]),
            "--variant", "clean", gif("clean", 1.6), evaluation("e_clean", 13.0, 0.0), str(runs["clean"]),
            "--variant", "t_c=0", gif("tc0", 1.2), "--train-shards", shards, "--clip-frames", "16",
            "--size", "32", "--reference-clips", "8", "--out", str(tmp_path / "bench")]
    assert qr.main(argv) == 0
    data = json.loads(next((tmp_path / "bench").glob("*.json")).read_text())
    assert data["scd_msc_mass_ratio_at_4x"] == pytest.approx(1.0, abs=0.15)
    assert data["causal_dit_mass_ratio_at_4x"] == pytest.approx(2.0, abs=0.3)
    assert "for SCD-MSC: PASS (the baseline, for reference: outside)" in data["checks"][1]
    assert "bar: SCD-MSC at most 0.5 dB below: PASS" in data["checks"][0]
    rows = {r["model"]: r for r in data["settings"]}
    assert rows["clean"]["train t_ctx max"] == 0.0 and rows["clean"]["psnr_1_8"] == 13.0
    assert rows["SCD-MSC"]["train t_ctx max"] == 0.3 and rows["SCD-MSC"]["t_c"] == 0.1
    assert rows["clean"]["mass ÷ training"] == pytest.approx(1.6, abs=0.25)
    assert rows["t_c=0"]["psnr_1_8"] is None and rows["t_c=0"]["mass ÷ prompt"] == pytest.approx(1.2, abs=0.2)
    assert "## Every model and setting" in next((tmp_path / "bench").glob("*.md")).read_text()
    with pytest.raises(SystemExit):
        qr.main(argv + ["--variant", "only-a-label"])


def test_decoder_context_report_pairs_clips_and_refuses_mismatches(tmp_path, capsys):
    """prefix − recompute from two eval.json files: the mean gap, the paired interval,
    the bar's verdict; other clips or a run of the other setting are one-line errors."""
    import json

    from tools import decoder_context_report

    def setting(name: str, psnr: list[float], keys: list[str]) -> list[str]:
        (tmp_path / f"eval_{name}").mkdir()
        (tmp_path / f"run_{name}").mkdir()
        (tmp_path / f"eval_{name}" / "eval.json").write_text(json.dumps(
            {"mean_psnr_1_8": sum(psnr) / len(psnr), "mean_ssim_1_8": 0.5, "clips": len(psnr),
             "clip_keys": keys, "clip_psnr_1_8": psnr}))
        (tmp_path / f"run_{name}" / "config.yaml").write_text(f"model:\n  decoder_context: {name}\n")
        return [str(tmp_path / f"eval_{name}"), str(tmp_path / f"run_{name}")]

    rec = setting("recompute", [20.0, 22.0, 24.0], ["a", "b", "c"])
    pre = setting("prefix", [19.9, 21.7, 23.9], ["a", "b", "c"])
    assert decoder_context_report.main(["--recompute", *rec, "--prefix", *pre, "--out", str(tmp_path)]) == 0
    report = json.loads(next(tmp_path.glob("decoder_context_*.json")).read_text())
    assert report["prefix_minus_recompute_db"] == pytest.approx(-0.1667, abs=1e-3) and report["pass"] is True
    assert report["paired"]["clips"] == 3 and report["paired"]["mean"] == pytest.approx(-0.1667, abs=1e-3)
    with pytest.raises(SystemExit):
        decoder_context_report.main(["--recompute", *pre, "--prefix", *pre, "--out", str(tmp_path)])
    assert capsys.readouterr().err.splitlines()[-1].endswith("--recompute: its run was trained with "
                                                            "decoder_context=prefix")
    other = setting("other", [1.0, 2.0, 3.0], ["x", "y", "z"])
    (tmp_path / "run_other" / "config.yaml").write_text("model:\n  decoder_context: prefix\n")
    with pytest.raises(SystemExit):
        decoder_context_report.main(["--recompute", *rec, "--prefix", *other, "--out", str(tmp_path)])
    assert "different clips" in capsys.readouterr().err
