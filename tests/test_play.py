"""``scd-msc play`` (DESIGN.md §9): the key bindings, the game over a real WebSocket
(Starlette's TestClient, and uvicorn in a subprocess), the recording, and one-line errors.

The model is the tiny SCD-MSC preset conditioned on 4 actions with every weight
random (adaLN-zero layers start at zero, which would make the actions invisible), so
that the action that leads to a frame visibly changes it."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Iterator

import av
import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from scd_msc.cli import build_parser, main
from scd_msc.data.games.doom import ACTION_NAMES as DOOM
from scd_msc.data.shards import clip_sample
from scd_msc.data.sources import Clip
from scd_msc.data.synthetic import moving_digits
from scd_msc.media import to_uint8
from scd_msc.models import model_from_config, preset_config, seeded_init
from scd_msc.play.game import Game, Prompts
from scd_msc.play.keys import bind_keys

pytest.importorskip("starlette", reason="the extra play (starlette) is not installed")
pytest.importorskip("httpx", reason="starlette's TestClient needs httpx")
from starlette.testclient import TestClient  # noqa: E402

from scd_msc.play.server import make_app  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("NOOP", "FORWARD", "TURN_LEFT", "ATTACK")
STEPS, SEED = 2, 3


def random_model(actions: int = len(NAMES)) -> torch.nn.Module:
    """The tiny preset on ``actions`` actions, every weight drawn at random (seeded); the
    action tables at unit scale (init: 0.02), so that an action moves the frame by more
    than a grey level or two."""
    cfg = dataclasses.replace(preset_config("scd-msc-tiny"), actions=actions)
    with seeded_init(0):
        model = model_from_config(cfg, "reference")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.abs().sum() or name.endswith("cond_embed.actions.weight"):  # zero at init, the actions
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 if "actions" in name else 0.05))
    return model.eval()


def write_shards(path: Path, count: int = 2, frames: int = 4) -> str:
    """``count`` grey 32² digit clips named with ``NAMES``; clip ``n`` has actions ``(n + i) % 4``."""
    with wds.TarWriter(str(path)) as sink:
        for n in range(count):
            actions = (np.arange(frames) + n) % len(NAMES)
            sink.write(clip_sample(f"c{n}", Clip(moving_digits(frames, 32, n), 8.0, "test", {}, actions, None,
                                                 NAMES, ()), "npy"))
    return str(path)


def save_checkpoint(path: Path, model: torch.nn.Module, train_shards: str = "") -> str:
    """A checkpoint in the layout of ``scd_msc.checkpoint`` (weights under ``model.``)."""
    config = {"model": dataclasses.asdict(model.cfg), "data": {"train_shards": train_shards}}
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"config": config}}, path)
    return str(path)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return random_model()


def game(model, **kwargs) -> Game:
    return Game(model, bind_keys(NAMES), STEPS, SEED, compile=False, **kwargs)


def receive_frame(ws) -> tuple[dict, np.ndarray]:
    meta = ws.receive_json()
    assert meta["type"] == "frame", meta
    return meta, np.asarray(Image.open(io.BytesIO(ws.receive_bytes())))


def step(ws, action) -> tuple[dict, np.ndarray]:
    ws.send_json({"type": "step", "action": action})
    return receive_frame(ws)


def reset(ws, start: str) -> list[tuple[dict, np.ndarray]]:
    ws.send_json({"type": "reset", "start": start})
    frames = []
    while (msg := ws.receive_json())["type"] != "ready":
        assert msg["type"] == "frame" and msg["prompt"], msg
        frames.append((msg, np.asarray(Image.open(io.BytesIO(ws.receive_bytes())))))
    return frames


# --------------------------------------------------------------------------- keys

def test_keys_follow_the_action_names():
    doom = bind_keys(DOOM)
    keys = dict(zip(doom.names, doom.keys))
    assert doom.idle == DOOM.index("NOOP") and keys["NOOP"] == ()
    assert keys["FORWARD"] == ("ArrowUp",) and keys["ATTACK"] == (" ",)
    assert set(keys["FORWARD_TURN_LEFT"]) == {"ArrowUp", "ArrowLeft"}  # two keys held: the combined action
    assert len({frozenset(k) for k in doom.keys}) == len(DOOM)  # every action its own keys
    ale = bind_keys(("NOOP", "FIRE", "UP", "UPRIGHTFIRE"))
    assert set(ale.keys[3]) == {"ArrowUp", "ArrowRight", " "}
    unnamed = bind_keys(("action 0", "action 1", "action 2"))
    assert unnamed.keys == (("1",), ("2",), ("3",)) and unnamed.idle == 3  # no idle name: the null id


# --------------------------------------------------------------------------- the game over a WebSocket

def test_frames_stream_and_match_the_model(model):
    with TestClient(make_app(game(model))) as client:
        page = client.get("/")
        assert page.status_code == 200 and 'new WebSocket' in page.text and 'id="fps"' in page.text
        with client.websocket_connect("/ws") as ws:
            info = ws.receive_json()
            assert info["type"] == "info" and info["actions"]["names"] == list(NAMES)
            assert info["actions"]["idle"] == 0 and info["null"] == len(NAMES) and info["starts"] == ["blank"]
            assert reset(ws, "blank") == []
            got = [step(ws, a) for a in (1, 3, 2)]
    session = model.stream(1, STEPS, generator=torch.Generator().manual_seed(SEED), compile=False)
    for i, (a, (meta, image)) in enumerate(zip((1, 3, 2), got)):
        want = to_uint8(session.step(torch.tensor([a])))  # (32, 32, 1)
        assert (meta["index"], meta["action"], meta["prompt"]) == (i, a, False) and meta["ms"] > 0
        assert image.dtype == np.uint8 and image.shape == (32, 32)  # grey PNG, the model's size
        assert np.array_equal(image, want[..., 0])


def test_two_keys_give_two_frames_and_reset_replays(model):
    with TestClient(make_app(game(model))) as client, client.websocket_connect("/ws") as ws:
        ws.receive_json()
        firsts = {}
        for a in (1, 2, 1):
            reset(ws, "blank")
            _, image = step(ws, a)
            firsts.setdefault(a, []).append(image.astype(int))
    assert np.array_equal(*firsts[1])  # the same reset and key: the same frame
    assert np.abs(firsts[1][0] - firsts[2][0]).mean() > 2  # another key: another frame (grey levels)


def test_reset_from_held_out_clips(model, tmp_path):
    from scd_msc.data import ClipDataset, collate_clips

    clips = collate_clips(list(ClipDataset(write_shards(tmp_path / "val.tar"), 3, 1, 32, resampled=False)))
    prompts = Prompts(clips["video"], clips["actions"])
    with TestClient(make_app(game(model, prompts=prompts))) as client, client.websocket_connect("/ws") as ws:
        assert ws.receive_json()["starts"] == ["clip", "blank"]
        for k in (0, 1, 0):  # the clips in turn
            frames = reset(ws, "clip")
            assert [m["index"] for m, _ in frames] == [0, 1, 2]
            assert all(np.array_equal(im, to_uint8(clips["video"][k:k + 1, f])[..., 0]) for f, (_, im) in enumerate(frames))
            meta, _ = step(ws, 0)
            assert meta["index"] == 3
        assert reset(ws, "blank") == [] and step(ws, 0)[0]["index"] == 0


def test_bad_requests_are_one_line_and_the_game_goes_on(model):
    with TestClient(make_app(game(model))) as client, client.websocket_connect("/ws") as ws:
        ws.receive_json()
        for request, message in [({"type": "step", "action": 5}, "action=5: expected an id in [0, 4] (4 = null"),
                                 ({"type": "step", "action": "1"}, "action='1': expected an id"),
                                 ({"type": "reset", "start": "clip"}, "start='clip': no --prompt-shards given"),
                                 ({"type": "jump"}, "type='jump': expected reset or step")]:
            ws.send_json(request)
            reply = ws.receive_json()
            assert reply["type"] == "error" and reply["message"].startswith(message) and "\n" not in reply["message"]
        assert step(ws, 4)[0]["action"] == 4  # the null id is an action too
        with client.websocket_connect("/ws") as second:  # one page at a time
            assert second.receive_json() == {"type": "error", "message": "another page is playing; close it first"}


def test_record_keeps_every_frame_shown(model, tmp_path):
    out = tmp_path / "rec" / "play.mp4"
    with TestClient(make_app(game(model, record=str(out)))) as client, client.websocket_connect("/ws") as ws:
        ws.receive_json()
        shown = [step(ws, a)[1] for a in (0, 1)]
        reset(ws, "blank")
        shown.append(step(ws, 2)[1])
    with av.open(str(out)) as container:  # closed when the app shut down
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 3 and frames[0].shape == (32, 32, 3)
    for i, got in enumerate(frames):  # H.264 of random-weight noise: nearest to its own frame
        dist = [np.abs(got[..., 0].astype(int) - want).mean() for want in shown]
        assert int(np.argmin(dist)) == i and dist[i] < 12, dist


# --------------------------------------------------------------------------- the command

def play(capsys, *args: str) -> tuple[int, str]:
    code = main(["play", *args])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def checkpoints(model, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("play")
    shards = write_shards(root / "train.tar")
    return {"actions": save_checkpoint(root / "actions.ckpt", model, shards),
            "plain": save_checkpoint(root / "plain.ckpt", random_model(0)), "shards": shards,
            "root": str(root)}


def test_errors_are_one_line_with_exit_2(capsys, checkpoints, monkeypatch):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    busy = taken.getsockname()[1]
    cases = [
        (["--checkpoint", "missing.ckpt", "--port", "0"], "--checkpoint: checkpoint 'missing.ckpt' does not exist"),
        (["--checkpoint", checkpoints["plain"], "--port", "0"],
         f"--checkpoint={checkpoints['plain']!r}: expected a model conditioned on actions (model.actions > 0)"),
        (["--preset", "scd-msc-tiny", "--port", "0"], "--preset='scd-msc-tiny': expected a model conditioned on "
         "actions; presets have none: add --preset-actions N"),
        (["--preset", "scd-msc-tiny", "--preset-actions", "4", "--port", str(busy)],
         f"--port={busy}: expected a free port on 127.0.0.1 (Address already in use)"),
        (["--preset", "scd-msc-tiny", "--preset-actions", "4", "--port", "70000"],
         "--port=70000: expected an integer in [0, 65535]"),
        (["--checkpoint", checkpoints["actions"], "--preset-actions", "4"], "--preset-actions=4: expected no value"),
        (["--preset", "scd-msc-tiny", "--preset-actions", "4", "--record", "x.gif"], "--record='x.gif'"),
    ]
    try:
        for args, message in cases:
            code, err = play(capsys, *args)
            assert code == 2 and err.startswith(f"scd-msc play: error: {message}"), (args, err)
            assert err.count("\n") == 1 and "Traceback" not in err
    finally:
        taken.close()
    monkeypatch.setitem(sys.modules, "starlette", None)  # the extra missing: refused before any work
    code, err = play(capsys, "--preset", "scd-msc-tiny", "--preset-actions", "4")
    assert code == 2 and err == ("scd-msc play: error: the extra 'play' is not installed (no module 'starlette'): "
                                 "pip install 'scd_msc[play]' (or: pip install starlette uvicorn websockets)\n")


def test_action_names_come_from_the_shards(checkpoints):
    from scd_msc.play.cli import action_names

    model = random_model()
    assert action_names(model.cfg, None, checkpoints["actions"]) == NAMES  # the checkpoint's training shards
    assert action_names(model.cfg, checkpoints["shards"], None) == NAMES
    gone = save_checkpoint(Path(checkpoints["root"]) / "gone.ckpt", model, "nowhere/*.tar")
    assert action_names(model.cfg, None, gone) == tuple(f"action {i}" for i in range(4))


@contextlib.contextmanager
def serve(checkpoints, cwd: Path, *extra: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """``scd-msc play`` in a subprocess on a free port: the process and the page's URL."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "scd_msc.cli", "play", "--checkpoint", checkpoints["actions"],
                             "--prompt-shards", checkpoints["shards"], "--prompt-frames", "2", "--steps", "2",
                             "--port", "0", *extra], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        while not (match := re.search(r" on (http://127\.0\.0\.1:\d+/) ", seen[-1] if seen else "")):
            line = proc.stdout.readline()
            assert line, f"no URL printed: {seen} {proc.stderr.read()}"
            seen.append(line)
        yield proc, match.group(1)
    finally:
        proc.kill()
        proc.wait()


