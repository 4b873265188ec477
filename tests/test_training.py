"""Training layer: a short run writes a loadable checkpoint and logs skipped samples, NaN
stops the run naming the step, SIGKILL/SIGTERM/Ctrl-C leave a checkpoint that
``--resume auto`` continues from (in the same metrics.csv), a truncated last.ckpt names
the step checkpoint to use, a run that fails before its first step leaves no folder, and
two DDP ranks read different clips. Tiny model, 8-frame 32×32 clips, CPU."""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import lightning as L
import numpy as np
import pytest
import torch
import webdataset as wds

from scd_msc.checkpoint import load_checkpoint, load_model
from scd_msc.config import load_config
from scd_msc.data import ClipDataset, make_shards
from scd_msc.data.shards import npy_bytes
from scd_msc.data.synthetic import moving_digits

F, S = 8, 32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, str]:
    """4 train shards × 4 clips (keys clip000000..clip000015), 1 val shard of 4 clips."""
    out = tmp_path_factory.mktemp("shards")
    make_shards("moving-digits", out / "train", F, S, clips=16, shard_size=4, seed=0, progress=False)
    make_shards("moving-digits", out / "val", F, S, clips=4, shard_size=4, seed=1, progress=False)
    return {"train": str(out / "train" / "shard-{000000..000003}.tar"),
            "val": str(out / "val" / "shard-000000.tar")}


