"""Conditions a clip carries (DESIGN.md section 7): per-frame actions and a class label.

On disk, next to the frames of a sample (written by ``make_shards``):

* ``actions.npy``: int64 ``(F,)``, one id per stored frame; **``actions[i]`` is the
  action that leads to frame ``i``** (the action taken on frame ``i - 1``), so a random
  window ``frames[s:s + n]`` goes with ``actions[s:s + n]``;
* in the sample's ``json``: ``label`` (int, the clip's class) when the set is labelled,
  and the header of the set, ``action_names`` (id -> name) and ``class_names``
  (label -> name), in **every** sample. There is no separate header file: a shard read
  on its own, copied elsewhere or streamed from a bucket still says what its ids mean.

Shards written by other tools carry none of these and read as before. ``shard_conditions``
says what a shard set carries (for sizing embedding tables before training).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scd_msc.checks import integer


@dataclass(frozen=True)
class Conditions:
    """What the samples of a shard set carry.

    ``actions`` / ``labels``: whether samples have ``actions.npy`` / a json ``label``.
    ``action_names`` / ``class_names``: the names of ids ``0..n-1`` (empty when the
    shards do not name them, e.g. shards written by another tool).
    """

    actions: bool = False
    labels: bool = False
    action_names: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()

    @property
    def num_actions(self) -> int | None:
        """Size of the action id space, or None when there are no (named) actions."""
        return len(self.action_names) if self.action_names else None

    @property
    def num_classes(self) -> int | None:
        """Number of classes, or None when there are no (named) classes."""
        return len(self.class_names) if self.class_names else None

    def __str__(self) -> str:
        def part(kind: str, present: bool, names: tuple[str, ...]) -> str:
            if not present:
                return f"no {kind}"
            return f"{len(names)} {kind} ({', '.join(names)})" if names else f"{kind} (unnamed)"
        return f"{part('actions', self.actions, self.action_names)}; {part('classes', self.labels, self.class_names)}"


def clip_conditions(frames: int, actions: np.ndarray | None, label: int | None,
                    action_names: Sequence[str] = (), class_names: Sequence[str] = ()) -> tuple[dict, dict]:
    """The sample fields (``{"actions.npy": bytes}``) and json entries of one clip's conditions.

    Checks that ``actions`` has one id per frame, within ``action_names`` when named,
    and that ``label`` is within ``class_names`` when named.
    """
    fields: dict = {}
    meta: dict = {}
    if actions is not None:
        actions = np.asarray(actions)
        if actions.shape != (frames,) or actions.dtype.kind not in "iu":
            raise ValueError(f"actions {actions.dtype} {actions.shape}: expected integer ids of shape ({frames},)")
        if len(actions) and (actions.min() < 0 or (action_names and actions.max() >= len(action_names))):
            raise ValueError(f"actions in [{actions.min()}, {actions.max()}]: expected ids in "
                             f"[0, {len(action_names) or 'inf'})")
        from .shards import npy_bytes

        fields["actions.npy"] = npy_bytes(actions.astype(np.int64))
    if label is not None:
        integer("label", label, low=0, high=len(class_names) - 1 if class_names else None)
        meta["label"] = int(label)
    if action_names:
        meta["action_names"] = list(action_names)
    if class_names:
        meta["class_names"] = list(class_names)
    return fields, meta


def sample_conditions(sample: dict) -> Conditions:
    """The conditions of one raw webdataset sample (``{"json": bytes, "actions.npy": ..., ...}``)."""
    meta = json.loads(sample["json"]) if "json" in sample else {}
    meta = meta if isinstance(meta, dict) else {}
    return Conditions(actions="actions.npy" in sample, labels=meta.get("label") is not None,
                      action_names=tuple(meta.get("action_names") or ()),
                      class_names=tuple(meta.get("class_names") or ()))


def shard_conditions(shards: str | Sequence[str]) -> Conditions:
    """What the shard set carries, read from the first sample of every shard.

    ``shards``: a brace pattern, glob or list (see ``dataset.expand_shards``). Raises a
    ``ValueError`` when two shards disagree (e.g. two sets with different action ids
    mixed in one pattern): their ids would index different embedding rows.
    """
    import webdataset as wds

    from .dataset import expand_shards

    found: Conditions | None = None
    first_url = ""
    for url in expand_shards(shards):
        sample = next(iter(wds.tarfile_to_samples()([{"url": url}])), None)
        if sample is None:  # an empty shard says nothing
            continue
        conditions = sample_conditions(sample)
        if found is None:
            found, first_url = conditions, url
        elif conditions != found:
            raise ValueError(f"shards={shards!r}: expected one set of conditions, {first_url} has "
                             f"[{found}] but {url} has [{conditions}]")
    return found if found is not None else Conditions()
