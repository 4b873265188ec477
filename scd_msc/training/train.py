"""Build the data module, the LightningModule and the Trainer from one
:class:`~scd_msc.config.ExperimentConfig`, and run (or resume) training.

Run folder (``train.out_dir``)::

    config.yaml                 the resolved config of the latest start
    checkpoints/last.ckpt       newest state (every ``checkpoint_every_n_steps``, at the end,
                                on Ctrl-C / SIGTERM)
    checkpoints/step_NNNNNNN.ckpt  every ``checkpoint_every_n_steps``; the newest
                                ``train.keep_checkpoints`` are kept (last.ckpt not counted)
    csv/version_N/metrics.csv   one CSV per start (Lightning's CSVLogger)
    tb/                         TensorBoard events (loss, lr, step and loader-wait times, sample strips)
    timing.json                 step time, loader wait, steps/s (training/timing.py)
    samples/step_NNNNNNN.png    sample strips (rows: clips, columns: frames) and .gif
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from scd_msc.config import ExperimentConfig, TrainConfig, config_to_dict, to_yaml
from scd_msc.data.datamodule import ShardDataModule
from scd_msc.models.layers import Block
from scd_msc.training.callbacks import EMA, LastCheckpoint, SampleStrip
from scd_msc.training.module import SCDLitModule
from scd_msc.training.timing import StepTimer

log = logging.getLogger(__name__)

# ModelConfig fields that do not change the parameters: a resume may change them
RUNTIME_MODEL_FIELDS = ("backend", "sampler", "guidance_perturb", "flow")


def resolve_precision(t: TrainConfig) -> str:
    """``auto``: ``bf16-mixed`` when training runs on CUDA, else ``32-true``."""
    if t.precision != "auto":
        return t.precision
    on_gpu = t.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu else "32-true"


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


def check_resume(path: str, cfg: ExperimentConfig) -> int:
    """The checkpoint's global step; raises if its model differs from ``cfg.model``."""
    try:  # mmap: reads only the few entries looked at, however large the checkpoint
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        stored = ckpt["hyper_parameters"]["config"]["model"]
    except Exception as err:
        raise ValueError(f"--resume {path!r}: not a readable scd_msc training checkpoint ({err})") from err
    old, new = _flat(stored), _flat(config_to_dict(cfg)["model"])
    diff = sorted(k for k in old.keys() | new.keys()
                  if old.get(k) != new.get(k) and k.split(".")[0] not in RUNTIME_MODEL_FIELDS)
    if diff:
        raise ValueError(f"--resume {path!r}: the checkpoint's model differs from the config at "
                         + ", ".join(f"model.{k} ({old.get(k)!r} in the checkpoint, {new.get(k)!r} now)"
                                     for k in diff[:8]))
    return int(ckpt["global_step"])


def build_callbacks(cfg: ExperimentConfig) -> list[L.Callback]:
    t = cfg.train
    ema = EMA(t.ema_decay) if t.ema_decay > 0 else None
    steps = ModelCheckpoint(
        dirpath=checkpoint_dir(cfg), filename="step_{step:07d}", auto_insert_metric_name=False,
        monitor="step", mode="max", save_top_k=t.keep_checkpoints,  # the newest N step_*.ckpt; last.ckpt apart
        every_n_train_steps=t.checkpoint_every_n_steps, save_last=True, enable_version_counter=False,
        save_on_train_epoch_end=True)  # never defer a step save to the next validation
    callbacks: list[L.Callback] = [] if ema is None else [ema]  # EMA first: its on_exception runs first
    callbacks += [steps, LastCheckpoint(checkpoint_dir(cfg)), LearningRateMonitor("step")]
    if t.sample_every_n_steps and t.strategy == "fsdp":
        rank_zero_only(log.warning)("train.sample_every_n_steps: no sample strips with FSDP (sharded weights)")
    elif t.sample_every_n_steps:
        callbacks.append(SampleStrip(t.out_dir, t.sample_every_n_steps, t.sample_count, t.sample_frames,
                                     t.sample_steps, seed=t.seed, ema=ema))
    # last: its step end is stamped after the sample strip is written
    callbacks.append(StepTimer(t.out_dir, cfg.data.batch_size, t.timing_warmup))
    return callbacks


def build_trainer(cfg: ExperimentConfig, callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
    t = cfg.train
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
        gradient_clip_val=t.grad_clip or None, accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every_n_steps,
        logger=[CSVLogger(t.out_dir, name="csv"), TensorBoardLogger(t.out_dir, name="tb", version="")],
        callbacks=[*build_callbacks(cfg), *callbacks],
        enable_progress_bar=t.progress_bar,
        use_distributed_sampler=False,  # the shard reader splits by rank itself
    )


@rank_zero_only
def _write_config(cfg: ExperimentConfig) -> None:
    os.makedirs(cfg.train.out_dir, exist_ok=True)
    with open(os.path.join(cfg.train.out_dir, "config.yaml"), "w") as f:
        f.write(to_yaml(cfg))


def train(cfg: ExperimentConfig, resume: Optional[str] = None,
          callbacks: Sequence[L.Callback] = ()) -> str:
    """Train (or resume, ``resume`` = a path or ``auto``) and return the path of ``last.ckpt``."""
    ckpt = find_resume(resume, cfg)
    start_step = check_resume(ckpt, cfg) if ckpt else 0
    last = os.path.join(checkpoint_dir(cfg), "last.ckpt")
    if resume == "auto" and ckpt is None:
        rank_zero_only(log.info)("--resume auto: no %s yet, starting fresh", last)
    elif ckpt is None and os.path.isfile(last):
        rank_zero_only(log.warning)("%s exists: this fresh start will overwrite it "
                                    "(use --resume auto to continue that run)", last)
    _write_config(cfg)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)  # same init on every rank
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    module = SCDLitModule(cfg)
    if cfg.train.compile:
        for block in module.model.modules():
            if isinstance(block, Block):
                block.compile()  # in place: the state_dict keys stay those of the checkpoint contract
    # a resumed run reads a new stream of clips instead of replaying the first one
    data = ShardDataModule(dataclasses.replace(cfg.data, seed=cfg.data.seed + start_step))
    trainer = build_trainer(cfg, callbacks)
    with warnings.catch_warnings():
        # the shard stream is endless and reseeded above, so a mid-epoch resume is fine
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended")
        if ckpt is not None:  # the resumed run's own checkpoints are expected there
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        trainer.fit(module, datamodule=data, ckpt_path=ckpt, weights_only=False)
    return last
