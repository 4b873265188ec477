"""Atari 2600 clips from the Arcade Learning Environment (``ale-py``; ROMs ship in its wheel).

``ALEInterface`` directly (no gymnasium), as in the ALE v5 protocol: frame skip 4 (one
agent step = 4 emulator frames, 15 recorded frames per second), sticky actions with
``repeat_action_probability = 0.25`` (the emulator keeps the previous action with that
probability on every frame, from ALE's RNG seeded per rollout). An episode ends at
game over (not at a lost life). Screens are 210x160 RGB, **stretched** to ``size`` x
``size`` (antialiased bilinear): a centre crop would cut off Breakout's paddle and
Pong's walls.

**Action ids.** The policy plays each game's *minimal* action set, uniformly. Ids
index the union of the minimal sets of the chosen games, sorted by ALE's action
number, and are named by ALE (``NOOP``, ``FIRE``, ``UP``, ``RIGHT``, ...); id 0 is
always ``NOOP``. With one game the ids are the indices into its minimal action set.
With several games the class label is the game (``class_names`` = the games, in the
order given) and each game's clips use only its own ids.
"""

from __future__ import annotations

import importlib

import functools
from collections.abc import Iterable, Iterator

import numpy as np

from ..sources import Clip
from .rollout import HeldPolicy, Rollout, check_options, import_engine, parse_names, plan_rollouts
from .workers import STALL_SECONDS, result, stream_clips

FRAME_SKIP = 4
STICKY = 0.25
FPS = 60.0 / FRAME_SKIP
DEFAULT_GAMES = "breakout,pong,space_invaders"


def _ale():
    ale_py = import_engine("ale_py", "atari")
    importlib.import_module("ale_py.roms")  # a subpackage: not every install imports it with ale_py
    return ale_py


def atari_games() -> tuple[str, ...]:
    """Every ROM id that ale-py ships (``breakout``, ``pong``, ``space_invaders``, ...)."""
    return tuple(sorted(_ale().roms.get_all_rom_ids()))


class AtariEngine:
    """One ALE instance: ``step(id)`` plays ALE action ``ale_actions[id]`` for ``frame_skip`` frames."""

    def __init__(self, game: str, seed: int, ale_actions: tuple[int, ...], frame_skip: int = FRAME_SKIP,
                 sticky: float = STICKY):
        ale_py = _ale()
        # ALE's logger level is process-wide; this runs in our own worker processes (and
        # gymnasium's AtariEnv sets it the same way) to silence a banner per ROM load.
        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
        self.ale = ale_py.ALEInterface()
        self.ale.setInt("random_seed", seed)
        self.ale.setFloat("repeat_action_probability", sticky)
        self.ale.loadROM(ale_py.roms.get_rom_path(game))
        self.actions = [ale_py.Action(a) for a in ale_actions]
        self.frame_skip = frame_skip

    def step(self, action: int) -> bool:
        for _ in range(self.frame_skip):
            self.ale.act(self.actions[action])
            if self.ale.game_over() or self.ale.game_truncated():
                self.ale.reset_game()
                return True
        return False

    def screen(self) -> np.ndarray:
        return self.ale.getScreenRGB()  # (210, 160, 3) uint8

    def close(self) -> None:
        del self.ale


def minimal_action_sets(games: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """ALE action numbers of each game's minimal action set (loads each ROM; run in a worker)."""
    return {game: tuple(a.value for a in AtariEngine(game, 0, ()).ale.getMinimalActionSet()) for game in games}


def action_space(minimal: dict[str, tuple[int, ...]]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Names and ALE numbers of the union of the minimal sets, sorted by ALE number."""
    numbers = tuple(sorted(set().union(*minimal.values())))
    return tuple(_ale().Action(n).name for n in numbers), numbers


def atari_clips(num_frames: int, size: int, clips: int, seed: int = 0, *,
                games: str | Iterable[str] = DEFAULT_GAMES, workers: int | None = None,
                clips_per_rollout: int = 8, channels: int = 3, fps: float | None = None) -> Iterator[Clip]:
    """``clips`` Atari clips of ``num_frames`` frames at ``size`` x ``size``, with actions.

    Rollout ``r`` plays game ``games[r % len(games)]`` and gives clips
    ``r * clips_per_rollout, ...`` (see ``rollout.py``); ``workers`` spawned processes
    (default: CPU count) share the rollouts. Options are checked at once; the engines
    start on the first ``next``.
    """
    games = parse_names(games, atari_games(), "games")
    workers = check_options(num_frames, size, clips, workers, clips_per_rollout, channels)
    plan = plan_rollouts(clips, clips_per_rollout, seed, len(games))

    def build(pool) -> tuple[list[Rollout], tuple[str, ...]]:
        minimal = result(pool.submit(minimal_action_sets, games), "atari", "reading the action sets", STALL_SECONDS)
        names, numbers = action_space(minimal)
        return [Rollout(functools.partial(AtariEngine, games[p.choice], p.engine_seed, numbers),
                        HeldPolicy(tuple(numbers.index(n) for n in minimal[games[p.choice]])), p.key, p.clips,
                        num_frames, size, channels, crop=False, name=games[p.choice]) for p in plan], names

    def meta(p) -> dict:
        return {"game": games[p.choice], "frame_skip": FRAME_SKIP, "repeat_action_probability": STICKY}

    return stream_clips("atari", plan, workers, build, FPS if fps is None else fps,
                        games if len(games) > 1 else (), meta)


def atari_engine(meta: dict):
    """The engine factory and crop flag of a stored Atari clip (its json ``meta``), for replay."""
    numbers = tuple(_ale().Action.__members__[n].value for n in meta["action_names"])
    return functools.partial(AtariEngine, meta["game"], meta["engine_seed"], numbers, meta["frame_skip"],
                             meta["repeat_action_probability"]), False
