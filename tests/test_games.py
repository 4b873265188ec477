"""Game sources (extra ``games``): Atari through ale-py, Doom through vizdoom.

The frames are the engines' own: a clip played again from its json (engine seed and
the actions before it) and its ``actions.npy`` gives the same frames bit for bit; the
shards do not depend on the number of worker processes. Tiny: a few clips of 6 frames
at 24x24, so each test is seconds (most of it is spawning the worker processes).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import webdataset as wds

from scd_msc.data import make_shards, shard_conditions
from scd_msc.data.cli import add_make_shards_arguments, run_make_shards
from scd_msc.data.games import replay_clip
from scd_msc.data.games.doom import ACTION_NAMES, SCENARIOS
from scd_msc.data.games import workers
from scd_msc.data.games.rollout import HeldPolicy, Rollout, plan_rollouts, play, replay
from scd_msc.data.games.workers import EngineFailed, stream_clips

F, S = 6, 24


def samples(shards: list[str]) -> list[dict]:
    """Raw samples: ``frames`` (F, H, W, C) uint8, ``actions`` (F,), ``meta`` (the json)."""
    out = []
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
        out.append({"frames": np.load(io.BytesIO(sample["frames.npy"])),
                    "actions": np.load(io.BytesIO(sample["actions.npy"])), "meta": json.loads(sample["json"])})
    return out


class CountingEngine:
    """A stand-in engine whose screen shows (last action id, steps into the episode, episode count)."""

    def __init__(self, episode_steps: int):
        self.episode_steps, self.action, self.t, self.episode = episode_steps, 0, 0, 0

    def step(self, action: int) -> bool:
        self.action, self.t = action, self.t + 1
        if self.t == self.episode_steps:
            self.t, self.episode = 0, self.episode + 1
            return True
        return False

    def screen(self) -> np.ndarray:
        return np.broadcast_to(np.array([self.action, self.t, self.episode], np.uint8), (8, 8, 3)).copy()

    def close(self) -> None:
        pass


def test_recorder_stores_the_action_that_produced_each_frame_and_never_cuts_an_episode():
    task = Rollout(functools.partial(CountingEngine, 12), HeldPolicy((0, 1, 2, 3, 4)), (7, 0), 5, F, 8, 3,
                   crop=True, name="counting")
    clips = play(task)
    assert len(clips) == 5
    for clip in clips:
        shown = clip.frames[:, 0, 0]                                        # (F, 3): action, t, episode
        np.testing.assert_array_equal(shown[:, 0], clip.actions)           # actions[i] led to frame i
        assert (np.diff(shown[:, 1].astype(int)) == 1).all() and (shown[:, 2] == shown[0, 2]).all(), \
            "one episode, consecutive steps"
        np.testing.assert_array_equal(replay(task, clip.prefix, clip.actions), clip.frames)
    starts = [sum(n for _, n in clip.prefix) for clip in clips]
    assert all(b >= a + F for a, b in zip(starts, starts[1:])), "clips of a rollout do not overlap"


class HangingEngine(CountingEngine):
    """Never returns from its third step (as vizdoom's controller waits for an engine that failed)."""

    def step(self, action: int) -> bool:
        if self.t == 2:
            time.sleep(3600)
        return super().step(action)


class DyingEngine(CountingEngine):
    """Its worker process dies on the third step (a pool does not notice on its own)."""

    def step(self, action: int) -> bool:
        if self.t == 2:
            os._exit(3)
        return super().step(action)


@pytest.mark.parametrize("engine, limit, message", [
    (HangingEngine, 3.0, r"^toy: rollout 0 \(counting\) gave nothing for 3 s: a game engine hung; the workers were stopped$"),
    # a death is seen when it happens: a long limit, so a slow worker start on busy cores never reads as a hang
    (DyingEngine, 40.0, r"^toy: the worker process running rollout 0 \(counting\) died; the workers were stopped$")])
def test_a_hung_engine_or_dead_worker_stops_the_run_with_an_error(monkeypatch, engine, limit, message):
    monkeypatch.setattr(workers, "STALL_SECONDS", limit)
    monkeypatch.setattr(workers, "SECONDS_PER_STEP", 0.0)
    plan = plan_rollouts(2, 1, 0, 1)
    tasks = [Rollout(functools.partial(engine, 50), HeldPolicy((0, 1)), p.key, p.clips, F, 8, 3, crop=True,
                     name="counting") for p in plan]
    before = set(multiprocessing.active_children())
    start = time.monotonic()
    with pytest.raises(EngineFailed, match=message):
        list(stream_clips("toy", plan, 2, lambda pool: (tasks, ("a", "b")), 10.0, (), lambda p: {}))
    assert time.monotonic() - start < 60
    assert set(multiprocessing.active_children()) == before, "the worker processes were killed"


@pytest.fixture(scope="module")
def atari(tmp_path_factory) -> list[dict]:
    """4 clips: rollout 0 breakout (clips 0, 1), rollout 1 pong (clips 2, 3)."""
    out = tmp_path_factory.mktemp("atari")
    summary = make_shards("atari", out, F, S, clips=4, games="breakout,pong", clips_per_rollout=2, workers=2,
                          progress=False)
    return samples(summary.shards)


@pytest.fixture(scope="module")
def doom(tmp_path_factory) -> list[dict]:
    """4 clips: rollout 0 deadly_corridor (clips 0, 1), rollout 1 my_way_home (clips 2, 3)."""
    out = tmp_path_factory.mktemp("doom")
    summary = make_shards("doom", out, F, S, clips=4, scenarios="deadly_corridor,my_way_home", clips_per_rollout=2,
                          workers=2, progress=False)
    return samples(summary.shards)


def test_atari_clips_carry_game_actions_and_labels(atari):
    assert [s["meta"]["game"] for s in atari] == ["breakout", "breakout", "pong", "pong"]
    assert [s["meta"]["label"] for s in atari] == [0, 0, 1, 1]
    meta = atari[0]["meta"]
    # union of the minimal sets, by ALE number: breakout's 4 are ids 0-3, pong adds RIGHTFIRE, LEFTFIRE
    assert meta["action_names"] == ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]
    assert meta["class_names"] == ["breakout", "pong"] and meta["fps"] == 15.0
    assert all(s["actions"].max() <= 3 for s in atari[:2]), "breakout plays only its own minimal set"
    for s in atari:
        assert s["frames"].shape == (F, S, S, 3) and s["frames"].dtype == np.uint8
        assert s["actions"].dtype == np.int64 and s["actions"].shape == (F,)
        assert np.abs(np.diff(s["frames"].astype(int), axis=0)).sum() > 0, "the game moves"


