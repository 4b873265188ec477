"""``scd-msc train-ae``: the autoencoder's LightningModule and its training run.

The same run folder, checkpoints, EMA, metrics and resume as ``scd-msc train``
(:func:`scd_msc.training.train.fit`); clips from the shards are folded into single
frames. The checkpoint holds the network under ``model.`` (EMA under ``ema_model.``),
its latent scaling as buffers, and the :class:`~scd_msc.ae_config.AEExperimentConfig`
in ``hyper_parameters["config"]``; :func:`scd_msc.checkpoint.load_autoencoder` reads it.

Shapes: ``B`` clips · ``F`` frames · ``C, H, W`` pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Optional, Union

import lightning as L
from einops import rearrange
from torch import Tensor

from scd_msc.ae_config import AEExperimentConfig, ae_config_from_dict, ae_config_to_dict, ae_to_yaml
from scd_msc.checkpoint import stored_config_dict
from scd_msc.media import check_writable_folder
from scd_msc.models.ae_objective import ae_loss
from scd_msc.models.autoencoder import FrameAutoencoder
from scd_msc.training.callbacks import EMA
from scd_msc.training.module import RunModule
from scd_msc.training.preflight import check_accelerator, check_shards
from scd_msc.training.timing import StepTimer
from scd_msc.training.train import check_resume, checkpoint_callbacks, find_resume, fit

log = logging.getLogger(__name__)


class AELitModule(RunModule):
    """Trains a :class:`FrameAutoencoder` on L1 + SSIM; every training step also updates
    its latent scaling (:meth:`FrameAutoencoder.observe`) with the batch's latents."""

    def __init__(self, config: Union[AEExperimentConfig, dict[str, Any]]):
        super().__init__()
        cfg = config if isinstance(config, AEExperimentConfig) else ae_config_from_dict(config)
        self.save_hyperparameters({"config": ae_config_to_dict(cfg)})
        self.cfg = cfg
        self.model = FrameAutoencoder(cfg.model)

    def _shared_step(self, batch: dict, stage: str) -> Tensor:
        frames = rearrange(batch["video"], "b f c h w -> (b f) c h w")  # (B·F, C, H, W) in [-1, 1]
        train = stage == "train"
        out = ae_loss(self.model, frames, self.cfg.loss)
        if train:  # (validation passes may differ in length per rank: no vote there)
            self._check_finite(out["loss"])
            self.model.observe(out["z"])
        for name in ("loss", "l1", "ssim"):
            self.log(f"{stage}/{name}", out[name], prog_bar=name == "loss", on_step=train, on_epoch=not train,
                     sync_dist=not train, batch_size=frames.shape[0])
        return out["loss"]

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._shared_step(batch, "val")


def train_ae(cfg: AEExperimentConfig, resume: Optional[str] = None, callbacks: Sequence[L.Callback] = ()) -> str:
    """Train (or resume, ``resume`` = a path or ``auto``) and return the path of ``last.ckpt``.
    Raises ``ValueError`` (one line, naming the config key or ``--resume``) for what can be
    checked before training."""
    ckpt = find_resume(resume, cfg)
    stored = (lambda c, path: ae_config_from_dict(stored_config_dict(c, path)).model)
    start_step = check_resume(ckpt, cfg, resume, stored) if ckpt else 0
    check_writable_folder(cfg.train.out_dir, "train.out_dir")
    check_accelerator(cfg.train)
    check_shards(cfg.data, "train_shards")
    if cfg.data.val_shards and cfg.train.val_every_n_steps > 0:
        check_shards(cfg.data, "val_shards")
    t = cfg.train
    ema = EMA(t.ema_decay, t.ema_warmup) if t.ema_decay > 0 else None
    frames = cfg.data.batch_size * cfg.data.clip_frames
    run_callbacks = checkpoint_callbacks(cfg, ema) + [StepTimer(t.out_dir, frames, t.timing_warmup)]
    return fit(cfg, lambda: AELitModule(cfg), ae_to_yaml(cfg), resume, ckpt, start_step, callbacks, run_callbacks)
