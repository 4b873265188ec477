"""``SCDLitModule``: the thin LightningModule around any scd_msc model.

The network (``self.model``, ``scd_msc/models``) and the objective
(``scd_msc/diffusion/objectives.py``) meet in :meth:`SCDLitModule._shared_step`; the
optimizer and its warm-up live in ``scd_msc/training/optim.py``; this file only adds
logging and a finite-loss check. Checkpoints follow ``scd_msc/checkpoint.py``: weights
under ``model.`` (EMA under ``ema_model.``, written by
:class:`scd_msc.training.callbacks.EMA`), the whole experiment config as a plain dict in
``hyper_parameters["config"]`` and what the training shards hold
(``ShardInfo.to_dict()``) in ``hyper_parameters["shards"]``.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import lightning as L
from lightning.pytorch.callbacks import Timer
import numpy as np
import torch
from torch import Tensor

from scd_msc.config import ExperimentConfig, config_from_dict, config_to_dict
from scd_msc.conditions import check_conditions
from scd_msc.diffusion import FlowMatching, null_dropout, training_loss
from scd_msc.models import model_from_config
from scd_msc.training.optim import build_optimizer


class RunModule(L.LightningModule):
    """What every scd_msc LightningModule shares: the network in ``self.model``, trained
    with AdamW and a linear warm-up (``self.cfg.train``), a finite-loss vote, and the EMA
    weights of a checkpoint handed to the EMA callback."""

    model: torch.nn.Module

    def _check_finite(self, loss: Tensor) -> None:
        """Stop the run on a nan/inf training loss, on every rank at once (none left
        waiting in a collective). Every rank runs every training step, so the vote is safe."""
        bad = not bool(torch.isfinite(loss.detach()))
        any_bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False) if self.trainer.world_size > 1 else bad
        if any_bad:
            value = f"{loss.item()}" if bad else "not finite on another rank"
            raise FloatingPointError(f"train loss is {value} at step {self.global_step}; "
                                     "lower train.lr or raise train.warmup_steps")

    def time_fraction(self) -> float:
        """The share of ``train.max_minutes`` spent so far (resumes included; 0 without a
        limit): Lightning's ``Timer``, which ``max_time`` adds to the Trainer."""
        minutes = self.cfg.train.max_minutes
        timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None) if minutes else None
        return 0.0 if timer is None else timer.time_elapsed("train") / (60 * minutes)

    def configure_optimizers(self) -> dict:
        optimizer, schedule = build_optimizer(self.model, self.cfg.train, self.time_fraction)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def clip_gradients(self, optimizer: Any, gradient_clip_val: Optional[Union[int, float]] = None,
                       gradient_clip_algorithm: Optional[str] = None) -> None:
        """Clip the gradients of ``optimizer``'s parameters (the Trainer's clipping and the
        manual steps of ``train-ae`` both come here). Lightning's mixed-precision plugin
        refuses to clip for an optimizer that unscales inside its step (fused AdamW), even
        under ``bf16-mixed``, which has no loss scaler and nothing to unscale; so without a
        scaler the norm (or value) is clipped here. ``16-mixed`` (a scaler, and an unfused
        optimizer: optim.py) keeps Lightning's path, which unscales first."""
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None or not gradient_clip_val:
            return super().clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The EMA weights (``ema_model.*``, and ``ema_<name>.*`` of any other submodule the
        # average holds) belong to the EMA callback, which is restored after the module;
        # move them aside so the module's strict load sees its own keys.
        state = checkpoint["state_dict"]
        checkpoint["ema_state_dict"] = {k: state.pop(k) for k in list(state) if k.startswith("ema_")}


class SCDLitModule(RunModule):
    """Trains ``model_from_config(config.model)`` with AdamW and a linear warm-up."""

    def __init__(self, config: Union[ExperimentConfig, dict[str, Any]], shards: Optional[dict[str, Any]] = None):
        super().__init__()
        cfg = config if isinstance(config, ExperimentConfig) else config_from_dict(config)
        # shards: what the training data is (ShardInfo.to_dict(): pixels or latents, encoder), for inference
        self.save_hyperparameters({"config": config_to_dict(cfg), "shards": shards})
        self.cfg = cfg
        self.model = model_from_config(cfg.model, cfg.runtime.backend)
        self.flow = FlowMatching(cfg.flow)
        self.noise_generator: Optional[torch.Generator] = None  # the training noise draws, seeded in on_train_start

    def _conditions(self, batch: dict, generator: torch.Generator | None,
                    drop: float) -> tuple[Tensor | None, Tensor | None]:
        """The batch's ``actions (B, F)`` / ``label (B,)`` the model is conditioned on,
        each id replaced by the null id with probability ``drop`` (guidance training)."""
        m = self.model.cfg
        actions = batch["actions"] if m.actions else None
        labels = batch["label"] if m.classes else None
        check_conditions(m, actions, labels, *batch["video"].shape[:2])
        return (null_dropout(actions, m.actions, drop, generator),
                null_dropout(labels, m.classes, drop, generator))

    def _shared_step(self, batch: dict, stage: str, generator: torch.Generator | None = None) -> Tensor:
        video = batch["video"]  # (B, F, C, H, W) in [-1, 1]
        train = stage == "train"
        actions, labels = self._conditions(batch, generator, self.cfg.train.cond_dropout if train else 0.0)
        loss = training_loss(self.model, video, self.flow, generator, actions, labels)["loss"]
        if train:  # (validation passes may differ in length per rank: no vote there)
            self._check_finite(loss)
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=train, on_epoch=not train,
                 sync_dist=not train, batch_size=video.shape[0])
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train", self.noise_generator)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # the same noise draws at every validation, so val/loss curves are comparable
        self._shared_step(batch, "val", torch.Generator().manual_seed(batch_idx))

    def on_train_start(self) -> None:
        # noise draws differ per rank and do not replay after a resume; model init
        # (seeded once in train.py) is the same on every rank. The generator lives on the
        # module's device, so the draws stay there (no host round trip per step).
        seed = np.random.SeedSequence([self.cfg.train.seed, self.global_rank, self.global_step])
        self.noise_generator = torch.Generator(self.device).manual_seed(int(seed.generate_state(1)[0]))
