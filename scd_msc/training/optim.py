"""The optimizer of every training run: AdamW with weight decay on matrices only, a
linear learning-rate warm-up, then a constant or cosine rate. Lightning-free, so that benchmarks time the same
optimizer step as ``scd-msc train`` (``SCDLitModule.configure_optimizers`` calls it)."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn

from scd_msc.config import TrainConfig


def lr_factor(step: int, train: TrainConfig, time_fraction: float = 0.0) -> float:
    """The multiplier of ``train.lr`` after ``step`` optimizer steps: a linear ramp over
    ``train.warmup_steps``, then 1 (``constant``) or a cosine from 1 to
    ``train.lr_min_ratio`` over the rest of the run (``cosine``). The run's progress is
    the larger of ``step / max_steps`` and ``time_fraction`` (the share of
    ``train.max_minutes`` spent), so a run stopped by either ends at the floor."""
    warmup = max(train.warmup_steps, 1)
    if step < warmup or train.lr_schedule == "constant":
        return min(1.0, (step + 1) / warmup)
    progress = max((step - warmup) / max(train.max_steps - warmup, 1), time_fraction)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return train.lr_min_ratio + (1 - train.lr_min_ratio) * cosine


def build_optimizer(model: nn.Module, train: TrainConfig, time_fraction: Optional[Callable[[], float]] = None
                    ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``model``'s trainable parameters (``train.lr``, ``train.betas``):
    ``train.weight_decay`` on parameters of 2 or more dimensions, none on biases and norm
    scales; and a schedule, stepped once per optimizer step, of :func:`lr_factor`
    (``time_fraction()``: the share of ``train.max_minutes`` spent, default 0). Fused on
    CUDA, except under ``16-mixed``, whose loss scaler must unscale the gradients before
    they are clipped (a fused step unscales inside itself, after clipping)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": train.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]  # biases, norms
    fused = all(p.is_cuda for p in params) and train.precision != "16-mixed"  # one kernel for the update
    optimizer = torch.optim.AdamW(groups, lr=train.lr, betas=(train.betas[0], train.betas[1]), fused=fused)
    spent = time_fraction or (lambda: 0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, train, spent()))
    return optimizer, schedule