@pytest.mark.parametrize("source", ["atari", "doom"])
def test_replaying_a_clip_gives_the_same_frames(request, source):
    clips = request.getfixturevalue(source)
    clip = clips[1]  # the second clip of its rollout: its prefix holds the first clip and two gaps
    assert sum(n for _, n in clip["meta"]["prefix"]) >= F
    np.testing.assert_array_equal(replay_clip(clip["meta"], clip["actions"]), clip["frames"])


def test_only_game_clips_replay():
    with pytest.raises(ValueError, match=r"^source='moving-digits': expected one of atari, doom; "
                                         "only game clips can be replayed$"):
        replay_clip({"source": "moving-digits"}, np.zeros(F, np.int64))


def test_doom_action_i_leads_to_frame_i(doom):
    """Changing ``actions[k]`` leaves frames ``< k`` bit-identical and changes frame ``k``."""
    clip, k = doom[2], 3
    actions = clip["actions"].copy()
    actions[k] = 3 if actions[k] != 3 else 4  # TURN_LEFT (or TURN_RIGHT): the view must move
    frames = replay_clip(clip["meta"], actions)
    np.testing.assert_array_equal(frames[:k], clip["frames"][:k])
    assert not np.array_equal(frames[k], clip["frames"][k])


def test_doom_clips_carry_the_fixed_action_set(doom):
    assert [s["meta"]["scenario"] for s in doom] == ["deadly_corridor"] * 2 + ["my_way_home"] * 2
    assert [s["meta"]["label"] for s in doom] == [0, 0, 1, 1]
    assert tuple(doom[0]["meta"]["action_names"]) == ACTION_NAMES and len(ACTION_NAMES) == 10
    assert doom[0]["meta"]["resolution"] == "RES_160X120" and doom[0]["meta"]["fps"] == 8.75
    assert doom[0]["meta"]["skill"] == 1
    assert all(s["frames"].shape == (F, S, S, 3) for s in doom)


@pytest.mark.parametrize("source, options", [("atari", {"games": "pong"}),
                                             ("doom", {"scenarios": "basic,take_cover"})])
def test_shards_do_not_depend_on_the_number_of_workers(tmp_path, source, options):
    one = make_shards(source, tmp_path / "one", F, S, clips=3, clips_per_rollout=1, workers=1, seed=5,
                      progress=False, **options)
    two = make_shards(source, tmp_path / "two", F, S, clips=3, clips_per_rollout=1, workers=2, seed=5,
                      progress=False, **options)
    assert open(one.shards[0], "rb").read() == open(two.shards[0], "rb").read()
    other = make_shards(source, tmp_path / "seed", F, S, clips=3, clips_per_rollout=1, workers=2, seed=6,
                        progress=False, **options)
    assert open(one.shards[0], "rb").read() != open(other.shards[0], "rb").read()


