"""The optimizer of every training run: AdamW with weight decay on matrices only, and a
linear learning-rate warm-up. Lightning-free, so that benchmarks time the same
optimizer step as ``scd-msc train`` (``SCDLitModule.configure_optimizers`` calls it)."""

from __future__ import annotations

import torch
from torch import nn

from scd_msc.config import TrainConfig


def build_optimizer(model: nn.Module, train: TrainConfig
                    ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``model``'s trainable parameters (``train.lr``, ``train.betas``):
    ``train.weight_decay`` on parameters of 2 or more dimensions, none on biases and norm
    scales; and a schedule, stepped once per optimizer step, that ramps the learning rate
    linearly to ``train.lr`` over ``train.warmup_steps`` steps. Fused on CUDA, except
    under ``16-mixed``, whose loss scaler must unscale the gradients before they are
    clipped (a fused step unscales inside itself, after clipping)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": train.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]  # biases, norms
    fused = all(p.is_cuda for p in params) and train.precision != "16-mixed"  # one kernel for the update
    optimizer = torch.optim.AdamW(groups, lr=train.lr, betas=(train.betas[0], train.betas[1]), fused=fused)
    warmup = max(train.warmup_steps, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    return optimizer, schedule