def test_served_by_uvicorn_until_ctrl_c(checkpoints, tmp_path):
    """The command as a user runs it: a real port, a real WebSocket client, Ctrl-C, the mp4."""
    from websockets.sync.client import connect

    out = tmp_path / "session.mp4"
    with serve(checkpoints, tmp_path, "--record", str(out)) as (proc, url):
        assert "<title>scd-msc play</title>" in urllib.request.urlopen(url, timeout=30).read().decode()
        with connect(url.replace("http", "ws") + "ws", open_timeout=30) as ws:
            info = json.loads(ws.recv(timeout=30))
            assert info["actions"]["names"] == list(NAMES) and info["prompt_clips"] == 2
            ws.send(json.dumps({"type": "reset", "start": "clip"}))
            kinds = [json.loads(ws.recv(timeout=30))["type"], type(ws.recv(timeout=30)),
                     json.loads(ws.recv(timeout=30))["type"], type(ws.recv(timeout=30)),
                     json.loads(ws.recv(timeout=30))["type"]]
            assert kinds == ["frame", bytes, "frame", bytes, "ready"]
            ws.send(json.dumps({"type": "step", "action": 1}))
            assert json.loads(ws.recv(timeout=60))["index"] == 2
            assert Image.open(io.BytesIO(ws.recv(timeout=30))).size == (32, 32)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert f"wrote {out}" in stdout
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 3  # 2 prompt frames + 1