def cli(argv: list[str]) -> int:
    parser = add_make_shards_arguments(argparse.ArgumentParser(prog="scd-msc make-shards"))
    return run_make_shards(parser.parse_args(argv))


def test_cli_writes_game_shards_and_reports_conditions(tmp_path, capsys):
    rc = cli(["doom", "--scenario", "basic", "--out", str(tmp_path), "--frames", "4", "--size", "16", "--clips",
              "2", "--workers", "1", "--channels", "1", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "wrote 2 clips (8 frames" in out
    assert "conditions: 10 actions (NOOP, FORWARD," in out and "; no classes" in out, "one scenario: no label"
    found = shard_conditions(str(tmp_path / "*.tar"))
    assert (found.num_actions, found.labels) == (10, False)
    assert samples([str(tmp_path / "shard-000000.tar")])[0]["frames"].shape == (4, 16, 16, 1)


def grey_pool(x):
    """(F, 3, H, W) -> (F, 1, H/4, W/4): a stand-in latent encoder."""
    import torch

    return torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), 4)


def test_latent_shards_of_game_clips_keep_actions(tmp_path):
    from scd_msc.data import ClipDataset

    summary = make_shards("latents", tmp_path, F, S, clips=2, pixels="doom", scenarios="basic,take_cover",
                          clips_per_rollout=1, workers=1, encoder=f"{__name__}:grey_pool", progress=False)
    out = list(ClipDataset(summary.shards, 4, 1, S // 4, resampled=False))
    assert [int(o["label"]) for o in out] == [0, 1]
    assert all(o["video"].shape == (4, 1, S // 4, S // 4) and o["actions"].shape == (4,) for o in out)
    assert shard_conditions(summary.shards).class_names == ("basic", "take_cover")


@pytest.mark.parametrize("extra, message", [
    (["atari", "--games", "breakout,pongg"],
     "games='breakout,pongg': unknown ['pongg']; expected comma-separated names from adventure, air_raid,"),
    (["atari", "--games", "pong,pong"], "repeated names"),
    (["doom", "--scenario", "e1m1"], "scenarios='e1m1': unknown ['e1m1']; expected comma-separated names from "
                                     f"{', '.join(SCENARIOS)}, freedoom2_map01,"),
    (["doom", "--games", "pong"], "--games: only used by the atari source, not 'doom'"),
    (["moving-digits", "--workers", "2"], "--workers: only used by the atari and doom sources"),
    (["doom", "--workers", "0"], "workers=0: expected an integer >= 1"),
    (["atari", "--clips-per-rollout", "0"], "clips_per_rollout=0: expected an integer >= 1"),
    (["doom", "--channels", "2"], "channels=2: expected one of 1, 3"),
])
def test_game_argument_errors(tmp_path, capsys, extra, message):
    source, *rest = extra
    assert cli([source, "--out", str(tmp_path / "out"), "--frames", "4", "--size", "16", "--clips", "2", *rest]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scd-msc make-shards: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_missing_engines_give_the_install_hint():
    """Without ale-py / vizdoom (blocked as test_data.py blocks PyAV) the data layer imports and
    each game source says, in one line, what to install."""
    code = textwrap.dedent("""
        import builtins, sys
        real = builtins.__import__
        def blocked(name, *args, **kwargs):
            if name.split(".")[0] in ("ale_py", "vizdoom"):
                raise ImportError(f"No module named {name!r}")
            return real(name, *args, **kwargs)
        builtins.__import__ = blocked
        import scd_msc.data, scd_msc.data.games
        from scd_msc.data.cli import main
        for source in ("atari", "doom"):
            print("rc", main([source, "--out", "unused", "--frames", "4", "--size", "16", "--clips", "1"]))
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["rc", "2", "rc", "2"]
    assert run.stderr.splitlines() == [
        "scd-msc make-shards: error: the atari source needs ale_py (extra 'games'): pip install 'scd_msc[games]'",
        "scd-msc make-shards: error: the doom source needs vizdoom (extra 'games'): pip install 'scd_msc[games]'",
    ]


def test_worker_path_does_not_import_torch():
    """Spawned workers import the game modules and the main script (``scd-msc`` -> scd_msc.cli):
    none of it may pull torch in (vizdoom hung in a forked child of a torch process)."""
    code = ("import sys, scd_msc.cli, scd_msc.data.games, scd_msc.data.games.atari, scd_msc.data.games.doom; "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
