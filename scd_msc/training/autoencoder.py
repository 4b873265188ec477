"""``scd-msc train-ae``: the autoencoder's LightningModule and its training run.

The same run folder, checkpoints, EMA, metrics and resume as ``scd-msc train``
(:func:`scd_msc.training.train.fit`); clips from the shards are folded into single
frames. The checkpoint holds the network under ``model.`` (EMA under ``ema_model.``),
its latent scaling as buffers, and the :class:`~scd_msc.ae_config.AEExperimentConfig`
in ``hyper_parameters["config"]``; :func:`scd_msc.checkpoint.load_autoencoder` reads it.

With ``loss.gan_weight > 0`` the module also holds a :class:`PatchDiscriminator`
(``discriminator.``, its optimizer the second of the checkpoint's ``optimizer_states``)
and uses manual optimization: one AdamW step of the autoencoder per batch, counted by
``global_step`` as usual, and from step ``loss.gan_start`` on one step of the
discriminator, taken on the raw optimizer so that ``global_step`` still counts
autoencoder steps only (Lightning counts every ``LightningOptimizer.step`` in manual
optimization). One device: DDP would see the discriminator unused before its start.

Shapes: ``B`` clips · ``F`` frames · ``C, H, W`` pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Optional, Union

import lightning as L
import torch
from einops import rearrange
from torch import Tensor

from scd_msc.ae_config import AEExperimentConfig, ae_config_from_dict, ae_config_to_dict, ae_to_yaml
from scd_msc.checkpoint import stored_config_dict
from scd_msc.media import check_writable_folder
from scd_msc.models.ae_objective import ae_loss
from scd_msc.models.autoencoder import FrameAutoencoder
from scd_msc.models.discriminator import PatchDiscriminator, adaptive_weight, discriminator_loss, generator_loss
from scd_msc.training.callbacks import EMA
from scd_msc.training.module import RunModule
from scd_msc.training.preflight import check_accelerator, check_shards
from scd_msc.training.timing import StepTimer
from scd_msc.training.train import check_resume, checkpoint_callbacks, compile_blocks, find_resume, fit

log = logging.getLogger(__name__)


class AELitModule(RunModule):
    """Trains a :class:`FrameAutoencoder` on L1 + SSIM (+ the adversarial term of a patch
    discriminator, ``loss.gan_weight > 0``); every training step also updates its latent
    scaling (:meth:`FrameAutoencoder.observe`) with the batch's latents."""

    def __init__(self, config: Union[AEExperimentConfig, dict[str, Any]]):
        super().__init__()
        cfg = config if isinstance(config, AEExperimentConfig) else ae_config_from_dict(config)
        self.save_hyperparameters({"config": ae_config_to_dict(cfg)})
        self.cfg = cfg
        self.model = FrameAutoencoder(cfg.model)
        loss = cfg.loss
        self.automatic_optimization = not loss.gan
        self.discriminator = (PatchDiscriminator(cfg.model.channels, loss.disc_width, loss.disc_layers)
                              if loss.gan else None)

    def _log(self, stage: str, values: dict[str, Tensor], batch_size: int) -> None:
        train = stage == "train"
        for name, value in values.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "loss", on_step=train, on_epoch=not train,
                     sync_dist=not train, batch_size=batch_size)

    def _shared_step(self, batch: dict, stage: str) -> dict[str, Tensor]:
        frames = rearrange(batch["video"], "b f c h w -> (b f) c h w")  # (B·F, C, H, W) in [-1, 1]
        out = ae_loss(self.model, frames, self.cfg.loss)
        if stage == "train":  # (validation passes may differ in length per rank: no vote there)
            self._check_finite(out["loss"])
            self.model.observe(out["z"])
        self._log(stage, {k: out[k] for k in ("loss", "l1", "ssim")}, frames.shape[0])
        return {**out, "frames": frames}

    def training_step(self, batch: dict, batch_idx: int) -> Optional[Tensor]:
        out = self._shared_step(batch, "train")
        if self.automatic_optimization:
            return out["loss"]
        self._gan_step(out)
        return None

    def _gan_step(self, out: dict[str, Tensor]) -> None:
        """The manual step: the autoencoder on its loss plus, from ``loss.gan_start`` on,
        the weighted adversarial term; then the discriminator on real vs reconstructed."""
        loss_cfg, clip = self.cfg.loss, self.cfg.train.grad_clip or None
        opt_ae, opt_d = self.optimizers()
        assert self.discriminator is not None
        on = self.global_step >= loss_cfg.gan_start
        loss = out["loss"]
        weight = g_loss = torch.zeros((), device=loss.device)
        if on:
            self.toggle_optimizer(opt_ae)  # the discriminator's weights take no gradient from this term
            g_loss = generator_loss(self.discriminator(out["recon"]), loss_cfg.gan_loss)
            weight = torch.full_like(weight, loss_cfg.gan_weight)
            if loss_cfg.gan_adaptive:
                weight = weight * adaptive_weight(loss, g_loss, self.model.decoder.net[-1].weight)
            loss = loss + weight * g_loss
        opt_ae.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self.clip_gradients(opt_ae, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        opt_ae.step()  # counted: global_step += 1
        self.lr_schedulers().step()
        values = {"gan_weight": weight, "g_loss": g_loss.detach()}
        if on:
            self.untoggle_optimizer(opt_ae)
            real, fake = self.discriminator(out["frames"]), self.discriminator(out["recon"].detach())
            d_loss = discriminator_loss(real, fake, loss_cfg.gan_loss)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            self.clip_gradients(opt_d, gradient_clip_val=clip, gradient_clip_algorithm="norm")
            opt_d.optimizer.step()  # the raw optimizer: not counted as a step of the run
            values.update(d_loss=d_loss.detach(), d_real=real.detach().mean(), d_fake=fake.detach().mean())
        self._log("train", values, out["frames"].shape[0])

    def configure_optimizers(self) -> Any:
        automatic = super().configure_optimizers()
        if self.discriminator is None:
            return automatic
        d_opt = torch.optim.AdamW(self.discriminator.parameters(), lr=self.cfg.loss.disc_lr, betas=(0.5, 0.9),
                                  weight_decay=0.0)
        return [automatic["optimizer"], d_opt], [automatic["lr_scheduler"]]

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

    def build_module() -> AELitModule:
        module = AELitModule(cfg)
        if compile_blocks(t):  # in place: the state_dict keys stay those of the checkpoint contract
            module.model.encoder.compile()
            module.model.decoder.compile()
        return module

    return fit(cfg, build_module, ae_to_yaml(cfg), resume, ckpt, start_step, callbacks, run_callbacks)
