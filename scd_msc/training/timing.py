"""``StepTimer``: how long a training step takes and how much of it waits for data.

The loader wait of step ``i`` is the host time from the end of step ``i-1``
(``on_train_batch_end``) to the start of step ``i`` (``on_train_batch_start``): the
``next()`` on the data loader plus Lightning's loop bookkeeping, so it is an upper
bound of the time the GPU starves. Every training step syncs with the GPU (the finite
loss check), so host intervals are device step times. Intervals that hold a
validation run or a checkpoint save are dropped, as are those ending at steps 1 to
``warmup`` (compilation, allocator and loader warm-up).

Written at the end of training (and on interrupt) by rank 0 to
``<out_dir>/timing.json``::

    steps                 intervals measured
    step_ms_median/mean   start-to-start interval of one optimizer step
    loader_wait_ms_mean   mean wait per step; loader_wait_ms_p95
    loader_wait_fraction  sum of waits / sum of intervals
    steps_per_s           1000 / step_ms_mean
    samples_per_s         steps_per_s x batch size x world size
    model_tflops_per_s    model FLOPs per clip (training/flops.py) x samples_per_s
    mfu                   model_tflops_per_s / (GPUs x the chip's dense bf16 peak), when known
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any, Optional

import lightning as L
import torch

from scd_msc.training.flops import peak_tflops


class StepTimer(L.Callback):
    """Times steps and loader waits (see the module docstring); logs
    ``time/step_ms`` and ``time/loader_wait_ms`` every step."""

    def __init__(self, out_dir: str, batch_size: int, warmup: int = 20, flops_per_sample: Optional[float] = None):
        self.path = os.path.join(out_dir, "timing.json")
        self.batch_size, self.warmup = batch_size, warmup
        self.flops_per_sample = flops_per_sample
        self.peak: Optional[tuple[str, float]] = None  # (GPU name, dense bf16 TFLOP/s), set at fit start
        self.intervals_ms: list[float] = []
        self.waits_ms: list[float] = []
        self._start: Optional[float] = None  # previous step's start
        self._end: Optional[float] = None  # previous step's end
        self._seen = 0
        self._dirty = False  # the current gap holds a validation run or a checkpoint save

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        now = time.perf_counter()
        self._seen += 1
        if self._start is not None and self._end is not None and not self._dirty and self._seen > self.warmup + 1:
            self.intervals_ms.append((now - self._start) * 1e3)
            self.waits_ms.append((now - self._end) * 1e3)
            pl_module.log_dict({"time/step_ms": self.intervals_ms[-1], "time/loader_wait_ms": self.waits_ms[-1]},
                               on_step=True, on_epoch=False, batch_size=self.batch_size)
        self._start, self._dirty = now, False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._end = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._dirty = True

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self._dirty = True

    def summary(self, world_size: int) -> dict[str, Any]:
        n = len(self.intervals_ms)
        if n == 0:  # no timed step (a run shorter than the warm-up): the sizes still say what was trained
            return {"steps": 0, "warmup": self.warmup, "world_size": world_size, "batch_size": self.batch_size}
        step_mean = statistics.fmean(self.intervals_ms)
        waits = sorted(self.waits_ms)
        return {
            "steps": n, "warmup": self.warmup, "world_size": world_size, "batch_size": self.batch_size,
            "step_ms_median": statistics.median(self.intervals_ms), "step_ms_mean": step_mean,
            "loader_wait_ms_mean": statistics.fmean(waits), "loader_wait_ms_p95": waits[int(0.95 * (n - 1))],
            "loader_wait_fraction": sum(waits) / sum(self.intervals_ms),
            "steps_per_s": 1e3 / step_mean, "samples_per_s": 1e3 / step_mean * self.batch_size * world_size,
            **self._mfu(1e3 / step_mean * self.batch_size * world_size, world_size),
        }

    def _mfu(self, samples_per_s: float, world_size: int) -> dict[str, Any]:
        if self.flops_per_sample is None:
            return {}
        tflops = samples_per_s * self.flops_per_sample / 1e12
        out: dict[str, Any] = {"model_tflops_per_step_sample": self.flops_per_sample / 1e12,
                               "model_tflops_per_s": tflops}
        if self.peak is not None:
            out.update(gpu=self.peak[0], peak_tflops=self.peak[1], mfu=tflops / (world_size * self.peak[1]))
        return out

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = pl_module.device
        if device.type == "cuda":
            name = torch.cuda.get_device_name(device)
            peak = peak_tflops(name)
            self.peak = None if peak is None else (name, peak)

    def _write(self, trainer: L.Trainer) -> None:
        if trainer.is_global_zero:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path, "w") as f:
                json.dump(self.summary(trainer.world_size), f, indent=2)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._write(trainer)
