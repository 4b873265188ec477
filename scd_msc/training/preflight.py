"""What ``train()`` checks before it writes anything or builds the Trainer.

A run that cannot train should fail in seconds, with one line naming the config key,
its value and what was expected, and leave no run folder behind:

* ``train.out_dir``: a folder can be created there (``scd_msc/media.py``);
* ``train.accelerator``: ``gpu``/``cuda``/``mps`` only where that device is visible;
* ``runtime.backend``: a backend named explicitly can run *with gradients* on the training
  device (NATTEN without its compiled library has no backward; FlexAttention is
  compiled only on CUDA), the same predicate the op applies at run time;
* ``data.train_shards`` / ``data.val_shards``: each yields a usable clip within its
  first :data:`PROBE_SAMPLES` samples (read in order, in this process). A fully corrupt
  validation set would otherwise run without ever logging ``val/loss``.
"""

from __future__ import annotations

import torch

from scd_msc.config import ExperimentConfig, TrainConfig
from scd_msc.data import ClipDataset
from scd_msc.data.config import DataConfig
from scd_msc.data.decode import SkipCounter
from scd_msc.ops.backends import refusal
from scd_msc.ops.masks import hires_spec
from scd_msc.media import check_writable_folder

PROBE_SAMPLES = 64  # samples read per shard set before it is called unusable


def training_device(t: TrainConfig) -> torch.device:
    """The device type Lightning will train on for ``train.accelerator``."""
    if t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("mps" if t.accelerator == "mps" else "cpu")


def check_accelerator(t: TrainConfig) -> None:
    if t.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.accelerator={t.accelerator!r}: no CUDA GPU is visible here; expected cpu or auto")
    if t.accelerator == "mps" and not torch.backends.mps.is_available():
        raise ValueError("train.accelerator='mps': MPS is not available here; expected cpu or auto")
    if (training_device(t).type == "cuda" and isinstance(t.devices, int)
            and t.devices > torch.cuda.device_count()):
        raise ValueError(f"train.devices={t.devices}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")


def check_backend(cfg: ExperimentConfig) -> None:
    """An explicit ``runtime.backend`` must run forward and backward on the training device."""
    name = cfg.runtime.backend
    if name == "auto":
        return
    device = training_device(cfg.train)
    with torch.enable_grad():
        q = torch.zeros(1, 2, 4, 4, 1, 8, device=device, requires_grad=True)  # (B, F, Hp, Wp, h, d)
        reason = refusal(name, q, q, hires_spec(3, 2, True), for_auto=False)
    if reason is not None:
        raise ValueError(f"runtime.backend={name!r}: cannot train on {device.type} here ({reason}); "
                         "expected auto or reference")


def check_shards(data: DataConfig, key: str) -> None:
    """``data.<key>`` must give a usable clip within its first ``PROBE_SAMPLES`` samples."""
    pattern = getattr(data, key)
    if not pattern:
        raise ValueError(f"data.{key}={pattern!r}: expected a shard pattern, e.g. 'shards/*.tar'")
    try:
        reader = ClipDataset(pattern, data.clip_frames, data.channels, data.image_size, resampled=False,
                             resize=data.resize)
    except ValueError as err:
        raise ValueError(f"data.{key}: {err}") from None
    reader.skipped = SkipCounter(PROBE_SAMPLES - 1, quiet=True)  # the error below says what was skipped
    try:
        found = next(iter(reader), None)
    except RuntimeError:  # the reader's SkipCounter: PROBE_SAMPLES unusable samples in a row
        found = None
    if found is None:
        n = reader.skipped.total
        what = (f"no usable clip in the first {n} samples ({reader.skipped.summary()}; the first: "
                f"{reader.skipped.first})" if n else "no samples in the shards")
        raise ValueError(f"data.{key}={pattern!r}: {what}; expected clips of {data.clip_frames} frames of "
                         f"{data.channels}×{data.image_size}×{data.image_size}")


def check_conditions(cfg: ExperimentConfig) -> None:
    """A model conditioned on actions or classes needs shards that carry them, with ids
    that fit its embedding tables (``model.actions`` / ``model.classes``)."""
    m = cfg.model
    if not (m.actions or m.classes):
        return
    from scd_msc.data.conditions import shard_conditions

    conds = shard_conditions(cfg.data.train_shards)
    where = f"data.train_shards={cfg.data.train_shards!r}"
    for name, size, have, known in (("actions", m.actions, conds.actions, conds.num_actions),
                                    ("classes", m.classes, conds.labels, conds.num_classes)):
        if not size:
            continue
        if not have:
            raise ValueError(f"model.{name}={size}: {where} carries no {name} ({conds}); expected shards "
                             f"with {name} (scd-msc make-shards atari|doom) or model.{name}=0")
        if known is not None and known > size:
            raise ValueError(f"model.{name}={size}: {where} names {known} {name}; expected model.{name}={known}")


def preflight(cfg: ExperimentConfig) -> None:
    """Every check above; a ValueError for the first that fails. Writes nothing."""
    check_writable_folder(cfg.train.out_dir, "train.out_dir")
    check_accelerator(cfg.train)
    check_backend(cfg)
    check_shards(cfg.data, "train_shards")
    check_conditions(cfg)
    if cfg.data.val_shards and cfg.train.val_every_n_steps > 0:
        check_shards(cfg.data, "val_shards")
