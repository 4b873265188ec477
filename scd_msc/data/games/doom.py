"""Doom clips from ViZDoom (``vizdoom``; Freedoom and the scenarios ship in its wheel).

``DoomGame`` with a scenario cfg from ``vizdoom.scenarios_path`` (or a map of the full
Freedoom: Phase 2 game), always on ``freedoom2.wad`` (the GPU machine's wheel has no
``freedoom1.wad``), window hidden, sound off, HUD/crosshair/messages off, skill 1 for
every scenario (a random player lives longest), no episode time limit (episodes end
when the player dies or the level's goal is met). Frame skip 4
(one agent step = 4 game tics; 35 / 4 = 8.75 recorded frames per second). Screens are
RGB24 at the smallest ViZDoom resolution of 160x120, 320x240, 640x480 whose height is
at least ``size``, **centre-cropped** to a square (the sides of the 4:3 view are cut)
and resized to ``size`` x ``size``.

**Actions.** The buttons are set here, not taken from each cfg, so every scenario has
the same ids (``ACTIONS``: id, name, buttons held, policy weight)::

    0 NOOP               -                          1
    1 FORWARD            MOVE_FORWARD               6
    2 BACKWARD           MOVE_BACKWARD              2
    3 TURN_LEFT          TURN_LEFT                  3
    4 TURN_RIGHT         TURN_RIGHT                 3
    5 FORWARD_TURN_LEFT  MOVE_FORWARD + TURN_LEFT   4
    6 FORWARD_TURN_RIGHT MOVE_FORWARD + TURN_RIGHT  4
    7 STRAFE_LEFT        MOVE_LEFT                  2
    8 STRAFE_RIGHT       MOVE_RIGHT                 2
    9 ATTACK             ATTACK                     1

The held-action policy draws with these weights (out of 28: the player's moves 93%,
no-op and attack 3.6% each). With several scenarios the class label is the scenario.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Iterable, Iterator

import numpy as np

from ..sources import Clip
from .rollout import HeldPolicy, Rollout, check_options, import_engine, parse_names, plan_rollouts
from .workers import stream_clips

FRAME_SKIP = 4
FPS = 35.0 / FRAME_SKIP
BUTTONS = ("MOVE_FORWARD", "MOVE_BACKWARD", "TURN_LEFT", "TURN_RIGHT", "MOVE_LEFT", "MOVE_RIGHT", "ATTACK")
ACTIONS: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("NOOP", (), 1),
    ("FORWARD", ("MOVE_FORWARD",), 6),
    ("BACKWARD", ("MOVE_BACKWARD",), 2),
    ("TURN_LEFT", ("TURN_LEFT",), 3),
    ("TURN_RIGHT", ("TURN_RIGHT",), 3),
    ("FORWARD_TURN_LEFT", ("MOVE_FORWARD", "TURN_LEFT"), 4),
    ("FORWARD_TURN_RIGHT", ("MOVE_FORWARD", "TURN_RIGHT"), 4),
    ("STRAFE_LEFT", ("MOVE_LEFT",), 2),
    ("STRAFE_RIGHT", ("MOVE_RIGHT",), 2),
    ("ATTACK", ("ATTACK",), 1),
)
ACTION_NAMES = tuple(name for name, _, _ in ACTIONS)
# single-player scenarios on freedoom2.wad whose episodes outlast a clip under the policy
# (predict_position ends within ~20 steps; rocket_basic crashed ViZDoom 1.3.2;
# cig/multi/deathmatch need bots or other players)
SCENARIOS = ("basic", "deadly_corridor", "defend_the_center", "defend_the_line", "health_gathering",
             "health_gathering_supreme", "my_way_home", "simpler_basic", "take_cover")
MAPS = tuple(f"freedoom2_map{i:02d}" for i in range(1, 33))  # the full game's 32 levels
DEFAULT_SCENARIOS = "basic,defend_the_center,health_gathering,my_way_home,deadly_corridor"
SKILL = 1  # the easiest, for every scenario: a random player lives longest (deadly_corridor: median
           # episode 64 agent steps; 19 at its cfg's skill 5, shorter than a 32-frame clip)
RESOLUTIONS = ((120, "RES_160X120"), (240, "RES_320X240"), (480, "RES_640X480"))


def _vizdoom():
    return import_engine("vizdoom", "doom")


def resolution(size: int) -> str:
    """The smallest ViZDoom resolution whose height is at least ``size`` (else the largest)."""
    return next((name for height, name in RESOLUTIONS if height >= size), RESOLUTIONS[-1][1])


class DoomEngine:
    """One ViZDoom game: ``step(id)`` holds the buttons of ``ACTIONS[id]`` for ``frame_skip`` tics."""

    def __init__(self, scenario: str, seed: int, screen: str, frame_skip: int = FRAME_SKIP, skill: int = SKILL):
        vzd = _vizdoom()
        root = os.path.dirname(vzd.__file__)
        game = vzd.DoomGame()
        if scenario in MAPS:
            game.load_config(os.path.join(vzd.scenarios_path, "freedoom2.cfg"))
            game.set_doom_map(scenario.rsplit("_", 1)[1].upper())
        else:
            game.load_config(os.path.join(vzd.scenarios_path, f"{scenario}.cfg"))
        self.folder = tempfile.TemporaryDirectory(prefix="scd-msc-vizdoom-")
        game.set_doom_game_path(os.path.join(root, "freedoom2.wad"))
        game.set_doom_config_path(os.path.join(self.folder.name, "vizdoom.ini"))
        game.set_window_visible(False)
        game.set_sound_enabled(False)
        game.set_audio_buffer_enabled(False)
        game.set_automap_buffer_enabled(False)
        game.set_depth_buffer_enabled(False)
        game.set_labels_buffer_enabled(False)
        game.set_screen_resolution(getattr(vzd.ScreenResolution, screen))
        game.set_screen_format(vzd.ScreenFormat.RGB24)
        game.set_render_hud(False)
        game.set_render_crosshair(False)
        game.set_render_messages(False)
        game.set_mode(vzd.Mode.PLAYER)
        game.set_available_buttons([getattr(vzd.Button, b) for b in BUTTONS])
        game.set_available_game_variables([])
        game.set_episode_timeout(0)
        game.set_doom_skill(skill)
        game.set_seed(seed)
        game.init()
        self.game, self.frame_skip = game, frame_skip
        self.buttons = [[float(b in held) for b in BUTTONS] for _, held, _ in ACTIONS]

    def step(self, action: int) -> bool:
        self.game.make_action(self.buttons[action], self.frame_skip)
        if self.game.is_episode_finished():
            self.game.new_episode()
            return True
        return False

    def screen(self) -> np.ndarray:
        return self.game.get_state().screen_buffer  # (H, W, 3) uint8

    def close(self) -> None:
        self.game.close()
        self.folder.cleanup()


def doom_clips(num_frames: int, size: int, clips: int, seed: int = 0, *,
               scenarios: str | Iterable[str] = DEFAULT_SCENARIOS, workers: int | None = None,
               clips_per_rollout: int = 8, channels: int = 3, fps: float | None = None) -> Iterator[Clip]:
    """``clips`` Doom clips of ``num_frames`` frames at ``size`` x ``size``, with actions.

    Rollout ``r`` plays scenario ``scenarios[r % len(scenarios)]`` and gives clips
    ``r * clips_per_rollout, ...`` (see ``rollout.py``); ``workers`` spawned processes
    (default: CPU count) share the rollouts. Options are checked at once; the engines
    start on the first ``next``.
    """
    _vizdoom()
    scenarios = parse_names(scenarios, (*SCENARIOS, *MAPS), "scenarios")
    workers = check_options(num_frames, size, clips, workers, clips_per_rollout, channels)
    plan = plan_rollouts(clips, clips_per_rollout, seed, len(scenarios))
    screen = resolution(size)
    policy = HeldPolicy(tuple(range(len(ACTIONS))), tuple(float(w) for _, _, w in ACTIONS))
    tasks = [Rollout(functools.partial(DoomEngine, scenarios[p.choice], p.engine_seed, screen), policy,
                     p.key, p.clips, num_frames, size, channels, crop=True, name=scenarios[p.choice]) for p in plan]

    def meta(p) -> dict:
        return {"scenario": scenarios[p.choice], "frame_skip": FRAME_SKIP, "skill": SKILL, "resolution": screen}

    return stream_clips("doom", plan, workers, lambda pool: (tasks, ACTION_NAMES), FPS if fps is None else fps,
                        scenarios if len(scenarios) > 1 else (), meta)


def doom_engine(meta: dict):
    """The engine factory and crop flag of a stored Doom clip (its json ``meta``), for replay."""
    return functools.partial(DoomEngine, meta["scenario"], meta["engine_seed"], meta["resolution"],
                             meta["frame_skip"], meta["skill"]), True
