"""Build the data module, the LightningModule and the Trainer from one
:class:`~scd_msc.config.ExperimentConfig`, and run (or resume) training.

Run folder (``train.out_dir``)::

    config.yaml                 the resolved config of the latest start
    checkpoints/last.ckpt       newest state (every ``checkpoint_every_n_steps``, at the end,
                                on Ctrl-C / SIGTERM)
    checkpoints/step_NNNNNNN.ckpt  every ``checkpoint_every_n_steps``; the newest
                                ``train.keep_checkpoints`` are kept (last.ckpt not counted)
    metrics.csv                 losses, lr, timing, skipped samples; a resume continues it
                                (training/run_logs.py)
    tb/                         TensorBoard events (loss, lr, step and loader-wait times, sample
                                strips: samples/trained or samples/ema, the weights auto picks)
    timing.json                 step time, loader wait, steps/s (training/timing.py)
    samples/step_NNNNNNN.png    sample strips (rows: clips, columns: frames) and .gif; latents
                                decoded through the shards' autoencoder, when they name one

Everything that can be checked before training is checked first
(``training/preflight.py``); a run that still fails before its first step removes the
run folder it created.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import shutil
import signal
import warnings
from collections.abc import Sequence
from typing import Any, Callable, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from scd_msc.checkpoint import LoadedAutoencoder, read_checkpoint, stored_config
from scd_msc.config import ExperimentConfig, TrainConfig, resolve_frame_shape, to_yaml
from scd_msc.data.config import AUTO
from scd_msc.data.datamodule import ShardDataModule
from scd_msc.data.probe import ShardInfo, probe_shards
from scd_msc.models.layers import Block
from scd_msc.training.callbacks import EMA, CtrlCBetweenBatches, LastCheckpoint, SampleStrip
from scd_msc.training.flops import training_flops
from scd_msc.training.module import SCDLitModule
from scd_msc.training.preflight import preflight, training_device
from scd_msc.training.run_logs import ProgressBar, RunCSVLogger
from scd_msc.training.skips import SkipLog
from scd_msc.training.timing import StepTimer

log = logging.getLogger(__name__)

def resolve_precision(t: TrainConfig) -> str:
    """``auto``: ``bf16-mixed`` when training runs on CUDA, else ``32-true``."""
    if t.precision != "auto":
        return t.precision
    return "bf16-mixed" if training_device(t).type == "cuda" else "32-true"


def checkpoint_dir(cfg: ExperimentConfig) -> str:
    return os.path.join(cfg.train.out_dir, "checkpoints")


def find_resume(resume: Optional[str], cfg: ExperimentConfig) -> Optional[str]:
    """``None`` -> fresh start; ``auto`` -> ``<out_dir>/checkpoints/last.ckpt`` if it exists;
    else the path itself, which must exist."""
    if resume is None:
        return None
    if resume == "auto":
        last = os.path.join(checkpoint_dir(cfg), "last.ckpt")
        return last if os.path.isfile(last) else None
    if not os.path.isfile(resume):
        raise ValueError(f"--resume {resume!r}: no such checkpoint file")
    return resume


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
    return out


def check_resume(path: str, cfg: Any, arg: Optional[str] = None,
                 stored_model: Callable[[dict, str], Any] = lambda ckpt, path: stored_config(ckpt, path).model
                 ) -> int:
    """The checkpoint's global step; raises if it cannot be read (naming the newest
    readable ``step_*.ckpt`` instead) or if its model differs from ``cfg.model`` (the
    objective, ``flow``, and the ``runtime`` knobs may change on a resume).
    ``arg``: the ``--resume`` value, for the message (default: ``path``).
    ``stored_model(ckpt, path)``: the model config the checkpoint holds (default: a
    diffusion run's)."""
    where = f"--resume {arg}" if arg else f"--resume {path!r}"
    try:  # mmap: reads only the few entries looked at, however large the checkpoint
        ckpt = read_checkpoint(path, mmap=True)
        stored = stored_model(ckpt, path)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    legacy = next((k for k in ckpt.get("state_dict", {}) if k.endswith(".attn.qkv.weight")), None)
    if legacy is not None:  # MSCAttention / DenseAttention before rotate-half RoPE (upgrade_qkv)
        raise ValueError(f"{where}: the checkpoint's attention layers hold one qkv projection each ({legacy}), "
                         "the layout before 2026-12-03; its weights still load, converted, for generate and "
                         "eval, but its optimizer state does not fit the new projections: start a new run")
    old, new = _flat(dataclasses.asdict(stored)), _flat(dataclasses.asdict(cfg.model))
    diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if diff:
        raise ValueError(f"{where}: the checkpoint's model differs from the config at "
                         + ", ".join(f"model.{k} ({old.get(k)!r} in the checkpoint, {new.get(k)!r} now)"
                                     for k in diff[:8]))
    return int(ckpt["global_step"])


def compile_blocks(t: TrainConfig) -> bool:
    """``train.compile``: ``auto`` compiles when the run trains on CUDA."""
    if t.compile == "auto":
        return t.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return bool(t.compile)


def checkpoint_callbacks(cfg: Any, ema: Optional[EMA]) -> list[L.Callback]:
    """EMA (when on), step and last checkpoints, the learning rate: what every run has.
    ``cfg``: any run config with ``train`` (a :class:`TrainConfig`)."""
    t = cfg.train
    steps = ModelCheckpoint(
        dirpath=checkpoint_dir(cfg), filename="step_{step:07d}", auto_insert_metric_name=False,
        monitor="step", mode="max", save_top_k=t.keep_checkpoints,  # the newest N step_*.ckpt; last.ckpt apart
        every_n_train_steps=t.checkpoint_every_n_steps, save_last=True, enable_version_counter=False,
        save_on_train_epoch_end=True)  # never defer a step save to the next validation
    callbacks: list[L.Callback] = [] if ema is None else [ema]  # EMA first: its on_exception runs first
    return callbacks + [steps, LastCheckpoint(checkpoint_dir(cfg)), LearningRateMonitor("step")]


def strip_autoencoder(cfg: ExperimentConfig, info: ShardInfo) -> Optional[LoadedAutoencoder]:
    """The autoencoder the sample strips decode through: the one that made the training
    shards (``make-shards latents --autoencoder``), when strips are on. A one-line
    ``ValueError`` when it is missing or its sha256 differs from the shards' record."""
    t = cfg.train
    if not info.autoencoder or not t.sample_every_n_steps or t.strategy == "fsdp":
        return None
    from scd_msc.inference.codec import load_recorded

    try:
        return load_recorded(info, None, "the shards'", "sample strips decode through it "
                                                        "(train.sample_every_n_steps=0: no strips)")
    except ValueError as err:
        raise ValueError(f"data.train_shards: {err}") from None


def build_callbacks(cfg: ExperimentConfig, autoencoder: Optional[LoadedAutoencoder] = None) -> list[L.Callback]:
    """The diffusion run's callbacks; ``autoencoder``: what the sample strips decode latents with."""
    t = cfg.train
    ema = EMA(t.ema_decay, t.ema_warmup) if t.ema_decay > 0 else None
    callbacks = checkpoint_callbacks(cfg, ema)
    if t.sample_every_n_steps and t.strategy == "fsdp":
        rank_zero_only(log.warning)("train.sample_every_n_steps: no sample strips with FSDP (sharded weights)")
    elif t.sample_every_n_steps:
        callbacks.append(SampleStrip(t.out_dir, t.sample_every_n_steps, t.sample_count, t.sample_frames,
                                     t.sample_steps, seed=t.seed, ema=ema, autoencoder=autoencoder))
    # last: its step end is stamped after the sample strip is written
    frames = cfg.data.clip_frames
    flops = training_flops(cfg.model, cfg.flow, 1, frames) * t.accumulate_grad_batches
    callbacks.append(StepTimer(t.out_dir, cfg.data.batch_size, t.timing_warmup, flops_per_sample=flops))
    return callbacks


def build_trainer(cfg: Any, callbacks: Sequence[L.Callback] = (), resume_step: Optional[int] = None,
                  run_callbacks: Optional[list[L.Callback]] = None, automatic: bool = True) -> L.Trainer:
    """The Trainer; ``resume_step``: the step a resumed run starts from (its metrics.csv
    is continued from there), None for a fresh start. ``cfg``: any run config with
    ``train`` and ``data``; ``run_callbacks`` (default :func:`build_callbacks`, the
    diffusion run's) are added before ``callbacks``. ``automatic``: the module's
    ``automatic_optimization`` (with manual optimization it clips its own gradients)."""
    t = cfg.train
    bar = [ProgressBar()] if t.progress_bar else []
    validate = bool(cfg.data.val_shards) and t.val_every_n_steps > 0
    return L.Trainer(
        default_root_dir=t.out_dir,
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=resolve_precision(t),  # type: ignore[arg-type]
        max_steps=t.max_steps, max_epochs=-1,
        # validation every N optimizer steps, counted across epochs
        val_check_interval=t.val_every_n_steps * t.accumulate_grad_batches if validate else None,
        check_val_every_n_epoch=None if validate else 1,
        limit_val_batches=None if validate else 0, num_sanity_val_steps=1 if validate else 0,
        # a module of manual optimization (train-ae with a discriminator) clips itself
        gradient_clip_val=(t.grad_clip or None) if automatic else None,
        accumulate_grad_batches=t.accumulate_grad_batches,
        max_time=datetime.timedelta(minutes=t.max_minutes) if t.max_minutes else None,  # stops cleanly
        log_every_n_steps=t.log_every_n_steps,
        logger=[RunCSVLogger(t.out_dir, resume_step, t.log_every_n_steps),
                TensorBoardLogger(t.out_dir, name="tb", version="")],
        callbacks=[*bar, *(build_callbacks(cfg) if run_callbacks is None else run_callbacks), SkipLog(),
                   CtrlCBetweenBatches(), *callbacks],
        enable_progress_bar=t.progress_bar,
        use_distributed_sampler=False,  # the shard reader splits by rank itself
    )


@rank_zero_only
def _write_config(out_dir: str, text: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.yaml"), "w") as f:
        f.write(text)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (``signum`` SIGINT) or SIGTERM stopped training at ``step``; ``checkpoint``:
    the ``last.ckpt`` to resume from (None when there is none)."""

    def __init__(self, signum: int, step: int, checkpoint: Optional[str]):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        where = (f"checkpoint: {checkpoint} (continue with --resume auto)" if checkpoint
                 else "no checkpoint written")
        super().__init__(f"interrupted at step {step}; {where}")


def _interruption(err: BaseException, trainer: Optional[L.Trainer], last: str) -> Optional[TrainingInterrupted]:
    """``err`` as a :class:`TrainingInterrupted` when a signal caused it, else None.
    Lightning turns Ctrl-C into ``sys.exit(1)`` after its ``on_exception`` hooks ran."""
    savers = [c for c in trainer.callbacks if isinstance(c, LastCheckpoint)] if trainer is not None else []
    saw_ctrl_c = any(isinstance(c.interrupted_by, KeyboardInterrupt) for c in savers)
    if isinstance(err, SIGTERMException):
        signum = signal.SIGTERM
    elif isinstance(err, KeyboardInterrupt) or (isinstance(err, SystemExit) and saw_ctrl_c):
        signum = signal.SIGINT
    else:
        return None
    step = trainer.global_step if trainer is not None else 0
    return TrainingInterrupted(int(signum), step, last if os.path.isfile(last) else None)


@rank_zero_only
def _remove_run_folder(out_dir: str) -> None:
    shutil.rmtree(out_dir, ignore_errors=True)
    log.info("removed %s: the run stopped before its first step", out_dir)


def train(cfg: ExperimentConfig, resume: Optional[str] = None,
          callbacks: Sequence[L.Callback] = ()) -> str:
    """Train (or resume, ``resume`` = a path or ``auto``) and return the path of ``last.ckpt``.

    Raises ValueError (one line, naming the config key or ``--resume``) for what can be
    checked before training; :class:`TrainingInterrupted` on Ctrl-C / SIGTERM."""
    ckpt = find_resume(resume, cfg)
    start_step = check_resume(ckpt, cfg, resume) if ckpt else 0
    if AUTO in (cfg.data.channels, cfg.data.image_size):  # a config not made by load_config
        resolve_frame_shape(cfg)
    preflight(cfg)
    try:  # recorded in the checkpoint: pixels or latents (and the encoder that made them)
        shards = probe_shards(cfg.data.train_shards)
    except ValueError as err:
        raise ValueError(f"data.train_shards: {err}") from None
    autoencoder = strip_autoencoder(cfg, shards)

    def build_module() -> SCDLitModule:
        module = SCDLitModule(cfg, shards=shards.to_dict())
        for block in module.model.modules():
            if isinstance(block, Block):
                block.checkpointing = cfg.train.activation_checkpointing
                if compile_blocks(cfg.train):
                    block.compile()  # in place: the state_dict keys stay those of the checkpoint contract
        return module

    return fit(cfg, build_module, to_yaml(cfg), resume, ckpt, start_step, callbacks, build_callbacks(cfg, autoencoder))


def fit(cfg: Any, build_module: Callable[[], L.LightningModule], config_yaml: str, resume: Optional[str],
        ckpt: Optional[str], start_step: int, callbacks: Sequence[L.Callback] = (),
        run_callbacks: Optional[list[L.Callback]] = None) -> str:
    """Write ``config.yaml``, seed, build the module, fit on ``cfg.data``'s shards and return
    the path of ``last.ckpt``: the part of a run that :func:`train` and ``train_ae`` share.
    ``ckpt``: the checkpoint to resume from (``resume``: what the user passed) at
    ``start_step``. A run that fails before its first step removes the run folder it made."""
    last = os.path.join(checkpoint_dir(cfg), "last.ckpt")
    if resume == "auto" and ckpt is None:
        rank_zero_only(log.info)("--resume auto: no %s yet, starting fresh", last)
    elif ckpt is None and os.path.isfile(last):
        rank_zero_only(log.warning)("%s exists: this fresh start will overwrite it "
                                    "(use --resume auto to continue that run)", last)
    created = not os.path.exists(cfg.train.out_dir)
    trainer: Optional[L.Trainer] = None
    try:
        _write_config(cfg.train.out_dir, config_yaml)
        L.seed_everything(cfg.train.seed, workers=True, verbose=False)  # same init on every rank
        if torch.cuda.is_available():
            torch.set_float32_matmul_precision("high")
        module = build_module()
        # a resumed run reads a new stream of clips instead of replaying the first one
        data = ShardDataModule(dataclasses.replace(cfg.data, seed=cfg.data.seed + start_step))
        trainer = build_trainer(cfg, callbacks, start_step if ckpt else None, run_callbacks,
                                automatic=module.automatic_optimization)
        with warnings.catch_warnings():
            # the shard stream is endless and reseeded above, so a mid-epoch resume is fine
            warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended")
            if ckpt is not None:  # the resumed run's own checkpoints are expected there
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            trainer.fit(module, datamodule=data, ckpt_path=ckpt, weights_only=False)
    except BaseException as err:
        if created and (trainer is None or trainer.global_step == 0):
            _remove_run_folder(cfg.train.out_dir)
        interrupt = _interruption(err, trainer, last)
        if interrupt is not None:
            raise interrupt from None
        raise
    return last
