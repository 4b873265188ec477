"""Training callbacks: EMA in the scd_msc checkpoint layout, sample strips, last.ckpt on
interrupt and at the end, Ctrl-C at a batch boundary.

Shapes: ``B`` clips · ``F`` frames · ``C`` channels · ``H, W`` pixels.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
from types import FrameType
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from scd_msc.checkpoint import LoadedAutoencoder
from scd_msc.ema import WeightChoice, choose_weights, ema_update_fn
from scd_msc.inference.codec import AutoencoderCodec
from scd_msc.media import display_scale, save_gif, save_png, to_channels, to_uint8

log = logging.getLogger(__name__)


class EMA(L.Callback):
    """An exponential moving average of the trained weights with a warm-up
    (``ema_update_fn(decay, warmup)``; ``scd_msc/ema.py`` says why the warm-up, and why not a
    delayed start), saved in the layout of ``scd_msc/checkpoint.py``.

    A plain callback around ``torch.optim.swa_utils.AveragedModel`` (the average of the
    whole LightningModule, its buffers included), built when fit starts and updated after
    every optimizer step. Lightning's ``EMAWeightAveraging`` hard-wires a constant-decay
    ``avg_fn``, and its parent ``WeightAveraging`` puts the *average* under ``model.``;
    here ``state_dict`` keeps the trained weights under ``model.`` and adds the average
    under ``ema_model.`` (its update count in ``averaging_state["n_averaged"]``), so
    ``load_model(path, weights="trained" | "ema" | "auto")`` can pick either.
    Validation runs on the average (the module's weights are swapped with it and swapped
    back after, also when validation is interrupted); the module keeps its trained
    weights when training ends.
    """

    def __init__(self, decay: float, warmup: bool = True):
        self.decay = decay
        self.update_fn = ema_update_fn(decay, warmup)
        self.average: Optional[AveragedModel] = None  # around the LightningModule, from fit start
        self._latest_update_step = 0  # the global step of the latest update (one per optimizer step)
        self._swapped = False  # the module holds the average (during validation)

    @property
    def network(self) -> Optional[nn.Module]:
        """The averaged network (``None`` before fit starts)."""
        return None if self.average is None else self.average.module.model

    def choice(self) -> WeightChoice:
        """The weights ``auto`` would pick now (``trained`` before fit starts)."""
        updates = None if self.average is None else int(self.average.n_averaged)
        return choose_weights("auto", self.average is not None, updates, self.decay)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # pl_module.device is already the training device here
            self.average = AveragedModel(pl_module, device=pl_module.device, multi_avg_fn=self.update_fn,
                                         use_buffers=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        # with gradient accumulation a batch need not end with an optimizer step
        if self.average is not None and trainer.global_step > self._latest_update_step:
            self.average.update_parameters(pl_module)
            self._latest_update_step = trainer.global_step

    @torch.no_grad()
    def _swap(self, pl_module: L.LightningModule) -> None:
        """Exchange the module's weights (and buffers) with the average's, in place."""
        assert self.average is not None
        mine = itertools.chain(pl_module.parameters(), pl_module.buffers())
        average = itertools.chain(self.average.module.parameters(), self.average.module.buffers())
        for current, averaged in zip(mine, average, strict=True):
            held = averaged.detach().clone()
            averaged.copy_(current)
            current.copy_(held)
        self._swapped = not self._swapped

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.average is not None:
            self._swap(pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._swapped:
            self._swap(pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._swapped:  # interrupted mid-validation: give the module its trained weights back
            self._swap(pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"latest_update_step": self._latest_update_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._latest_update_step = state_dict["latest_update_step"]

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self.average is None:
            return
        average = self.average.state_dict()  # module.model.* and n_averaged
        prefix = "module."
        checkpoint["state_dict"].update({"ema_" + k[len(prefix):]: v for k, v in average.items()
                                         if k.startswith(prefix)})  # -> ema_model.*
        checkpoint["averaging_state"] = {k: v for k, v in average.items() if not k.startswith(prefix)}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # SCDLitModule.on_load_checkpoint moved the ema_model.* weights to "ema_state_dict"
        ema = checkpoint.get("ema_state_dict") or {}
        if self.average is None:
            return
        if not ema:
            rank_zero_warn("the checkpoint holds no EMA weights: the average starts from the loaded weights")
            self.average.module.load_state_dict(pl_module.state_dict())
            return
        state = {"module." + k[len("ema_"):]: v for k, v in ema.items()}  # ema_model.x -> module.model.x
        state.update(checkpoint.get("averaging_state") or {"n_averaged": torch.tensor(1)})
        self.average.load_state_dict(state)


def video_strip(video: Tensor, scale: int = 1) -> np.ndarray:
    """``(B, F, C, H, W)`` in [-1, 1] -> uint8 image ``(B·H, F·W, 3)``: one row per clip."""
    img = to_channels(to_uint8(video[:, :, :3], "b f c h w -> (b h) (f w) c"), 3)  # grey -> RGB
    return img.repeat(scale, 0).repeat(scale, 1) if scale > 1 else img


def sample_conditions(cfg, count: int, frames: int, seed: int) -> dict[str, Tensor]:
    """For a conditioned model: seeded random actions ``(count, frames)`` (the same every
    time) and labels ``0, 1, 2, ...`` (one class per row, cycling)."""
    out: dict[str, Tensor] = {}
    if cfg.actions:
        out["actions"] = torch.randint(0, cfg.actions, (count, frames), generator=torch.Generator().manual_seed(seed))
    if cfg.classes:
        out["labels"] = torch.arange(count) % cfg.classes
    return out


class SampleStrip(L.Callback):
    """Every ``every_n_steps`` (and when training ends) generate ``count`` clips of
    ``frames`` frames with ``steps`` denoising steps and write
    ``<out_dir>/samples/step_NNNNNNN.png`` (rows: clips, columns: frames), a ``.gif`` of
    the clips side by side, and the strip to TensorBoard. Rank 0 only; the same noise
    every time, so strips are comparable across steps.

    A model trained on an autoencoder's latents (``autoencoder``: the shards name it) is
    shown in pixels: each frame decoded through it, eagerly (a few strips per run).

    The network is the one ``--weights auto`` would load from a checkpoint of this step
    (:meth:`EMA.choice`): the trained weights until the EMA has seen enough updates, then
    the EMA. The TensorBoard tag says which (``samples/trained``, ``samples/ema``), and a
    log line says so at the first strip and whenever the choice changes."""

    def __init__(self, out_dir: str, every_n_steps: int, count: int, frames: int, steps: int,
                 seed: int = 0, ema: Optional[EMA] = None, autoencoder: Optional[LoadedAutoencoder] = None):
        self.dir = os.path.join(out_dir, "samples")
        self.autoencoder = autoencoder
        self._codec: Optional[AutoencoderCodec] = None  # built on the first strip, on the module's device
        self.every, self.count, self.frames, self.steps = every_n_steps, count, frames, steps
        self.seed, self.ema = seed, ema
        self._last_step = -1
        self._last_weights: Optional[str] = None

    def pick_network(self, step: int, pl_module: L.LightningModule) -> tuple[nn.Module, str]:
        """The network ``auto`` picks now and its name (``trained`` or ``ema``); logs a switch."""
        if self.ema is None or self.ema.network is None:
            return pl_module.model, "trained"
        choice = self.ema.choice()
        if choice.weights != self._last_weights:
            rank_zero_info(f"sample strips from step {step}: {choice.line()}")
            self._last_weights = choice.weights
        return (self.ema.network if choice.weights == "ema" else pl_module.model), choice.weights

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every and step % self.every == 0 and step != self._last_step:
            self.write(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self.write(trainer, pl_module)

    @torch.no_grad()
    def write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Optional[str]:
        step = self._last_step = trainer.global_step
        if not trainer.is_global_zero:
            return None
        net, weights = self.pick_network(step, pl_module)
        was_training = net.training
        net.eval()
        try:
            video = net.generate(self.count, self.frames, self.steps,
                                 generator=torch.Generator().manual_seed(self.seed),
                                 compile=False,  # a few strips per run: compiling would cost more than it saves
                                 **sample_conditions(net.cfg, self.count, self.frames, self.seed))  # (B, F, C, H, W)
        finally:
            net.train(was_training)
        if self.autoencoder is not None:
            if self._codec is None:
                self._codec = AutoencoderCodec(self.autoencoder, video.device, compile=False)
            video = self._codec.clip(video)  # (B, F, c, h, w) latents -> (B, F, C, H, W) pixels
        scale = display_scale(video.shape[-1])
        strip = video_strip(video, scale)  # (B·H, F·W, 3)
        os.makedirs(self.dir, exist_ok=True)
        path = os.path.join(self.dir, f"step_{step:07d}")
        save_png(strip, path + ".png")
        w = video.shape[-1] * scale
        frames = [np.concatenate(np.split(strip[:, i * w:(i + 1) * w], self.count, 0), 1)
                  for i in range(self.frames)]  # clips side by side, (H, B·W, 3) each
        save_gif(frames, path + ".gif", fps=8)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(f"samples/{weights}", strip, step, dataformats="HWC")
        return path + ".png"


class LastCheckpoint(L.Callback):
    """Writes ``<dirpath>/last.ckpt`` when training ends (if the newest checkpoint is older
    than the final step) and on Ctrl-C / SIGTERM, so an interrupted run can resume
    (``--resume auto``). Lightning writes checkpoints atomically (temporary file, then
    rename), so a SIGKILL leaves the previous ``last.ckpt`` intact.

    Why not Lightning's own: ``OnExceptionCheckpoint`` saves on *every* exception (a nan
    loss or a bug too, whose state should not be resumed over the last good one), on
    every rank even for a Ctrl-C that reached the ranks at different points (a
    collective save would hang), and deletes its file at teardown, so it cannot be a
    ``last.ckpt`` that outlives the run. ``ModelCheckpoint(save_on_exception=True)`` also
    saves on every exception (and a step file besides), and its ``save_last`` writes at
    the end only when nothing was saved before, not when the final step is newer than the
    last save. ``ModelCheckpoint(save_last=True)`` still writes ``last.ckpt`` with every
    step checkpoint; this callback only adds the end and the interrupts."""

    def __init__(self, dirpath: str):
        self.path = os.path.join(dirpath, "last.ckpt")
        self.saved_step = -1
        self.interrupted_by: Optional[BaseException] = None  # the Ctrl-C / SIGTERM seen, if any

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self.saved_step = trainer.global_step

    def _save(self, trainer: L.Trainer) -> None:
        if trainer.global_step > 0 and self.saved_step != trainer.global_step:
            trainer.save_checkpoint(self.path, weights_only=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # SIGTERM is handled by Lightning on every rank at a batch boundary, so the save is
        # collective-safe; a Ctrl-C hits ranks at arbitrary points, so only one process saves.
        # The message is printed by the caller (train.TrainingInterrupted), after the progress bar closed.
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            self.interrupted_by = exception
        if isinstance(exception, SIGTERMException) or (isinstance(exception, KeyboardInterrupt)
                                                       and trainer.world_size == 1):
            self._save(trainer)


class CtrlCBetweenBatches(L.Callback):
    """On a single process, Ctrl-C stops training at the next batch boundary instead of
    wherever Python happened to be: the first SIGINT only sets a flag, and the start of
    the next train (or validation) batch raises ``KeyboardInterrupt`` from this
    callback, which Lightning then handles as before (``on_exception`` hooks, loggers
    closed; :class:`LastCheckpoint` writes ``last.ckpt``), after every hook of the batch
    before it ran (its step checkpoint, sample strip). A second Ctrl-C raises at once.
    Installed even where SIGINT was ignored at start (a script's ``cmd &``), as
    ``generate`` does: Ctrl-C on the script then stops the run with its checkpoint.

    Why: a ``KeyboardInterrupt`` raised at an arbitrary bytecode can land inside
    TensorBoard's writer queue, and closing the logger then waits forever for its thread,
    or inside a finalizer, where Python drops it and training goes on. Several processes
    (DDP) keep Python's default: their Ctrl-C reaches the ranks at different batches, and
    a stop at different boundaries would hang the next collective."""

    def __init__(self) -> None:
        self.pending = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True
        # os.write, not print: the handler may run in the middle of another write to the stream
        os.write(2, b"\nCtrl-C: stopping when this step ends (Ctrl-C again: now)\n")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size == 1 and threading.current_thread() is threading.main_thread():
            self.pending = False
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt):  # after Ctrl-C Lightning ignores SIGINT while it shuts down
            self._restore()

    def _stop_if_pending(self) -> None:
        if self.pending:
            raise KeyboardInterrupt

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._stop_if_pending()

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self._stop_if_pending()
