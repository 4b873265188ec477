"""README.md runs as written: every ``scd-msc make-shards``, ``generate`` and ``eval``
command of its bash blocks runs, in README order, in a fresh folder that holds what the
Quick start leaves behind. The other lines of the blocks that hold such a command (say a
``printf`` that writes a module they use) run too, in order, except ``scd-msc train``;
``scd-msc train-ae`` runs with ``SHORT_RUN`` appended (its checkpoint feeds
``make-shards latents --autoencoder``).

* Each command runs through ``bash -c`` exactly as written (``\\`` continuations joined),
  with ``scd-msc`` on ``PATH`` being this checkout's CLI (``sys.executable -m scd_msc.cli``).
* A command whose trailing comment starts with one of ``SKIP_MARKERS`` (``# GPU ...``,
  ``# needs your own ...``) is not run: the README says why next to it.
* A checkpoint ``X/checkpoints/last.ckpt`` named by a command is made first (standing in for
  ``tools/demo.sh``): by the README's ``scd-msc train`` command whose config writes
  ``train.out_dir=X``, with ``SHORT_RUN`` appended. When its training shards are missing,
  the ``scd-msc make-shards`` lines at the top of its config file make them first (the
  README: "Each config file lists the make-shards commands for its data").
* ``my_videos/`` holds a few short colour mp4s, for the commands that read your own videos.
* Commands get one torch thread (``OMP_NUM_THREADS=1`` unless set): about 80 s in all on
  2 free cores.
"""

from __future__ import annotations

import glob
import os
import re
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from braceexpand import braceexpand

from scd_msc.cli import build_parser
from scd_msc.config import load_config
from scd_msc.data import bouncing_shapes
from scd_msc.media import encode_mp4

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RUN = ("make-shards", "generate", "eval")
SKIP_MARKERS = ("GPU", "needs your own")
SHORT_RUN = ["train.max_steps=2", "train.checkpoint_every_n_steps=2", "train.val_every_n_steps=0",
             "train.sample_every_n_steps=0", "train.progress_bar=false", "train.accelerator=cpu",
             "train.devices=1", "data.batch_size=2", "data.num_workers=0"]
CHECKPOINT = re.compile(r"^(?P<out_dir>.+)/checkpoints/last\.ckpt$")


@dataclass
class Command:
    block: int  # index of its bash block
    line: int  # README line where the command starts
    text: str  # as written, continuations joined, trailing comment included
    argv: list[str]  # shell words without the comment
    comment: str

    @property
    def skipped(self) -> bool:
        return self.comment.startswith(SKIP_MARKERS)

    def option(self, name: str) -> str | None:
        return next((b for a, b in zip(self.argv, self.argv[1:]) if a == name), None)


def split_comment(text: str) -> tuple[list[str], str]:
    """Shell words of ``text`` and its trailing ``# comment`` (without the ``#``): as in
    bash, a ``#`` starts a comment at the start of a word outside quotes."""
    quote = None
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1].isspace()):
            return shlex.split(text[:i]), text[i + 1:].strip()
    return shlex.split(text), ""


def shell_commands(markdown: str) -> list[Command]:
    """Commands of the ```bash blocks of ``markdown``: continuations joined, comment-only
    lines dropped."""
    out: list[Command] = []
    inside, pending, start, block = False, "", 0, -1
    for number, raw in enumerate(markdown.splitlines(), 1):
        if raw.startswith("```"):
            inside = not inside and raw.strip() == "```bash"
            block += inside
            continue
        if not inside:
            continue
        line = raw.strip()
        if not pending:  # a new command starts here
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line and not line.startswith("#"):
            out.append(Command(block, start, line, *split_comment(line)))
    return out


def scd_msc(commands: list[Command], sub: tuple[str, ...]) -> list[Command]:
    return [c for c in commands if c.argv[:1] == ["scd-msc"] and len(c.argv) > 1 and c.argv[1] in sub]


