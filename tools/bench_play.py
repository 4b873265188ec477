"""``scd-msc play`` measured as a player meets it: frames per second at the page, and the
model's time per frame as the server reports it (issue 16: >= 60 frames/s on one H200 with
the steps used for the scores).

The real command serves the page in a subprocess (``scd-msc play ... --port 0``; every
argument after ``--`` is passed to it). This tool then speaks the page's protocol over
the same WebSocket (``scd_msc/play/server.py``): on ``info`` it resets (from a held-out
clip when the server offers one, else blank), then asks for the next frame as soon as the
last one has arrived, the way ``page.html`` does, holding each action for 3 to 9 frames
(a player's keys, drawn from a seeded generator). Every frame's PNG is received whole.

Measured, after ``--warmup`` frames (compile and CUDA-graph capture happen in the first
ones; their time is ``first_frame_s``):

* ``play_fps``: frames received per second over the measured frames, ``(n - 1) / (t_n - t_1)``;
* ``page_fps_median``: the median of the page's own read-out, computed with its formula
  (frames that arrived in the last second: ``(k - 1) * 1000 / (now - first)``), at every frame;
* ``server_ms_*``: the ``ms`` field of the frames that end those intervals (so ``server_fps
  >= play_fps``): the model's time per frame (denoising,
  the encoder commit and, for a latent model, the decode), without PNG and WebSocket;
  ``server_fps`` = 1000 / its mean.

The difference between ``server_fps`` and ``play_fps`` is what PNG encoding, the event
loop and the socket cost. A browser adds its image decode and drawing (not measured here;
tests/test_play.py's headless-Chromium test checks the read-out moves). Writes
``<out>/<what>_<gpu>_<date>.{md,json}``. Example::

    python -m tools.bench_play --frames 600 -- --checkpoint runs/doom/checkpoints/last.ckpt \\
        --prompt-shards 'shards/doom_val/*.tar' --prompt-frames 4 --steps 25
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from scd_msc.checks import integer, number

ROOT = Path(__file__).resolve().parent.parent
URL = re.compile(r" on (http://\S+/) ")


def start_server(play_args: list[str], timeout: float) -> tuple[subprocess.Popen, str, list[str]]:
    """``scd-msc play PLAY_ARGS --port 0`` in a subprocess: the process, the page's URL and
    the lines it printed before it. ``RuntimeError`` with its output if it stops first."""
    cmd = [sys.executable, "-m", "scd_msc.cli", "play", *play_args, "--port", "0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            raise RuntimeError(f"scd-msc play exited with {proc.returncode} before serving:\n" + "".join(lines[-20:]))
        lines.append(line)
        if match := URL.search(line):
            return proc, match.group(1), lines
    proc.kill()
    raise RuntimeError(f"scd-msc play printed no URL within {timeout:g} s:\n" + "".join(lines[-20:]))


def stop_server(proc: subprocess.Popen) -> str:
    """Ctrl-C, as a user stops it; the rest of its output."""
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def page_fps(arrivals: list[float]) -> list[float]:
    """The page's FPS read-out after each arrival (seconds): frames of the last second,
    ``(k - 1) / (now - first)``; no value while fewer than two are in the window."""
    out, start = [], 0
    for i, now in enumerate(arrivals):
        while now - arrivals[start] > 1.0:
            start += 1
        if i > start:
            out.append((i - start) / (now - arrivals[start]))
    return out


def drive(url: str, frames: int, warmup: int, seed: int, timeout: float) -> dict[str, Any]:
    """Play ``warmup + frames`` frames over the page's WebSocket; arrival times and the
    server's ``ms`` of the measured ones, and the time to the first generated frame."""
    import random

    from websockets.sync.client import connect

    rng = random.Random(seed)
    with connect(url.replace("http", "ws", 1) + "ws", open_timeout=timeout, max_size=None) as ws:
        recv = lambda: ws.recv(timeout=timeout)  # noqa: E731
        info = json.loads(recv())
        if info.get("type") != "info":
            raise RuntimeError(f"expected the info message first, got {info}")
        actions = len(info["actions"]["names"])
        start = "clip" if "clip" in info["starts"] else "blank"
        ws.send(json.dumps({"type": "reset", "start": start}))
        while (msg := json.loads(recv()))["type"] != "ready":
            if msg["type"] != "frame":
                raise RuntimeError(f"reset: {msg}")
            recv()  # the prompt frame's PNG
        arrivals, ms, action, held = [], [], 0, 0
        t0 = time.perf_counter()
        first = None
        for i in range(warmup + frames):
            if held == 0:
                action, held = rng.randrange(actions), rng.randint(3, 9)
            held -= 1
            ws.send(json.dumps({"type": "step", "action": action}))
            meta = json.loads(recv())
            if meta.get("type") != "frame":
                raise RuntimeError(f"step {i}: {meta}")
            png = recv()
            now = time.perf_counter()
            if not isinstance(png, bytes) or not png.startswith(b"\x89PNG"):
                raise RuntimeError(f"step {i}: expected the frame's PNG, got {type(png).__name__}")
            first = now - t0 if first is None else first
            if i >= warmup:
                arrivals.append(now)
                ms.append(float(meta["ms"]))
    return {"arrivals": arrivals, "ms": ms, "first_frame_s": first, "start": start, "actions": actions,
            "family": info.get("family"), "steps": info.get("steps"), "size": len(png)}


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    arrivals, ms = run["arrivals"], run["ms"][1:]  # the server's time of the frames that end an interval
    span = arrivals[-1] - arrivals[0]
    page = page_fps(arrivals)
    cuts = statistics.quantiles(ms, n=20) if len(ms) > 1 else [ms[0]] * 19
    return {"family": run["family"], "steps": run["steps"], "start": run["start"], "actions": run["actions"],
            "frames": len(arrivals), "play_fps": (len(arrivals) - 1) / span if span > 0 else None,
            "page_fps_median": statistics.median(page) if page else None,
            "server_ms_mean": statistics.fmean(ms), "server_ms_p50": statistics.median(ms), "server_ms_p95": cuts[18],
            "server_fps": 1000.0 / statistics.fmean(ms), "first_frame_s": run["first_frame_s"],
            "png_bytes": run["size"]}


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, play_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(prog="python -m tools.bench_play", description=__doc__.split("\n\n")[0],
                                usage="python -m tools.bench_play [options] -- PLAY_ARGS")
    p.add_argument("--frames", type=int, default=600, help="frames measured (default 600)")
    p.add_argument("--warmup", type=int, default=50, help="frames before them, not measured (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held actions (default 0)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the server or a frame "
                   "(default 600: the first frame compiles)")
    p.add_argument("--what", default="play", help="report name: <out>/<what>_<gpu>_<date> (default play)")
    p.add_argument("--out", default=str(ROOT / "benchmarks"), help="report folder (default benchmarks/)")
    args = p.parse_args(ours)
    if not play_args:
        p.error("no PLAY_ARGS: expected the scd-msc play arguments after --, e.g. -- --checkpoint CKPT --steps 25")
    if "--port" in play_args or any(a.startswith("--port=") for a in play_args):
        p.error("PLAY_ARGS: --port is chosen by the tool (a free one); expected it left out")
    try:
        integer("--frames", args.frames, low=2)
        integer("--warmup", args.warmup, low=0)
        number("--timeout", args.timeout, low=0, low_open=True)
    except ValueError as err:
        p.error(str(err))

    from tools.bench.env import env_info
    from tools.bench.report import command_line, fmt, report_stem, write_report

    try:
        proc, url, lines = start_server(play_args, args.timeout)
    except RuntimeError as err:
        print(f"bench_play: {err}", file=sys.stderr)
        return 1
    print("".join(lines), end="", flush=True)
    try:
        row = summarise(drive(url, args.frames, args.warmup, args.seed, args.timeout))
    finally:
        tail = stop_server(proc)
    print(tail, end="")
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    stem = report_stem(args.out, args.what, device)
    notes = (f"`scd-msc play {' '.join(play_args)} --port 0` served the page; a WebSocket client played it "
             f"with the page's protocol (the next step asked for when the last frame's PNG has arrived), "
             f"{args.warmup} warm-up frames (compile and CUDA-graph capture; first frame after "
             f"{fmt(row['first_frame_s'])} s) left out. play_fps: frames per second received; page_fps_median: "
             "the page's own read-out (its formula: frames of the last second); server_ms: the model's time per "
             "frame reported in each frame message (no PNG, no socket). A browser's image decode and drawing are "
             "not in these numbers.")
    md, js = write_report(stem, "scd-msc play: frames per second at the page", command_line("tools.bench_play", argv),
                          {"play_args": " ".join(play_args), "frames": args.frames, "warmup": args.warmup,
                           "seed": args.seed}, [row], extra_md=notes, data_json=row, env=env_info(device))
    print(f"play: {fmt(row['play_fps'])} frames/s at the client (page read-out median {fmt(row['page_fps_median'])}), "
          f"server {fmt(row['server_ms_mean'])} ms/frame mean ({fmt(row['server_fps'])} frames/s), "
          f"{row['frames']} frames, {row['steps']} steps/frame")
    print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
