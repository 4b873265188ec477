"""Action-labelled video from real game engines (extra ``games``: ``ale-py``, ``vizdoom``).

* ``atari`` (``atari.py``): Atari 2600 games through ALE, ids in the union of the games'
  minimal action sets, class = game.
* ``doom`` (``doom.py``): ViZDoom scenarios and Freedoom 2 levels, one fixed set of ten
  button combinations, class = scenario.

Both engines ship their game data in their wheels: nothing is downloaded. A random
policy holds each action for 3-9 agent steps; everything is a function of the seed;
rollouts run in spawned worker processes (``rollout.py``, ``workers.py``). The engine packages are
imported on first use; without them the sources say ``pip install 'scd_msc[games]'``.
"""

from __future__ import annotations

import numpy as np

from scd_msc.checks import choice

from .atari import atari_clips, atari_engine
from .doom import doom_clips, doom_engine
from .rollout import HeldPolicy, Rollout
from .workers import run_one

GAMES = {"atari": atari_clips, "doom": doom_clips}
_ENGINES = {"atari": atari_engine, "doom": doom_engine}


def replay_clip(meta: dict, actions: np.ndarray) -> np.ndarray:
    """Play a stored game clip again: uint8 ``(F, H, W, C)`` frames, as stored (resized).

    ``meta``: the sample's json (engine seed, ``prefix``, game or scenario, ...);
    ``actions``: its ``actions.npy``. The engine runs in a spawned process.
    """
    choice("source", meta.get("source"), _ENGINES, "only game clips can be replayed")
    engine, crop = _ENGINES[meta["source"]](meta)
    name = meta.get("game") or meta.get("scenario")
    task = Rollout(engine, HeldPolicy((0,)), (0, 0), 0, len(actions), meta["height"], meta["channels"], crop, name)
    return run_one(task, meta["prefix"], np.asarray(actions))


__all__ = ["GAMES", "atari_clips", "doom_clips", "replay_clip"]
