"""Engine-independent parts of the game sources: held-action policy, recording, replay, workers.

A **rollout** is one engine instance, seeded once, played by the policy without a
break; it yields ``clips_per_rollout`` clips. Before each clip the policy plays a gap
of ``GAP`` agent steps that is not recorded, so clips of a rollout are neither
adjacent nor all at the start of an episode. An agent step plays one action for the
engine's frame skip; the frame recorded is the screen after the step, so every frame
of a clip is produced by the action stored with it (``actions[i]`` leads to frame
``i``, DESIGN.md section 7). When an episode ends the engine starts the next one; an
episode that ends inside a clip would cut the scene, so that clip is thrown away and
recorded again from the start of the new episode (at most ``MAX_TRIES`` times).

**Policy** (``HeldPolicy``): draw an action id (uniformly, or with the engine's
weights), hold it for ``HOLD`` agent steps (uniform, both ends included), repeat. It
never looks at the screen, so motion is coherent and the whole run is a function of
the seed.

**Replay**: a clip's json stores the engine seed and ``prefix``, every action played
by the rollout before the clip's first frame as run-length ``[[id, steps], ...]``; a
fresh engine with that seed, fed the prefix and then the clip's ``actions``, gives the
clip's frames bit for bit (``replay_clip``).

**Workers** (``workers.py``): rollouts run in spawned worker processes. Rollout ``r``
is seeded by ``[seed, r]`` and results come back in rollout order, so the shards do not
depend on the number of workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from scd_msc.checks import choice, positive_int
from scd_msc.media import to_channels

from ..video import resize_frames

HOLD = (3, 9)      # agent steps one drawn action is held
GAP = (0, 64)      # unrecorded agent steps before each clip
MAX_TRIES = 100    # clips in a row cut by an episode end before giving up
INSTALL_HINT = "pip install 'scd_msc[games]'"


class Engine(Protocol):
    """A game seeded at construction; ``step`` plays one agent step (with frame skip)."""

    def step(self, action: int) -> bool:
        """Play action id ``action``; True when the episode ended (the next one has started)."""

    def screen(self) -> np.ndarray:
        """The current screen, uint8 ``(H, W, 3)``."""

    def close(self) -> None:
        """Free the engine."""


def import_engine(module: str, source: str):
    """Import an engine package, or raise an ImportError that says how to install it."""
    try:
        return __import__(module)  # a top-level package; through builtins.__import__ like `import`
    except ImportError as err:
        raise ImportError(f"the {source} source needs {module} (extra 'games'): {INSTALL_HINT}") from err


def parse_names(value: str | Iterable[str], valid: Iterable[str], what: str) -> tuple[str, ...]:
    """Comma-separated (or listed) names, each one of ``valid``, no repeats."""
    valid = tuple(valid)
    names = tuple(n.strip() for n in (value.split(",") if isinstance(value, str) else value))
    bad = [n for n in names if n not in valid]
    if not names or bad or len(set(names)) != len(names):
        problem = f"unknown {bad}" if bad else ("repeated names" if names else "no names")
        raise ValueError(f"{what}={value!r}: {problem}; expected comma-separated names from {', '.join(valid)}")
    return names


def check_options(num_frames: int, size: int, clips: int, workers: int | None, clips_per_rollout: int,
                  channels: int) -> int:
    """Check the options both engines share; returns ``workers`` (None -> CPU count)."""
    workers = (os.cpu_count() or 1) if workers is None else workers
    for name, value in (("num_frames", num_frames), ("size", size), ("clips", clips), ("workers", workers),
                        ("clips_per_rollout", clips_per_rollout)):
        positive_int(name, value)
    choice("channels", channels, (1, 3))
    return workers


@dataclass(frozen=True)
class HeldPolicy:
    """Random policy over ``ids``: draw one (with ``weights``, default uniform), hold it ``hold`` steps."""

    ids: tuple[int, ...]
    weights: tuple[float, ...] | None = None
    hold: tuple[int, int] = HOLD

    def actions(self, rng: np.random.Generator) -> Iterator[int]:
        """An endless stream of action ids drawn from ``rng``."""
        p = None if self.weights is None else np.asarray(self.weights, float) / sum(self.weights)
        while True:
            action = self.ids[int(rng.choice(len(self.ids), p=p))]
            for _ in range(int(rng.integers(self.hold[0], self.hold[1] + 1))):
                yield action


def run_length(ids: list[int]) -> list[list[int]]:
    """``[3, 3, 0, 5, 5, 5] -> [[3, 2], [0, 1], [5, 3]]``."""
    runs: list[list[int]] = []
    for a in ids:
        if runs and runs[-1][0] == a:
            runs[-1][1] += 1
        else:
            runs.append([int(a), 1])
    return runs


@dataclass(frozen=True)
class Rollout:
    """One unit of work: build the engine, play, return ``clips`` clips (picklable).

    ``engine``: a picklable factory of the seeded engine (``functools.partial`` of a
    top-level class). ``key``: the policy seed ``[seed, rollout]``. ``crop``: centre
    square crop before resizing (else the screen is stretched to a square).
    """

    engine: Callable[[], Engine]
    policy: HeldPolicy
    key: tuple[int, ...]
    clips: int
    num_frames: int
    size: int
    channels: int
    crop: bool
    name: str


@dataclass(frozen=True)
class Planned:
    """Rollout ``key[1]``: policy seed ``key``, which game/scenario (``choice``), how many clips."""

    key: tuple[int, int]
    choice: int
    clips: int
    engine_seed: int


def plan_rollouts(clips: int, clips_per_rollout: int, seed: int, choices: int) -> list[Planned]:
    """Rollout ``r`` plays choice ``r % choices`` and gives clips ``r * clips_per_rollout, ...``;
    its engine seed is the first draw of ``default_rng([seed, r])``, the policy continues that stream."""
    plan = []
    for r in range(-(-clips // clips_per_rollout)):
        engine_seed = int(np.random.default_rng([seed, r]).integers(1, 2**31 - 1))
        plan.append(Planned((seed, r), r % choices, min(clips_per_rollout, clips - r * clips_per_rollout),
                            engine_seed))
    return plan


@dataclass
class Recorded:
    """One recorded clip: resized ``frames`` ``(F, size, size, C)``, ``actions`` ``(F,)``, ``prefix``."""

    frames: np.ndarray
    actions: np.ndarray
    prefix: list[list[int]]


def _finish(screens: list[np.ndarray], task: Rollout) -> np.ndarray:
    frames = resize_frames(np.stack(screens), task.size, crop=task.crop)  # (F, size, size, 3)
    return to_channels(frames, task.channels)


def play(task: Rollout) -> list[Recorded]:
    """Run one rollout (see the module docstring). Runs in a worker process."""
    rng = np.random.default_rng(list(task.key))
    rng.integers(1, 2**31 - 1)  # the engine seed (plan_rollouts); the policy draws what follows
    stream = task.policy.actions(rng)
    engine = task.engine()
    played: list[int] = []  # every action id stepped since the engine started
    out: list[Recorded] = []
    try:
        for _ in range(task.clips):
            gap = int(rng.integers(GAP[0], GAP[1] + 1))
            for _ in range(MAX_TRIES):
                for _ in range(gap):
                    played.append(next(stream))
                    engine.step(played[-1])
                screens: list[np.ndarray] = []
                while len(screens) < task.num_frames:
                    played.append(next(stream))
                    if engine.step(played[-1]):
                        break  # the episode ended: record again from the new one
                    screens.append(engine.screen())
                if len(screens) == task.num_frames:
                    break
                gap = 0
            else:
                raise ValueError(f"frames={task.num_frames}: {MAX_TRIES} episodes of {task.name!r} in a row ended "
                                 "before a clip was complete; expected fewer frames per clip")
            actions = np.asarray(played[-task.num_frames:], np.int64)
            out.append(Recorded(_finish(screens, task), actions, run_length(played[:-task.num_frames])))
    finally:
        engine.close()
    return out


def replay(task: Rollout, prefix: list[list[int]], actions: np.ndarray) -> np.ndarray:
    """Frames of a fresh ``task.engine()`` fed ``prefix`` (run-length) then ``actions``. Runs in a worker."""
    engine = task.engine()
    try:
        for action, steps in prefix:
            for _ in range(steps):
                engine.step(int(action))
        screens = []
        for action in actions:
            if engine.step(int(action)):
                raise RuntimeError(f"{task.name}: the episode ended during the replayed clip (not deterministic?)")
            screens.append(engine.screen())
    finally:
        engine.close()
    return _finish(screens, task)