def test_frames_are_not_held_back_by_nagle():
    """A frame is two writes (JSON, then PNG); with Nagle's algorithm the PNG waited for the
    page's delayed ACK: 40 ms per frame, 25 frames/s at most whatever the model's speed."""
    from scd_msc.play.server import bind

    with contextlib.closing(bind("127.0.0.1", 0)) as sock, \
            socket.create_connection(sock.getsockname()[:2]) as _:
        conn, _ = sock.accept()
        with conn:
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_bench_play_counts_like_the_page_and_measures_the_real_command(tmp_path, capsys):
    """tools/bench_play: the page's read-out formula, a real scd-msc play driven over its
    WebSocket (a random tiny preset on CPU), and its one-line refusals."""
    from tools import bench_play

    arrivals = [0.0, 0.1, 0.2, 0.3, 1.25, 1.3]  # the window is the last second, as page.html's
    assert bench_play.page_fps(arrivals) == pytest.approx([10, 10, 10, 1 / 0.95, 2 / 1.0])  # 0.3 stays at 1.3
    assert bench_play.main(["--frames", "6", "--warmup", "1", "--out", str(tmp_path), "--",
                            "--preset", "scd-msc-tiny", "--preset-actions", "4", "--steps", "2"]) == 0
    data = json.loads(next(tmp_path.glob("play_cpu_*.json")).read_text())
    assert (data["frames"], data["steps"], data["actions"], data["start"]) == (6, 2, 4, "blank")
    # the client's rate includes the PNG and the socket: never above the server's model-only rate
    assert 0 < data["play_fps"] <= data["server_fps"] and data["server_ms_p95"] >= data["server_ms_p50"] > 0
    assert "--preset scd-msc-tiny --preset-actions 4 --steps 2" in data["config"]["play_args"]
    for argv, message in ((["--frames", "4"], "no PLAY_ARGS: expected the scd-msc play arguments after --"),
                          (["--", "--preset", "scd-msc-tiny", "--port", "80"], "PLAY_ARGS: --port is chosen by the tool"),
                          (["--frames", "1", "--", "--preset", "x"], "--frames=1: expected an integer >= 2")):
        with pytest.raises(SystemExit) as exit_:
            bench_play.main(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert bench_play.main(["--out", str(tmp_path), "--", "--preset", "scd-msc-tiny"]) == 1  # no actions: refused
    assert "scd-msc play exited with 2 before serving" in capsys.readouterr().err


# --------------------------------------------------------------------------- docs and the browser

def test_readme_play_commands_parse():
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("scd-msc play")]
    assert lines, "README.md documents no `scd-msc play` command"
    for line in lines:
        argv = shlex.split(line, comments=True)
        args = build_parser().parse_args(argv[1:])
        assert args.command == "play"


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_page_in_headless_chromium(checkpoints, tmp_path):
    """The page in a browser: it connects, shows frames and an FPS read-out, and a held
    key steers (the frame index grows, the canvas changes, the action row lights up)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with serve(checkpoints, tmp_path) as (_, url), sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True)
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("/FPS [0-9.]+/.test(document.getElementById('fps').textContent)", timeout=60_000)
        before = page.evaluate("document.getElementById('screen').toDataURL()")
        index = lambda: int(page.text_content("#index").split()[-1])  # noqa: E731
        start = index()
        page.keyboard.down("ArrowUp")
        page.wait_for_function("document.querySelector('#actions tr.on td')?.textContent === 'FORWARD'",
                               timeout=60_000)
        page.keyboard.up("ArrowUp")
        assert index() > start
        assert page.evaluate("document.getElementById('screen').toDataURL()") != before
        assert page.text_content("#error") == ""
        browser.close()
