"""Embeddings of the conditions: discrete actions and class labels (DESIGN.md §7).

``actions[:, i]`` is the id of the action that leads to frame ``i``; a label conditions
the whole clip. Each condition has an embedding table with one extra **null** row: id
``ModelConfig.actions`` (resp. ``classes``) is "no condition", what classifier-free
guidance compares against and what ``train.cond_dropout`` substitutes at random in
training. The embeddings are added to the timestep (noise-level) embedding that drives
every adaLN block, as in DiT's class conditioning and the SCD reference's action model.
:func:`scd_msc.conditions.check_conditions` checks the ids a caller passes.

Shapes: ``B`` batch · ``F`` frames · ``B'`` frames folded into the batch · ``D`` width.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn


class ConditionEmbedding(nn.Module):
    """Action ids and class ids -> one embedding to add to the timestep embedding.

    ``num_actions``/``num_classes`` = 0: that condition does not exist (no table)."""

    def __init__(self, num_actions: int, num_classes: int, dim: int):
        super().__init__()
        self.num_actions, self.num_classes = num_actions, num_classes
        self.actions = nn.Embedding(num_actions + 1, dim) if num_actions else None  # last row: null
        self.classes = nn.Embedding(num_classes + 1, dim) if num_classes else None
        for table in (self.actions, self.classes):
            if table is not None:
                nn.init.normal_(table.weight, std=0.02)

    def forward(self, like: Tensor, actions: Optional[Tensor] = None,
                labels: Optional[Tensor] = None) -> Tensor:
        """``like`` is the timestep embedding, ``(B, F, D)`` (per frame) or ``(B', D)``;
        ``actions`` ``(B, F)`` resp. ``(B',)``, ``labels`` ``(B,)`` (or per frame ``(B, F)``)
        resp. ``(B',)``. Returns ``like`` plus the embeddings of the conditions the model has."""
        if self.actions is not None:
            like = like + self.actions(actions).to(like.dtype)
        if self.classes is not None:
            y = self.classes(labels).to(like.dtype)  # (B, D), (B, F, D) or (B', D)
            like = like + (y[:, None] if y.dim() < like.dim() else y)
        return like

