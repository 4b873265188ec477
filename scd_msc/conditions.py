"""The conditioning convention (DESIGN.md §7) and the check of what a caller passes.

``actions`` ``(B, F)`` int64: ``actions[:, i]`` is the id of the action that leads to
frame ``i``. ``labels`` ``(B,)`` int64: one class per clip. A model conditioned on ``N``
actions (``ModelConfig.actions = N``) takes ids ``0 .. N-1`` and the **null** id ``N``
("no action": what classifier-free guidance compares against, and what
``train.cond_dropout`` substitutes in training); the same for ``classes``.

Shapes: ``B`` batch · ``F`` frames.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def check_ids(name: str, ids: Optional[Tensor], size: int, what: str,
              shape: tuple[Optional[int], ...]) -> None:
    """ValueError naming ``name`` unless ``ids`` fit a condition of ``size`` ids (0: the
    model has none, so ``ids`` must be None): int64, ``shape`` (None: any length), ids in
    ``[0, size]`` (``size`` = null)."""
    dims = ", ".join("BF"[i] if s is None else str(s) for i, s in enumerate(shape))
    want = "(" + dims + ("," if len(shape) == 1 else "") + ")"
    if size == 0:
        if ids is not None:
            raise ValueError(f"{name}: this model has no {what} (ModelConfig.{what}=0); expected None")
        return
    if ids is None:
        raise ValueError(f"{name}=None: this model is conditioned on {size} {what} (ModelConfig.{what}={size}); "
                         f"expected int64 ids {want} in [0, {size}] ({size} = null)")
    if not isinstance(ids, Tensor) or ids.dtype != torch.long:
        raise ValueError(f"{name}: expected int64 ids {want}, got {getattr(ids, 'dtype', type(ids).__name__)}")
    if ids.dim() != len(shape) or any(s is not None and d != s for d, s in zip(ids.shape, shape)):
        raise ValueError(f"{name}: expected shape {want}, got {tuple(ids.shape)}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > size):
        raise ValueError(f"{name}: ids must be in [0, {size}] ({size} = null), got min {int(ids.min())}, "
                         f"max {int(ids.max())}")


def check_conditions(cfg, actions: Optional[Tensor], labels: Optional[Tensor],
                     batch: Optional[int] = None, frames: Optional[int] = None) -> None:
    """``actions`` ``(B, F)`` and ``labels`` ``(B,)`` against the model config ``cfg``
    (its ``actions`` and ``classes``): see :func:`check_ids`."""
    check_ids("actions", actions, cfg.actions, "actions", (batch, frames))
    check_ids("labels", labels, cfg.classes, "classes", (batch,))