def overrides(shards: dict[str, str], out_dir, **extra) -> list[str]:
    """A tiny, fast run: batches of 2 clips, no workers, no progress bar."""
    base = {"preset": "scd-msc-tiny", "runtime.backend": "reference",
            "data.train_shards": shards["train"], "data.val_shards": shards["val"],
            "data.clip_frames": F, "data.batch_size": 2, "data.num_workers": 0, "data.epoch_batches": 5,
            "data.val_batches": 1, "data.shuffle_buffer": 4,
            "train.out_dir": str(out_dir), "train.max_steps": 6, "train.warmup_steps": 2,
            "train.checkpoint_every_n_steps": 3, "train.val_every_n_steps": 0, "train.sample_every_n_steps": 0,
            "train.log_every_n_steps": 1, "train.progress_bar": False, "train.accelerator": "cpu",
            "train.devices": 1}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def metrics(out_dir) -> list[dict]:
    with open(os.path.join(out_dir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def train_steps(rows: list[dict]) -> list[int]:
    return [int(r["step"]) for r in rows if r.get("train/loss")]


def ckpt_step(path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


@pytest.fixture(scope="module")
def dirty_train(tmp_path_factory) -> str:
    """2 shards of 3 good clips and 1 undecodable one each: every pass meets a bad one."""
    out = tmp_path_factory.mktemp("dirty")
    for s in range(2):
        with wds.TarWriter(str(out / f"shard-{s:06d}.tar")) as sink:
            for i in range(3):
                sink.write({"__key__": f"good{s}{i}", "frames.npy": npy_bytes(moving_digits(F, S, 10 * s + i))})
            sink.write({"__key__": f"bad{s}", "frames.npy": b"\x93NUMPY broken"})
    return str(out / "shard-{000000..000001}.tar")


@pytest.fixture(scope="module")
def short_run(shards, dirty_train, tmp_path_factory):
    """6 steps with EMA, validation every 3 steps and a sample strip every 3 steps, on
    training shards with an undecodable sample in each (read by one loader worker)."""
    from scd_msc.training.train import train

    out = tmp_path_factory.mktemp("run")
    cfg = load_config(None, overrides(shards, out, **{
        "train.ema_decay": 0.9, "train.val_every_n_steps": 3, "train.sample_every_n_steps": 3,
        "train.sample_count": 2, "train.sample_frames": 3, "train.sample_steps": 2, "data.num_workers": 1,
        "data.train_shards": dirty_train}))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        last = train(cfg)
    return out, last, multiprocessing.active_children(), printed.getvalue()


def test_short_run_leaves_no_loader_worker_running(short_run):
    """Train/val loader workers are shut down by train() itself (every pass ends its own), not at interpreter exit."""
    assert short_run[2] == []


def test_short_run_writes_a_checkpoint_that_load_model_generates_from(short_run):
    out, last, _, _ = short_run
    assert last == os.path.join(out, "checkpoints", "last.ckpt") and os.path.isfile(last)
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6
    assert ckpt["hyper_parameters"]["config"]["model"]["family"] == "scd-msc"
    keys = ckpt["state_dict"].keys()
    assert any(k.startswith("model.") for k in keys) and any(k.startswith("ema_model.") for k in keys)
    ema, raw = load_model(last, weights="ema"), load_model(last, weights="trained")
    assert not torch.equal(ema.start, raw.start)  # the average is not the trained weights
    video = ema.generate(2, 3, 2, generator=torch.Generator().manual_seed(0))
    assert video.shape == (2, 3, 1, S, S) and torch.isfinite(video).all()


def test_short_run_logs_losses_samples_and_config(short_run):
    out, _, _, _ = short_run
    rows = metrics(out)
    assert train_steps(rows) and all(float(r["train/loss"]) > 0 for r in rows if r.get("train/loss"))
    assert [r for r in rows if r.get("val/loss")], "validation every 3 steps logged val/loss"
    assert any(k.startswith("lr-AdamW") for k in rows[0])
    assert glob.glob(os.path.join(out, "tb", "events.out.tfevents.*"))
    for step in (3, 6):
        for ext in ("png", "gif"):
            assert os.path.isfile(os.path.join(out, "samples", f"step_{step:07d}.{ext}"))
    assert load_config(os.path.join(out, "config.yaml"), []).train.max_steps == 6
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["last.ckpt", "step_0000003.ckpt",
                                                                   "step_0000006.ckpt"]
    assert not os.path.exists(os.path.join(out, "csv")), "one metrics.csv at the top of the run folder"


def test_short_run_logs_and_prints_skipped_samples(short_run):
    """The worker's skip counts reach metrics.csv each step and one summary line at the end."""
    out, _, _, printed = short_run
    rows = [r for r in metrics(out) if r.get("data/train_used")]
    used = [float(r["data/train_used"]) for r in rows]
    bad = [float(r["data/train_skipped_decode_error"] or 0) for r in rows]
    assert used == sorted(used) and used[-1] >= 12  # cumulative: 6 steps of 2 clips (+ the shuffle buffer)
    assert bad == sorted(bad) and bad[-1] >= 3  # one bad sample per 3 good ones
    assert [float(r["data/train_skipped"]) for r in rows] == bad
    line = next(x for x in printed.splitlines() if x.startswith("skipped samples:"))
    n_bad, n_used = int(bad[-1]), int(used[-1])
    assert line.startswith(f"skipped samples: decode_error={n_bad} (of {n_bad + n_used} read); "
                           "validation: none (of "), line


@torch.no_grad()
def val_loss(model, clips: torch.Tensor) -> float:
    """Mean loss over 4 fixed noise draws on the same clips."""
    return sum(model.training_loss(clips, torch.Generator().manual_seed(s))["loss"].item() for s in range(4)) / 4


def test_auto_picks_the_weights_with_the_lower_validation_loss(shards, tmp_path):
    """20 steps at train.ema_decay=0.99 with the warm-up: auto wants 1000 EMA updates, so it
    takes the trained weights, which have the lower validation loss; the warm-up keeps the
    EMA close behind (a constant 0.99 gives about 1.6× the trained loss here). The sample
    strip of the last step is the trained network's."""
    from PIL import Image

    from scd_msc.training.callbacks import video_strip
    from scd_msc.training.train import train

    cfg = load_config(None, overrides(shards, tmp_path, **{
        "train.ema_decay": 0.99, "train.max_steps": 20, "train.lr": 1e-3, "train.checkpoint_every_n_steps": 20,
        "train.sample_every_n_steps": 20, "train.sample_count": 1, "train.sample_frames": 2,
        "train.sample_steps": 1}))
    last = train(cfg)
    auto = load_checkpoint(last)
    assert (auto.weights.weights, auto.weights.ema_updates, auto.weights.auto_from) == ("trained", 20, 1000)
    val = ClipDataset(shards["val"], F, 1, S, resampled=False)
    clips = torch.stack([c["video"] for c in val])  # (4, F, 1, S, S)
    loss = {w: val_loss(load_model(last, weights=w), clips) for w in ("trained", "ema")}
    other = "ema" if auto.weights.weights == "trained" else "trained"
    assert val_loss(auto.model, clips) == loss[auto.weights.weights] < loss[other], loss
    assert loss["ema"] < 1.1 * loss["trained"], loss
    strip = np.asarray(Image.open(tmp_path / "samples" / "step_0000020.png").convert("RGB"))
    for w in ("trained", "ema"):
        noise = torch.Generator().manual_seed(cfg.train.seed)  # SampleStrip's
        video = load_model(last, weights=w).generate(1, 2, 1, generator=noise)  # (1, 2, 1, S, S)
        assert np.array_equal(strip, video_strip(video, 2)) == (w == auto.weights.weights), w


def test_training_noise_comes_from_the_modules_generator(shards, tmp_path):
    """The training noise is drawn from the module's own generator, on its device, seeded
    from [train.seed, rank, start step] when training starts: the first step's loss is
    the objective's with that generator, and code that reseeds the global RNG before every
    batch changes no loss."""
    import copy

    import lightning as L

    from scd_msc.data import ShardDataModule
    from scd_msc.diffusion import training_loss
    from scd_msc.training.module import SCDLitModule

    cfg = load_config(None, overrides(shards, tmp_path))

    class Meddle(L.Callback):
        def __init__(self, seed: int):
            self.seed, self.losses, self.first = seed, [], None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            assert pl_module.noise_generator.device == pl_module.device
            if self.first is None:  # the weights and clips of step 0
                self.first = copy.deepcopy(pl_module.model), batch["video"].clone()
            torch.manual_seed(self.seed + batch_idx)  # someone else using the global RNG

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(outputs["loss"].item())

    def fit(seed: int) -> Meddle:
        torch.manual_seed(0)  # the same init
        module, meddle = SCDLitModule(cfg), Meddle(seed)
        trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                            callbacks=[meddle])
        trainer.fit(module, datamodule=ShardDataModule(cfg.data))
        return meddle

    a, b = fit(1), fit(2)
    assert len(a.losses) == 3 and a.losses == b.losses
    model, video = a.first
    seed = int(np.random.SeedSequence([cfg.train.seed, 0, 0]).generate_state(1)[0])
    expect = training_loss(model, video, cfg.flow, torch.Generator().manual_seed(seed))["loss"]
    assert a.losses[0] == pytest.approx(expect.item(), rel=1e-6)


def test_resume_refuses_a_checkpoint_of_another_model(short_run, shards, tmp_path):
    from scd_msc.training.train import check_resume

    _, last, _, _ = short_run
    cfg = load_config(None, overrides(shards, tmp_path, **{"model.dim": 128}))
    with pytest.raises(ValueError, match=r"model.dim \(64 in the checkpoint, 128 now\)"):
        check_resume(last, cfg)
    same = load_config(None, overrides(shards, tmp_path, **{"runtime.backend": "auto"}))
    assert check_resume(last, same) == 6  # the backend does not change the weights


def test_a_checkpoint_of_the_old_qkv_layout_generates_but_does_not_resume(short_run, shards, tmp_path):
    """A checkpoint saved before the split qkv projections (one ``qkv`` per layer): its
    weights load through the conversion (model and EMA copies, strict), its optimizer
    state cannot be resumed, and the refusal says so in one line."""
    from scd_msc.cli import main
    from scd_msc.training.train import check_resume

    _, last, _, _ = short_run
    ckpt = torch.load(last, weights_only=False)
    state = ckpt["state_dict"]
    for key in [k for k in state if k.endswith(".attn.qkv_hi.weight")]:
        base = key[: -len("qkv_hi.weight")]
        for kind in ("weight", "bias"):
            hi, lo = state.pop(f"{base}qkv_hi.{kind}"), state.pop(f"{base}qkv_lo.{kind}")
            both = torch.cat([hi.unflatten(0, (3, -1)), lo.unflatten(0, (3, -1))], 1)  # (3, h·d[, D])
            state[f"{base}qkv.{kind}"] = both.flatten(0, 1)
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    with pytest.raises(ValueError, match=r"^--resume '.*old.ckpt': the checkpoint's attention layers hold one "
                                         r"qkv projection each \(model\.encoder\.blocks\.0\.attn\.qkv\.weight\)"):
        check_resume(str(old), load_config(None, overrides(shards, tmp_path)))
    assert main(["generate", "--checkpoint", str(old), "--frames", "1", "--steps", "1",
                 "--out", str(tmp_path / "v.mp4"), "--no-progress"]) == 0


def test_truncated_last_ckpt_names_the_newest_readable_step_checkpoint(short_run, shards, tmp_path, capsys):
    """A last.ckpt cut short (full disk) fails --resume auto and generate --checkpoint with
    one line naming the newest step_*.ckpt that still loads (step_6 is cut short too)."""
    from scd_msc.cli import main
    from scd_msc.training.train import check_resume, find_resume

    src, _, _, _ = short_run
    run = tmp_path / "run"
    shutil.copytree(src / "checkpoints", run / "checkpoints")
    for name in ("last.ckpt", "step_0000006.ckpt"):
        path = run / "checkpoints" / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    cfg = load_config(None, overrides(shards, run))
    last = find_resume("auto", cfg)
    good = str(run / "checkpoints" / "step_0000003.ckpt")
    with pytest.raises(ValueError) as err:
        check_resume(last, cfg, "auto")
    msg = str(err.value)
    assert msg.startswith(f"--resume auto: checkpoint {last!r} could not be read (") and "\n" not in msg
    assert msg.endswith(f"the newest readable checkpoint next to it is {good!r}")
    assert check_resume(good, cfg) == 3
    assert main(["generate", "--checkpoint", last, "--frames", "1", "--steps", "1",
                 "--out", str(tmp_path / "v.mp4"), "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scd-msc generate: error: --checkpoint: checkpoint ")
    assert lines[0].endswith(f"the newest readable checkpoint next to it is {good!r}")


def test_a_run_that_fails_before_its_first_step_leaves_no_folder(shards, tmp_path):
    """Past the pre-flight checks (here: a failure when training starts), the folder that
    train() created (config.yaml, logs) is removed again; an existing folder is kept."""
    import lightning as L

    from scd_msc.training.train import train

    class FailAtStart(L.Callback):
        def on_train_start(self, trainer, pl_module):
            raise ValueError("broken at start")

    out = tmp_path / "new" / "run"
    with pytest.raises(ValueError, match="broken at start"):
        train(load_config(None, overrides(shards, out)), callbacks=[FailAtStart()])
    assert not out.exists() and (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(ValueError, match="broken at start"):
        train(load_config(None, overrides(shards, tmp_path / "kept")), callbacks=[FailAtStart()])
    assert (tmp_path / "kept").is_dir()


def test_preflight_refuses_what_cannot_train(shards, dirty_train, tmp_path):
    """One line each, naming the key, the value and what was expected; nothing written."""
    from scd_msc.ops.backends import natten_has_library
    from scd_msc.training.preflight import preflight

    def error(**extra) -> str:
        with pytest.raises(ValueError) as err:
            preflight(load_config(None, overrides(shards, tmp_path / "run", **extra)))
        assert "\n" not in str(err.value)
        return str(err.value)

    bad = tmp_path / "bad.tar"
    with wds.TarWriter(str(bad)) as sink:
        for i in range(3):
            sink.write({"__key__": f"bad{i}", "frames.npy": b"\x93NUMPY broken"})
    assert error(**{"data.val_shards": str(bad), "train.val_every_n_steps": 2}).startswith(
        f"data.val_shards={str(bad)!r}: no usable clip in the first 3 samples (decode_error=3; the first: bad0@")
    assert error(**{"data.train_shards": str(tmp_path / "none-*.tar")}).startswith(
        f"data.train_shards: shards={str(tmp_path / 'none-*.tar')!r}: expected at least one shard")
    assert error(**{"data.clip_frames": 9}).startswith(f"data.train_shards={shards['train']!r}: no usable clip")
    if not natten_has_library():  # NATTEN's CPU fallback has no backward
        assert error(**{"runtime.backend": "natten"}).startswith("runtime.backend='natten': cannot train on cpu here (")
    assert error(**{"runtime.backend": "flex"}).startswith("runtime.backend='flex': cannot train on cpu here (")
    if not torch.cuda.is_available():
        assert error(**{"train.accelerator": "gpu"}) == (
            "train.accelerator='gpu': no CUDA GPU is visible here; expected cpu or auto")
    afile = tmp_path / "file"
    afile.write_text("")
    assert error(**{"train.out_dir": str(afile / "run")}) == (
        f"train.out_dir={str(afile / 'run')!r}: expected a folder, but {str(afile)!r} is a file")
    preflight(load_config(None, overrides(shards, tmp_path / "run", **{"train.val_every_n_steps": 2})))
    preflight(load_config(None, overrides(shards, tmp_path / "run", **{"data.train_shards": dirty_train})))
    assert not (tmp_path / "run").exists()


def test_keep_checkpoints_counts_step_files_only_and_across_a_resume(shards, tmp_path):
    """``train.keep_checkpoints=2``: the two newest step_*.ckpt besides last.ckpt; a resume
    removes the older ones; a fresh start in the same folder leaves them."""
    from scd_msc.training.train import train

    def run(out, steps, resume=None):
        train(load_config(None, overrides(shards, out, **{
            "train.max_steps": steps, "train.checkpoint_every_n_steps": 1, "train.keep_checkpoints": 2})),
            resume=resume)
        return sorted(os.listdir(out / "checkpoints"))

    assert run(tmp_path / "a", 3) == ["last.ckpt", "step_0000002.ckpt", "step_0000003.ckpt"]
    assert run(tmp_path / "a", 4, resume="auto") == ["last.ckpt", "step_0000003.ckpt", "step_0000004.ckpt"]
    assert run(tmp_path / "a", 1) == ["last.ckpt", "step_0000001.ckpt", "step_0000003.ckpt", "step_0000004.ckpt"]


def test_nan_loss_stops_the_run_naming_the_step(shards, tmp_path, monkeypatch):
    from scd_msc.training.train import train

    import scd_msc.training.module as module

    calls = {"n": 0}
    real = module.training_loss  # the objective the LightningModule calls

    def loss_going_nan(model, video, flow, generator=None, *conditions):
        out = real(model, video, flow, generator, *conditions)
        calls["n"] += 1
        return {"loss": out["loss"] * float("nan")} if calls["n"] == 4 else out

    monkeypatch.setattr(module, "training_loss", loss_going_nan)
    cfg = load_config(None, overrides(shards, tmp_path, **{"train.max_steps": 10}))
    with pytest.raises(FloatingPointError, match="train loss is nan at step 3"):
        train(cfg)


def test_bf16_mixed_clips_gradients_of_a_fused_optimizer(shards, tmp_path, monkeypatch):
    """On CUDA the optimizer is fused AdamW, which Lightning's mixed-precision plugin
    refuses to clip for ("does not allow for gradient clipping"). Fused AdamW runs on a
    CPU too: the same run here, with bf16-mixed and clipping on, must train, and the
    gradients the optimizer sees must have norm <= train.grad_clip."""
    from scd_msc.training.train import train

    import scd_msc.training.module as module

    real = module.build_optimizer
    norms = []

    def fused(model, train_cfg, *rest):
        opt, schedule = real(model, train_cfg, *rest)
        opt = torch.optim.AdamW(opt.param_groups, lr=train_cfg.lr, fused=True)
        opt.register_step_pre_hook(lambda o, *_: norms.append(float(torch.nn.utils.get_total_norm(
            [p.grad for g in o.param_groups for p in g["params"] if p.grad is not None]))))
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)

    monkeypatch.setattr(module, "build_optimizer", fused)
    cfg = load_config(None, overrides(shards, tmp_path, **{"train.max_steps": 3, "train.precision": "bf16-mixed",
                                                            "train.grad_clip": 1e-3}))
    train(cfg)
    assert len(norms) == 3 and max(norms) <= 1e-3 * 1.01


def start_cli(args: list[str], log_path) -> subprocess.Popen:
    log = open(log_path, "w")
    return subprocess.Popen(["scd-msc", "train", *args], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def wait_for(path, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, f"training exited (rc {proc.returncode}) before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.02)


def test_sigkill_then_resume_auto_continues_to_max_steps(shards, tmp_path):
    out = tmp_path / "run"
    args = overrides(shards, out, **{"train.max_steps": 60, "train.checkpoint_every_n_steps": 4,
                                      "train.ema_decay": 0.99})
    proc = start_cli(args, tmp_path / "killed.log")
    last = out / "checkpoints" / "last.ckpt"
    try:
        wait_for(last, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    killed_at = ckpt_step(last)
    assert 4 <= killed_at < 60 and killed_at % 4 == 0
    proc = subprocess.run(["scd-msc", "train", *args, "--resume", "auto"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"checkpoint: {last}" in proc.stdout
    assert ckpt_step(last) == 60
    # one metrics.csv: the first start's rows before the resumed step, then the second start's.
    # Lightning logs step killed_at - 1's row after the checkpoint of killed_at, so the kill
    # may fall between the two and lose that row; no other may be missing or repeated.
    assert sorted(os.listdir(out)) == ["checkpoints", "config.yaml", "metrics.csv", "tb", "timing.json"]
    steps = train_steps(metrics(out))
    assert steps in (list(range(60)), [s for s in range(60) if s != killed_at - 1]), (killed_at, steps)
    # the EMA went on from the killed run's average: one update per step of both runs
    assert load_checkpoint(str(last)).weights.ema_updates == 60


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_interrupt_writes_last_ckpt_at_the_current_step(shards, tmp_path, sig):
    """Exit 128 + signal; the message stands on a line of its own after the progress bar."""
    out = tmp_path / "run"
    args = overrides(shards, out, **{"train.max_steps": 500, "train.checkpoint_every_n_steps": 1000,
                                      "train.sample_every_n_steps": 2, "train.sample_count": 1,
                                      "train.sample_frames": 1, "train.sample_steps": 1,
                                      "train.progress_bar": sig == signal.SIGINT})
    proc = start_cli(args, tmp_path / "term.log")
    try:
        wait_for(out / "samples" / "step_0000002.png", proc)  # training is under way
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 128 + sig
    finally:
        if proc.poll() is None:
            proc.kill()
    step = ckpt_step(out / "checkpoints" / "last.ckpt")
    assert 2 <= step < 500, step
    log = open(tmp_path / "term.log").read()
    line = f"scd-msc train: interrupted at step {step}; checkpoint: {out / 'checkpoints' / 'last.ckpt'} " \
           "(continue with --resume auto)"
    assert line in log.split("\n"), log[-2000:]
    if sig == signal.SIGINT:
        assert "Epoch 0:" in log and "Detected KeyboardInterrupt" not in log
    assert load_model(str(out / "checkpoints" / "last.ckpt")).cfg.family == "scd-msc"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_to_the_process_group_writes_last_ckpt(shards, tmp_path, sig):
    """SIGTERM to the whole process group (``timeout``, ``kill -- -PGID``, SLURM at its time
    limit) or Ctrl-C in a terminal reaches the loader workers too: they ignore it, the main
    process writes last.ckpt at the current step and exits 128 + signal with its one-line
    message."""
    out = tmp_path / "run"
    args = overrides(shards, out, **{"data.num_workers": 1, "train.max_steps": 500,
                                      "train.checkpoint_every_n_steps": 1000, "train.sample_every_n_steps": 2,
                                      "train.sample_count": 1, "train.sample_frames": 1, "train.sample_steps": 1})
    with open(tmp_path / "group.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "scd_msc", "train", *args], stdout=log,
                                stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        wait_for(out / "samples" / "step_0000002.png", proc)  # training is under way, its worker too
        os.killpg(proc.pid, sig)
        assert proc.wait(timeout=60) == 128 + sig
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    last = out / "checkpoints" / "last.ckpt"
    step = ckpt_step(last)
    assert 2 <= step < 500, step
    log = open(tmp_path / "group.log").read()
    messages = [x for x in log.splitlines() if x.startswith("scd-msc train:")]
    assert messages == [f"scd-msc train: interrupted at step {step}; checkpoint: {last} (continue with --resume auto)"], \
        log[-3000:]
    assert "Traceback" not in log and "killed by signal" not in log, log[-3000:]


class CtrlCInsideABatch(L.Callback):
    """Presses Ctrl-C (SIGINT to this process) inside the backward pass of step ``at``;
    ``twice``: a second time right after it. Records how far the hook got."""

    def __init__(self, at: int, twice: bool = False):
        self.at, self.twice = at, twice
        self.hook_finished = False
        self.second_raised = False

    def on_before_backward(self, trainer, pl_module, loss):
        if trainer.global_step != self.at:
            return
        os.kill(os.getpid(), signal.SIGINT)
        if self.twice:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.1)  # Python runs the handler between these bytecodes
            except KeyboardInterrupt:
                self.second_raised = True
                raise
        time.sleep(0.1)
        self.hook_finished = True


@pytest.mark.parametrize("twice", [False, True], ids=["once", "twice"])
def test_ctrl_c_stops_at_the_next_batch_unless_pressed_twice(shards, tmp_path, capfd, twice):
    """A KeyboardInterrupt at an arbitrary bytecode can land inside TensorBoard's writer
    queue (closing the logger then hangs) or in a finalizer (it is lost): one Ctrl-C only
    asks, and the batch under way finishes its step; a second one stops at once."""
    from scd_msc.training.train import TrainingInterrupted, train

    cfg = load_config(None, overrides(shards, tmp_path, **{"train.max_steps": 50,
                                                           "train.checkpoint_every_n_steps": 1000}))
    press = CtrlCInsideABatch(at=3, twice=twice)
    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(TrainingInterrupted) as stop:
            train(cfg, callbacks=[press])
    finally:
        signal.signal(signal.SIGINT, previous)  # Lightning ignores SIGINT after a Ctrl-C
    assert stop.value.signum == signal.SIGINT
    assert "Ctrl-C: stopping when this step ends (Ctrl-C again: now)" in capfd.readouterr().err
    assert press.hook_finished is not twice and press.second_raised is twice
    step = 3 if twice else 4  # once: step 3's optimizer step and hooks ran before the stop
    assert stop.value.step == step and ckpt_step(tmp_path / "checkpoints" / "last.ckpt") == step


DDP_SCRIPT = textwrap.dedent("""
    import os, sys
    import lightning as L
    from scd_msc.config import load_config
    from scd_msc.training.train import train

    class RecordKeys(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            path = os.path.join(trainer.default_root_dir, f"keys_rank{trainer.global_rank}.txt")
            with open(path, "a") as f:
                f.write("".join(k + "\\n" for k in batch["key"]))

    if __name__ == "__main__":
        train(load_config(None, sys.argv[1:]), callbacks=[RecordKeys()])
""")


def test_ddp_two_ranks_read_different_clips(shards, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "run"
    args = overrides(shards, out, **{"train.devices": 2, "train.strategy": "ddp", "train.max_steps": 4,
                                      "train.val_every_n_steps": 2, "train.ema_decay": 0.9})
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    keys = [set(open(out / f"keys_rank{r}.txt").read().split()) for r in (0, 1)]
    assert keys[0] and keys[1] and not keys[0] & keys[1], keys
    # rank r reads shards r, r + 2 (4 clips each): clip000000-03, 08-11 for rank 0
    assert {int(k[4:]) // 4 % 2 for k in keys[0]} == {0} and {int(k[4:]) // 4 % 2 for k in keys[1]} == {1}
    assert ckpt_step(out / "checkpoints" / "last.ckpt") == 4
    load_model(str(out / "checkpoints" / "last.ckpt")).generate(1, 2, 1)


def test_video_strip_lays_clips_in_rows_and_frames_in_columns():
    from scd_msc.training.callbacks import video_strip

    video = torch.zeros(2, 3, 1, 4, 5)
    video[1, 2] = 1.0  # last frame of the second clip is white
    strip = video_strip(video)
    assert strip.shape == (2 * 4, 3 * 5, 3) and strip.dtype.name == "uint8"
    assert (strip[4:, 10:] == 255).all() and (strip[:4] == 128).all()


def test_step_timer_measures_waits_and_drops_validation_and_checkpoint_gaps(tmp_path, monkeypatch):
    """Steps 100 ms apart with a 10 ms loader wait, after 1 warm-up step; the gap holding a
    validation run and the one holding a checkpoint save are not measured."""
    import json
    import types

    from scd_msc.training import timing

    clock = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    logged: list[dict] = []
    module = types.SimpleNamespace(log_dict=lambda d, **kw: logged.append(d))
    trainer = types.SimpleNamespace(is_global_zero=True, world_size=2)
    timer = timing.StepTimer(str(tmp_path), batch_size=4, warmup=1)
    for step in range(6):
        if step == 3:
            timer.on_validation_start(trainer, module)
        if step == 4:
            timer.on_save_checkpoint(trainer, module, {})
            clock[0] += 0.5  # a slow save: would count as a 510 ms wait if kept
        timer.on_train_batch_start(trainer, module, None, step)
        clock[0] += 0.09
        timer.on_train_batch_end(trainer, module, None, None, step)
        clock[0] += 0.01
    timer.on_train_end(trainer, module)
    summary = json.load(open(tmp_path / "timing.json"))
    # measured: steps 2 and 5 (step 0 has no previous step, 1 is warm-up, 3 and 4 are dirty)
    assert summary["steps"] == 2 and len(logged) == 2
    assert summary["step_ms_mean"] == pytest.approx(100.0)
    assert summary["loader_wait_ms_mean"] == pytest.approx(10.0)
    assert summary["loader_wait_fraction"] == pytest.approx(0.1)
    assert summary["samples_per_s"] == pytest.approx(10 * 4 * 2)

    # a run shorter than the warm-up has no step time, but still says what it trained on
    short = timing.StepTimer(str(tmp_path / "short"), batch_size=4, warmup=20)
    for step in range(3):
        short.on_train_batch_start(trainer, module, None, step)
        short.on_train_batch_end(trainer, module, None, None, step)
    short.on_train_end(trainer, module)
    assert json.load(open(tmp_path / "short" / "timing.json")) == {"steps": 0, "warmup": 20, "world_size": 2,
                                                                    "batch_size": 4}


def test_build_optimizer_decays_matrices_only_warms_up_and_is_the_modules():
    """AdamW with weight decay on >= 2-D parameters only (frozen ones left out), the lr
    ramping linearly to train.lr over warmup_steps; SCDLitModule uses the same set-up
    (the latency benchmark times this optimizer without importing Lightning)."""
    from torch import nn

    from scd_msc.config import TrainConfig
    from scd_msc.training.module import SCDLitModule
    from scd_msc.training.optim import build_optimizer

    net = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2))
    net[2].weight.requires_grad_(False)
    train = TrainConfig(lr=1e-3, weight_decay=0.1, betas=[0.8, 0.9], warmup_steps=4)
    opt, schedule = build_optimizer(net, train)
    decay, no_decay = opt.param_groups
    assert [id(p) for p in decay["params"]] == [id(net[0].weight)] and decay["weight_decay"] == 0.1
    assert {id(p) for p in no_decay["params"]} == {id(net[0].bias), id(net[1].weight), id(net[1].bias),
                                                    id(net[2].bias)}
    assert no_decay["weight_decay"] == 0.0 and decay["betas"] == (0.8, 0.9)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])

    module = SCDLitModule(load_config(None, ["preset=scd-msc-tiny", "train.weight_decay=0.05"]))
    used = module.configure_optimizers()
    assert used["lr_scheduler"]["interval"] == "step"
    expect, _ = build_optimizer(module.model, module.cfg.train)
    assert len(used["optimizer"].param_groups) == len(expect.param_groups) == 2
    for got, want in zip(used["optimizer"].param_groups, expect.param_groups):
        assert [id(p) for p in got["params"]] == [id(p) for p in want["params"]]
        for key in ("lr", "weight_decay", "betas"):
            assert got[key] == want[key]
