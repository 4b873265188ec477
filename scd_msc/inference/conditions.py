"""The conditions ``generate`` and ``eval`` hand a conditioned model (DESIGN.md §7).

``actions (B, F)`` int64: ``actions[:, i]`` is the id of the action that leads to frame
``i``; ``labels (B,)`` one class per video. A model with ``ModelConfig.actions = N``
takes ids ``0 .. N-1`` and the null id ``N`` (the same for ``classes``);
:func:`scd_msc.conditions.check_ids` states the rule and its errors.

Where they come from:

* ``--actions random``: the game sources' policy (:class:`~scd_msc.data.games.rollout.HeldPolicy`):
  draw an id uniformly from ``0 .. N-1``, hold it for 3-9 frames, repeat. Video ``b`` of
  the batch draws from its own stream, seeded by ``(--seed, b)``, so a video's actions do
  not depend on ``--batch``.
* ``--actions FILE.npy``: integer ids ``(F,)`` (every video) or ``(B, F)``, e.g. the
  ``.actions.npy`` that ``generate`` writes next to every video it makes.
* ``--labels ID[,ID...]`` (one id for every video, or one per video) or ``random``
  (uniform over ``0 .. classes-1``, seeded by ``--seed``).
* ``--prompt-shards`` / ``--shards``: each clip's own ``actions`` and ``label``.

Every function raises a one-line ``ValueError`` naming the argument and its value.

Shapes: ``B`` batch · ``F`` frames.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from scd_msc.conditions import check_ids
from scd_msc.models import ModelConfig

SOURCE_HINT = "scd-msc make-shards atari|doom"


def _ids_range(size: int) -> str:
    return f"ids in [0, {size}] ({size} = null)"


def _streams(seed: int, kind: int, count: int) -> list[np.random.Generator]:
    """``count`` independent generators for stream ``kind`` of ``seed`` (0: actions, 1: labels)."""
    return [np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(kind, i))) for i in range(count)]


def random_actions(num_actions: int, batch: int, frames: int, seed: int) -> Tensor:
    """``(B, F)`` ids from the held-action policy over ``0 .. num_actions-1``; row ``b``
    is seeded by ``(seed, b)``."""
    from scd_msc.data.games.rollout import HeldPolicy  # the game sources' policy (no engine imported)

    policy = HeldPolicy(tuple(range(num_actions)))
    rows = [list(itertools.islice(policy.actions(rng), frames)) for rng in _streams(seed, 0, batch)]
    return torch.tensor(rows, dtype=torch.long)


def load_actions(path: str, num_actions: int, batch: int, frames: int, arg: str = "--actions") -> Tensor:
    """The ids of ``path`` (``.npy``, integers ``(F,)`` or ``(B, F)``) as ``(B, F)`` int64."""
    if not path.endswith(".npy"):
        raise ValueError(f"{arg}={path!r}: expected random or a .npy file of integer action ids")
    try:
        ids = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{arg}={path!r}: the file does not exist") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{arg}={path!r}: not a readable .npy file ({err})") from None
    if ids.dtype.kind not in "iu":
        raise ValueError(f"{arg}={path!r}: expected integer action ids, got dtype {ids.dtype}")
    if ids.shape not in ((frames,), (batch, frames)):
        raise ValueError(f"{arg}={path!r}: expected shape ({frames},) or ({batch}, {frames}) "
                         f"(--frames, or --batch × --frames), got {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() > num_actions):
        raise ValueError(f"{arg}={path!r}: expected {_ids_range(num_actions)} (the model's actions), "
                         f"got min {ids.min()}, max {ids.max()}")
    return torch.from_numpy(ids.astype(np.int64)).expand(batch, frames).clone()


def parse_labels(value: str, num_classes: int, batch: int, seed: int, arg: str = "--labels") -> Tensor:
    """``random`` or ``ID[,ID...]`` (one id, or ``batch`` ids) -> ``(B,)`` int64."""
    if value == "random":
        return torch.tensor([int(rng.integers(num_classes)) for rng in _streams(seed, 1, batch)])
    try:
        ids = [int(v) for v in value.split(",")]
    except ValueError:
        raise ValueError(f"{arg}={value!r}: expected random or comma-separated class ids") from None
    if len(ids) not in (1, batch):
        raise ValueError(f"{arg}={value!r}: expected 1 or {batch} (--batch) ids, got {len(ids)}")
    if min(ids) < 0 or max(ids) > num_classes:
        raise ValueError(f"{arg}={value!r}: expected {_ids_range(num_classes)} (the model's classes)")
    return torch.tensor(ids * (batch // len(ids)), dtype=torch.long)


def clip_conditions(cfg: ModelConfig, batch: dict, arg: str, shards: str,
                    labels: bool = True) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """The ``actions (B, F)`` and ``label (B,)`` of clips read from ``shards`` that the
    model takes, checked against it; None for a condition the model does not have (and
    for the labels when not ``labels``: the caller has its own)."""
    out = []
    for key, size, what in (("actions", cfg.actions, "actions"), ("label", cfg.classes if labels else 0, "classes")):
        if not size:
            out.append(None)
            continue
        if key not in batch:
            raise ValueError(f"{arg}={shards!r}: its clips carry no {what}, but this model is conditioned on "
                             f"{size} {what} (ModelConfig.{what}={size}); expected shards with {what} "
                             f"({SOURCE_HINT})")
        try:
            check_ids(key, batch[key], size, what, tuple(batch[key].shape))
        except ValueError as err:
            raise ValueError(f"{arg}={shards!r}: {err} (the model's {what})") from None
        out.append(batch[key])
    return out[0], out[1]


def check_shard_names(cfg: ModelConfig, shards: str, arg: str) -> None:
    """The shards must not name more actions or classes than the model has ids for."""
    from scd_msc.data import shard_conditions

    try:
        conds = shard_conditions(shards)
    except ValueError as err:
        raise ValueError(f"{arg}: {err}") from None
    for what, size, named in (("actions", cfg.actions, conds.num_actions), ("classes", cfg.classes, conds.num_classes)):
        if size and named is not None and named > size:
            raise ValueError(f"{arg}={shards!r}: names {named} {what}, but this model has {size} "
                             f"(ModelConfig.{what}={size}); expected shards of the set it was trained on")


def _missing(flag: str, what: str, size: int, how: str) -> ValueError:
    return ValueError(f"{flag}: missing; this model is conditioned on {size} {what} "
                      f"(ModelConfig.{what}={size}, {_ids_range(size)}): pass {how}")


def _unused(flag: str, value: str, what: str) -> ValueError:
    return ValueError(f"{flag}={value!r}: this model has no {what} (ModelConfig.{what}=0); drop {flag}")


def save_actions(actions: Tensor, out: Path) -> Path:
    """Save ``actions (B, F)`` next to video ``out`` (``video.mp4`` -> ``video.actions.npy``,
    the folder created): ``--actions`` replays them. Returns the path."""
    path = out.with_suffix(".actions.npy")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, actions.cpu().numpy())
    return path


def stream_kwargs(prompt_actions: Optional[Tensor], labels: Optional[Tensor],
                  cond_guidance: float = 1.0) -> dict[str, Any]:
    """The condition keywords of ``model.stream`` that are set: an unconditioned model is
    called as before (``stream`` of any :class:`~scd_msc.streaming.StreamingSession` maker)."""
    kwargs: dict[str, Any] = {"prompt_actions": prompt_actions, "labels": labels}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return kwargs | ({"cond_guidance": cond_guidance} if cond_guidance != 1.0 else {})


@dataclass
class GenerateConditions:
    """What ``generate`` conditions on: ``actions (B, F)`` of the new frames, ``labels (B,)``,
    ``prompt_actions (B, F0)`` of the prompt frames; None where the model has no such
    condition (or there is no prompt)."""

    actions: Optional[Tensor] = None
    labels: Optional[Tensor] = None
    prompt_actions: Optional[Tensor] = None


def for_generate(cfg: ModelConfig, actions: Optional[str], labels: Optional[str], batch: int, frames: int,
                 seed: int, prompt: Optional[dict], prompt_shards: Optional[str]) -> GenerateConditions:
    """``generate``'s conditions from ``--actions``, ``--labels`` and the prompt clips
    ``prompt`` (the batch read from ``--prompt-shards``: their actions, and their labels
    unless ``--labels`` is given)."""
    if not cfg.actions and actions is not None:
        raise _unused("--actions", actions, "actions")
    if not cfg.classes and labels is not None:
        raise _unused("--labels", labels, "classes")
    out = GenerateConditions()
    if prompt is not None:
        out.prompt_actions, out.labels = clip_conditions(cfg, prompt, "--prompt-shards", prompt_shards,
                                                         labels=labels is None)
    if cfg.actions and actions is None:
        raise _missing("--actions", "actions", cfg.actions, "--actions random or --actions FILE.npy "
                       f"(integer ids of shape ({frames},) or ({batch}, {frames}))")
    if cfg.classes and labels is None and out.labels is None:
        raise _missing("--labels", "classes", cfg.classes, "--labels ID[,ID...] or --labels random "
                       "(or --prompt-shards whose clips carry labels)")
    if cfg.actions:
        out.actions = (random_actions(cfg.actions, batch, frames, seed) if actions == "random"
                       else load_actions(actions, cfg.actions, batch, frames))
    if cfg.classes and labels is not None:
        out.labels = parse_labels(labels, cfg.classes, batch, seed)
    return out