def config_shard_commands(config: Path) -> list[Command]:
    """The ``scd-msc make-shards`` lines listed in the comments at the top of a config."""
    lines = [m.group(1) for m in re.finditer(r"^#\s+(scd-msc make-shards .*)$", config.read_text(), re.M)]
    return [Command(-1, 0, line, *split_comment(line)) for line in lines]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Runner:
    """Runs commands in ``cwd`` with this checkout's ``scd-msc`` first on PATH."""

    def __init__(self, cwd: Path, train_commands: list[Command]):
        self.cwd, self.train_commands = cwd, train_commands
        shim = cwd / ".bin" / "scd-msc"
        shim.parent.mkdir()
        shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m scd_msc.cli "$@"\n')
        shim.chmod(0o755)
        self.env = dict(os.environ, PATH=f"{shim.parent}{os.pathsep}{os.environ['PATH']}",
                        PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
        # one torch thread unless told otherwise: on cores shared with other jobs, spinning
        # intra-op threads make these small models up to 20x slower
        self.env.setdefault("OMP_NUM_THREADS", "1")
        self.log: list[str] = []

    def run(self, text: str, why: str) -> None:
        start, cpu = time.perf_counter(), _children_cpu()
        proc = subprocess.run(["bash", "-c", text], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=600)
        self.log.append(f"{time.perf_counter() - start:6.1f} s ({_children_cpu() - cpu:5.1f} s CPU)  {why}: {text}")
        assert proc.returncode == 0, (f"{why} failed (exit {proc.returncode}):\n  {text}\n"
                                      f"{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}")

    def provide_checkpoint(self, command: Command) -> None:
        """Train the README run that writes ``command``'s ``--checkpoint``, if missing."""
        path = command.option("--checkpoint")
        if path is None or (self.cwd / path).is_file():
            return
        match = CHECKPOINT.match(path)
        assert match, (f"README.md:{command.line}: --checkpoint {path!r} is not <train.out_dir>/checkpoints/"
                       "last.ckpt, so no README train command can make it")
        trainer = self._train_command_for(match["out_dir"])
        assert trainer is not None, (f"README.md:{command.line}: --checkpoint {path!r}: no README `scd-msc "
                                     f"train` command writes train.out_dir={match['out_dir']!r}")
        assert not trainer.skipped, f"README.md:{trainer.line}: the run behind {path!r} is marked {trainer.comment!r}"
        args = build_parser().parse_args(trainer.argv[1:])
        cfg = load_config(str(self.cwd / args.config) if args.config else None, args.overrides)
        if not any(glob.glob(str(self.cwd / p)) for p in braceexpand(cfg.data.train_shards)):
            assert args.config, f"README.md:{trainer.line}: its training shards {cfg.data.train_shards!r} are missing"
            makers = config_shard_commands(ROOT / args.config)
            assert makers, f"{args.config}: lists no `scd-msc make-shards` command for {cfg.data.train_shards!r}"
            for maker in makers:
                self.run(maker.text, f"{args.config} shards")
        self.run(shlex.join(trainer.argv + SHORT_RUN), f"README.md:{trainer.line} (short run)")
        assert (self.cwd / path).is_file(), f"README.md:{trainer.line}: the short run wrote no {path}"

    def _train_command_for(self, out_dir: str) -> Command | None:
        for command in self.train_commands:
            args = build_parser().parse_args(command.argv[1:])
            cfg = load_config(str(self.cwd / args.config) if args.config else None, args.overrides)
            if os.path.normpath(cfg.train.out_dir) == os.path.normpath(out_dir):
                return command
        return None


def make_my_videos(folder: Path) -> None:
    """Three colour mp4s of 24 frames, 48×48 (two 16-frame clips each at stride 8)."""
    folder.mkdir()
    for i in range(3):
        (folder / f"video{i}.mp4").write_bytes(encode_mp4(bouncing_shapes(24, 48, i), fps=8))


def check_outputs(cwd: Path, command: Command) -> None:
    """The files the command says it writes are there."""
    out = cwd / (command.option("--out") or "eval")  # eval's default --out
    if command.argv[1] == "make-shards":
        assert glob.glob(str(out / "shard-*.tar")), f"README.md:{command.line}: no shards in {out}"
    elif command.argv[1] == "generate":
        written = [out] + ([out.with_suffix(".gif")] if "--gif" in command.argv and out.suffix == ".mp4" else [])
        assert all(p.is_file() and p.stat().st_size > 0 for p in written), f"README.md:{command.line}: {written}"
    else:
        assert (out / "eval.json").is_file() and (out / "eval.md").is_file(), f"README.md:{command.line}: {out}"


def test_shell_commands_join_continuations_and_split_trailing_comments():
    text = "x\n```bash\n# a comment\nscd-msc generate --a 1 \\\n    --b 'x #y' c#d  # GPU, it's ok\n```\nscd-msc eval\n"
    (command,) = shell_commands(text)
    assert (command.block, command.line) == (0, 4)
    assert command.argv == ["scd-msc", "generate", "--a", "1", "--b", "x #y", "c#d"]
    assert command.comment == "GPU, it's ok" and command.skipped and command.option("--b") == "x #y"


def test_readme_commands_run_as_written(tmp_path):
    commands = shell_commands(README.read_text())
    for c in commands:  # nothing is left out silently: such a command must start its line
        assert not re.search(r"scd-msc (make-shards|generate|eval)\b", c.text) or scd_msc([c], RUN), \
            f"README.md:{c.line}: a `scd-msc` command inside another one: {c.text}"
    assert {c.argv[1] for c in scd_msc(commands, RUN) if not c.skipped} == set(RUN)
    blocks = {c.block for c in scd_msc(commands, RUN)}
    to_run = [c for c in commands if c.block in blocks and not scd_msc([c], ("train",))]
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    make_my_videos(tmp_path / "my_videos")
    runner = Runner(tmp_path, scd_msc(commands, ("train",)))
    for command in to_run:
        if command.skipped:
            runner.log.append(f"   skipped  README.md:{command.line} ({command.comment}): {command.text}")
            continue
        runner.provide_checkpoint(command)
        short = command.argv[:2] == ["scd-msc", "train-ae"]
        runner.run(shlex.join(command.argv + SHORT_RUN) if short else command.text,
                   f"README.md:{command.line}" + (" (short run)" if short else ""))
        if scd_msc([command], RUN):
            check_outputs(tmp_path, command)
    print("\n".join(runner.log))
