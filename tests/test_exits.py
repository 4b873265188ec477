"""Exits and messages of the command line: user errors are one line naming the argument,
its value and what was expected (exit 2, no traceback, nothing written); Ctrl-C exits
130 (``eval`` writes the clips it scored); ``python -m scd_msc`` is the CLI;
``tools/setup.sh`` says what it does."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import webdataset as wds

from scd_msc.data import make_shards

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
TINY = "scd-msc-tiny"


def _writable(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def unwritable(tmp_path_factory) -> Path:
    """A folder no file can be created in: read-only for a normal user; root ignores
    permission bits, so there /sys (refuses new files) stands in."""
    folder = tmp_path_factory.mktemp("ro")
    folder.chmod(0o555)
    if _writable(folder):
        folder = Path("/sys")
        if not folder.is_dir() or _writable(folder):
            pytest.skip("no unwritable folder here (root without a read-only /sys)")
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    """One good shard of 4 clips (4 frames of 32×32) and one shard of 3 undecodable samples."""
    out = tmp_path_factory.mktemp("data")
    make_shards("moving-digits", out / "good", 4, 32, clips=4, shard_size=4, seed=0, progress=False)
    with wds.TarWriter(str(out / "bad.tar")) as sink:
        for i in range(3):
            sink.write({"__key__": f"bad{i}", "frames.npy": b"\x93NUMPY broken"})
    return {"good": str(out / "good" / "shard-000000.tar"), "bad": str(out / "bad.tar"), "root": str(out)}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "scd_msc", *args]


def train_args(data: dict[str, str], out: str, *extra: str) -> list[str]:
    return ["train", "runtime.backend=reference", f"data.train_shards={data['good']}", "data.clip_frames=4",
            "data.num_workers=0", "train.accelerator=cpu", "train.devices=1", "train.val_every_n_steps=0",
            "train.max_steps=1",
            f"train.out_dir={out}", *extra]


def one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def test_user_errors_are_one_line_with_exit_2(data, unwritable):
    """Run as ``python -m scd_msc`` (the four at once): one stderr line, exit 2, and a
    training run that failed before its first step leaves no folder behind."""
    run = Path(data["root"]) / "run"
    cases = {  # name: (argv, exit code, the one stderr line starts with)
        "train, corrupt validation set": (
            train_args(data, str(run), f"data.val_shards={data['bad']}", "train.val_every_n_steps=2"), 2,
            f"scd-msc train: error: data.val_shards={data['bad']!r}: no usable clip in the first 3 samples "
            "(decode_error=3;"),
        "generate --out": (["generate", "--preset", TINY, "--frames", "1", "--steps", "1",
                            "--out", str(unwritable / "v.mp4")], 2,
                           f"scd-msc generate: error: --out={str(unwritable / 'v.mp4')!r}: expected a writable folder, "
                           f"{str(unwritable)!r} is not writable ("),
        "python -m scd_msc": (["params", "tiny"], 0, None),
    }
    procs = {name: subprocess.Popen(cli(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=ENV, cwd=data["root"]) for name, (argv, _, _) in cases.items()}
    failures = []
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        _, code, start = cases[name]
        lines = [x for x in err.splitlines() if x.strip()]
        ok = proc.returncode == code and (lines == [] if start is None else
                                          len(lines) == 1 and lines[0].startswith(start))
        if not ok:
            failures.append(f"{name}: rc {proc.returncode}, stderr {err[-1500:]!r}")
        if name == "python -m scd_msc":
            header, row = out.splitlines()
            assert header.split()[:2] == ["size", "scd-msc"] and row.startswith("tiny ")
    assert not failures, "\n".join(failures)
    assert not run.exists(), "a run that failed before its first step leaves no folder"


@pytest.mark.parametrize("argv, start", [
    (["eval", "--preset", TINY, "--shards", "{good}", "--context", "1", "--horizon", "1", "--out", "{ro}/eval"],
     "scd-msc eval: error: --out='{ro}/eval': expected a writable folder, '{ro}' is not writable ("),
    (["make-shards", "moving-digits", "--frames", "2", "--size", "16", "--clips", "1", "--out", "{ro}/shards"],
     "scd-msc make-shards: error: out='{ro}/shards': expected a writable folder, '{ro}' is not writable ("),
    (["train", "--print-config", "runtime.backend=foo"],
     "scd-msc train: error: runtime.backend='foo': expected one of reference, flex, natten, auto"),
], ids=["eval", "make-shards", "print-config"])
def test_unwritable_out_and_unknown_backend_are_one_line(data, unwritable, argv, start, capsys):
    from scd_msc.cli import main

    fill = {"good": data["good"], "ro": str(unwritable)}
    assert main([a.format(**fill) for a in argv]) == 2
    assert one_line(capsys.readouterr().err).startswith(start.format(**fill))


def test_latency_benchmark_refuses_an_unwritable_out_in_one_line(unwritable, capsys):
    from tools.bench.latency import main

    assert main(["--device", "cpu", "--out", f"{unwritable}/bench"]) == 2
    assert one_line(capsys.readouterr().err).startswith(
        f"python -m tools.bench_latency: error: --out='{unwritable}/bench': expected a writable folder, "
        f"'{unwritable}' is not writable (")


def test_ctrl_c_outside_a_command_handler_exits_130_with_one_line(monkeypatch, capsys):
    import scd_msc.cli as cli_module

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "_params", interrupted)
    assert cli_module.main(["params"]) == 130
    assert capsys.readouterr().err == "\nscd-msc: interrupted\n"


def test_interrupted_eval_writes_the_clips_it_scored(tmp_path):
    """Ctrl-C after the first clips: eval.md/json cover those, say so, and the exit is 130."""
    make_shards("moving-digits", tmp_path / "val", 6, 32, clips=40, shard_size=40, seed=0, progress=False)
    out = tmp_path / "eval"
    proc = subprocess.Popen(cli("eval", "--preset", TINY, "--shards", str(tmp_path / "val" / "shard-000000.tar"),
                                "--context", "2", "--horizon", "4", "--clips", "40", "--steps", "8", "--batch", "1",
                                "--out", str(out)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    seen: list[bytes] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: os.read(proc.stderr.fileno(), 4096), b"")),
                              daemon=True)
    reader.start()
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not re.search(rb" [1-9]\d*/40 \[", b"".join(seen)):
        time.sleep(0.05)
    assert proc.poll() is None, b"".join(seen).decode()[-2000:]
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    reader.join(timeout=10)  # reads stderr to its end
    err = b"".join(seen).decode()
    assert proc.returncode == 130, err[-2000:]
    summary = json.loads((out / "eval.json").read_text())
    n = summary["clips"]
    assert summary["interrupted"] is True and 1 <= n < 40 and summary["clips_requested"] == 40
    assert len(summary["clip_keys"]) == n == len(summary["clip_psnr_1_8"])
    assert f"**interrupted** (Ctrl-C / SIGTERM) after {n} of 40 clips" in (out / "eval.md").read_text()
    assert f"scd-msc eval: interrupted after {n} of 40 clips; the report covers those" in err.split("\n")


FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for python3: "-c 'import X ...'" succeeds for the packages in $FAKE_HAVE, pip calls are logged
if [ "$1" = "-c" ]; then
  for p in $FAKE_HAVE; do case "$2" in "import $p;"*) echo "1.0"; exit 0;; esac; done
  exit 1
fi
echo "$*" >> "$FAKE_LOG"
"""


