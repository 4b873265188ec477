"""Worker processes for the game engines: spawned, one folder and one process group each.

* **spawn**, never ``fork``: vizdoom hung in a forked child of a process that had
  imported torch; nothing on the worker path imports torch.
* **A folder of its own** per worker: the vizdoom executable creates ``_vizdoom/`` in
  its working folder, and two of them starting in one folder race on that ``mkdir``;
  the loser prints "Failed to create ./_vizdoom/ directory: File exists" and never
  answers its controller, which then waits for ever.
* **A process group of its own** per worker (the engines' own processes join it): a
  Ctrl-C in the terminal reaches only the caller, which then kills each group, so no
  engine process outlives an interrupted or failed run.
* **A stall limit**: a rollout that gives nothing for ``STALL_SECONDS`` plus
  ``SECONDS_PER_STEP`` per agent step it plays is a hung engine; it, or a worker that
  died, stops the run with ``EngineFailed`` instead of a wait without end.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ..sources import Clip
from .rollout import GAP, Planned, Recorded, Rollout, play, replay

STALL_SECONDS = 120.0
SECONDS_PER_STEP = 0.05


class EngineFailed(RuntimeError):
    """A rollout or replay hung past its stall limit, or its worker died (the workers are stopped)."""


def _enter(folder: str) -> None:
    os.setpgrp()
    os.chdir(tempfile.mkdtemp(dir=folder))


def _kill_groups(processes: set) -> None:
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the worker and its engine's processes
        except (ProcessLookupError, PermissionError):
            process.kill()  # not yet its own group leader


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[Executor]:
    """``workers`` spawned processes; shut down when the block ends, killed if it raises."""
    before = set(multiprocessing.active_children())
    with tempfile.TemporaryDirectory(prefix="scd-msc-games-") as folder:
        pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), initializer=_enter,
                                   initargs=(folder,))
        try:
            yield pool
        except BaseException:
            _kill_groups(set(multiprocessing.active_children()) - before)
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


def stall_limit(task: Rollout) -> float:
    """Seconds a rollout may take before it counts as hung."""
    return STALL_SECONDS + SECONDS_PER_STEP * max(task.clips, 1) * (task.num_frames + GAP[1])


def result(future, source: str, what: str, limit: float):
    """``future.result()`` within ``limit`` seconds, or ``EngineFailed`` naming ``what``."""
    try:
        return future.result(timeout=limit)
    except TimeoutError:
        raise EngineFailed(f"{source}: {what} gave nothing for {limit:.0f} s: a game engine hung; "
                           "the workers were stopped") from None
    except BrokenProcessPool:
        raise EngineFailed(f"{source}: the worker process running {what} died; the workers were stopped") from None


def run_one(task: Rollout, prefix: list[list[int]], actions) -> object:
    """``replay(task, prefix, actions)`` in a spawned process (engines never run in the caller's)."""
    with worker_pool(1) as pool:
        return result(pool.submit(replay, task, prefix, actions), task.name, "the replay", stall_limit(task))


def stream_clips(source: str, plan: list[Planned], workers: int,
                 build: Callable[[Executor], tuple[list[Rollout], tuple[str, ...]]],
                 fps: float, class_names: tuple[str, ...], meta: Callable[[Planned], dict]) -> Iterator[Clip]:
    """Play the planned rollouts in a pool of ``workers`` and yield their clips in order.

    ``build(pool)`` gives the rollouts (one per ``plan`` entry) and the action names; it
    gets the pool for set-up that must run in a worker. ``meta(planned)``: json entries.
    """
    with worker_pool(min(workers, len(plan))) as pool:
        tasks, action_names = build(pool)
        futures = [pool.submit(play, task) for task in tasks]
        index = 0
        for planned, task, future in zip(plan, tasks, futures):
            recorded: list[Recorded] = result(future, source, f"rollout {planned.key[1]} ({task.name})",
                                              stall_limit(task))
            for clip in recorded:
                extra = {"index": index, **meta(planned), "rollout": planned.key[1],
                         "engine_seed": planned.engine_seed, "prefix": clip.prefix}
                yield Clip(clip.frames, fps, source, extra, clip.actions, planned.choice if class_names else None,
                           action_names, class_names)
                index += 1