@pytest.mark.parametrize("have", ["", "torch natten"], ids=["fresh", "torch-and-natten-present"])
def test_setup_sh_says_what_it_does(tmp_path, have):
    (tmp_path / "python3").write_text(FAKE_PYTHON)
    (tmp_path / "python3").chmod(0o755)
    log = tmp_path / "pip.log"
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "FAKE_HAVE": have, "FAKE_LOG": str(log)}
    env.pop("TORCH_SPEC", None)
    proc = subprocess.run(["bash", str(ROOT / "tools" / "setup.sh")], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    steps = [line for line in proc.stdout.splitlines() if line.startswith("setup: ")]
    if have:
        assert steps[:2] == ["setup: torch 1.0 already installed, kept", "setup: natten 1.0 already installed, kept"]
    else:
        assert steps[:2] == ["setup: installing torch==2.13.0 (CPU build; TORCH_SPEC overrides) ...",
                             "setup: installing natten (no build isolation: it builds against the installed torch) ..."]
    assert steps[2] == "setup: installing scd_msc[dev,games,play] (editable) ..."
    assert re.fullmatch(r"setup: done in \d+ s", steps[3]) and len(steps) == 4
    calls = log.read_text().splitlines()
    assert all(c.startswith("-m pip install -q ") for c in calls)
    assert [c.split()[-1] for c in calls] == (["torch==2.13.0", "natten"] if not have else []) + [".[dev,games,play]"]
