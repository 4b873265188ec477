"""Clip sources for ``make_shards``: synthetic generators, a folder of videos, game engines, latents.

Every source is an iterator of ``Clip`` (uint8 frames ``(F, H, W, C)`` plus metadata;
game clips also carry actions and, with several games, a class label).
Synthetic clip ``i`` draws from ``numpy.random.default_rng([seed, i])``, so a clip does
not depend on how many clips came before it or on the shard size. The game sources
(``atari``, ``doom``: ``scd_msc.data.games``, extra ``games``) are imported on first use.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scd_msc.checks import choice, positive_int

from .synthetic import bouncing_shapes, moving_digits
from .video import iter_video_frames, video_info

log = logging.getLogger(__name__)

GENERATORS: dict[str, Callable[..., np.ndarray]] = {
    "moving-digits": moving_digits,
    "bouncing-shapes": bouncing_shapes,
}
GAME_SOURCES = ("atari", "doom")  # scd_msc.data.games.GAMES, imported on first use
PIXEL_SOURCES = (*GENERATORS, "videos", *GAME_SOURCES)
SOURCES = (*PIXEL_SOURCES, "latents")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".gif", ".mkv", ".mov", ".m4v")


@dataclass
class Clip:
    """One clip: uint8 ``frames`` ``(F, H, W, C)``, its frame rate and provenance.

    Optional conditions (see ``conditions.py``): ``actions`` int ``(F,)`` with
    ``actions[i]`` the action that leads to ``frames[i]``, ``label`` the clip's class,
    and the names of the action and class ids.
    """

    frames: np.ndarray
    fps: float
    source: str
    extra: dict = field(default_factory=dict)
    actions: np.ndarray | None = None
    label: int | None = None
    action_names: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()


def generator_clips(name: str, num_frames: int, size: int, clips: int, seed: int = 0,
                    fps: float = 8.0, **kwargs) -> Iterator[Clip]:
    """``clips`` clips from the named generator (``moving-digits`` or ``bouncing-shapes``)."""
    choice("source", name, GENERATORS)
    make = GENERATORS[name]
    for i in range(clips):
        frames = make(num_frames, size, np.random.default_rng([seed, i]), **kwargs)  # (F, H, W, C)
        yield Clip(frames, fps, name, {"index": i})


def game_clips(name: str, num_frames: int, size: int, clips: int, seed: int = 0, **kwargs) -> Iterator[Clip]:
    """``clips`` clips played by a random policy in a game engine (``atari`` or ``doom``).

    Checks every option at once (a bad one raises here, not on the first ``next``).
    """
    from .games import GAMES

    choice("source", name, GAMES)
    return GAMES[name](num_frames, size, clips, seed, **kwargs)


def find_videos(path: str | Path) -> list[Path]:
    """Video files (by extension, see ``VIDEO_EXTENSIONS``) under ``path``, sorted."""
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ValueError(f"path={str(path)!r}: expected an existing folder of video files")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def cut_clips(frames: Iterator[np.ndarray], num_frames: int, stride: int) -> Iterator[tuple[int, np.ndarray]]:
    """Cut a stream of ``(H, W, C)`` frames into ``(start, (F, H, W, C))`` clips every ``stride`` frames."""
    buffer: list[np.ndarray] = []
    start, skip = 0, 0
    for frame in frames:
        if skip:
            skip -= 1
            continue
        buffer.append(frame)
        if len(buffer) == num_frames:
            yield start, np.stack(buffer)
            start += stride
            buffer, skip = buffer[stride:], max(0, stride - num_frames)


def _counting(frames: Iterator[np.ndarray], count: list[int]) -> Iterator[np.ndarray]:
    """Pass ``frames`` through, adding one to ``count[0]`` per frame."""
    for frame in frames:
        count[0] += 1
        yield frame


def _examples(items: list[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


@dataclass
class VideoReport:
    """What :func:`video_folder_clips` met, file by file (filled in while it runs):
    files opened, clips cut, and the files that gave no clip or were changed."""

    num_frames: int
    size: int
    files: int = 0
    clips: int = 0
    too_short: list[str] = field(default_factory=list)  # "name (N frames)": fewer than one clip
    upscaled: list[str] = field(default_factory=list)  # "name (HxW)": smaller than size
    undecodable: list[str] = field(default_factory=list)  # no clip kept
    cut_short: list[str] = field(default_factory=list)  # "name (after N clips)": decode error, clips kept

    def lines(self) -> list[str]:
        """One summary line per kind of problem (none when every file gave clips at full size)."""
        kinds = [(self.too_short, f"too short for one clip of {self.num_frames} frames, skipped"),
                 (self.upscaled, f"smaller than --size {self.size}, upscaled"),
                 (self.undecodable, "undecodable, skipped"),
                 (self.cut_short, "cut short by a decode error, their earlier clips kept")]
        return [f"{len(names)} of {self.files} videos {what}: {_examples(names)}" for names, what in kinds if names]


def video_folder_clips(path: str | Path, num_frames: int, size: int, clips: int | None = None,
                       stride: int | None = None, channels: int = 3, crop: bool = True,
                       fps: float | None = None, report: VideoReport | None = None) -> Iterator[Clip]:
    """Clips of ``num_frames`` frames every ``stride`` frames (default: no overlap), resized to ``size``.

    ``fps``: resample every video to that rate first (frames dropped or repeated by
    timestamp); None keeps each file's own frames and rate. Stops after ``clips`` clips.
    Files shorter than one clip, smaller than ``size`` (upscaled) or that FFmpeg cannot
    read (all or part) are logged and listed in ``report``.
    """
    stride = num_frames if stride is None else stride
    positive_int("stride", stride)
    files = find_videos(path)
    if not files:
        raise ValueError(f"path={str(path)!r}: expected video files ({', '.join(VIDEO_EXTENSIONS)}), found none")
    report = VideoReport(num_frames, size) if report is None else report
    root = Path(path)
    for file in files:
        name = str(file.relative_to(root)) if root.is_dir() else file.name
        report.files += 1
        kept, decoded = 0, [0]
        try:
            info = video_info(file)
            if min(info.height, info.width) < size:
                report.upscaled.append(f"{name} ({info.height}x{info.width})")
            frames = iter_video_frames(file, channels=channels, size=size, crop=crop, fps=fps)
            for start, clip in cut_clips(_counting(frames, decoded), num_frames, stride):
                yield Clip(clip, fps or info.fps, "videos", {"path": str(file), "start": start})
                kept += 1
                report.clips += 1
                if clips is not None and report.clips >= clips:
                    return
        except (ValueError, OSError) as exn:  # av.FFmpegError is a ValueError
            if kept:
                log.warning("video %s: decode error after %d clips, kept them (%s)", file, kept, exn)
                report.cut_short.append(f"{name} (after {kept} clips)")
            else:
                log.warning("skipping undecodable video %s: %s", file, exn)
                report.undecodable.append(name)
            continue
        if not kept:
            report.too_short.append(f"{name} ({decoded[0]} frames)")


@contextmanager
def cwd_on_path() -> Iterator[None]:
    """Put the working folder first on ``sys.path`` for the block only (so ``my_vae:encode``
    finds ``./my_vae.py`` under the ``scd-msc`` console script, as ``python -m`` would),
    then remove it again: the rest of the process imports as before."""
    cwd = os.getcwd()
    sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if cwd in sys.path:
            sys.path.remove(cwd)


def load_callable(spec: str, arg: str = "encoder") -> Callable:
    """Import ``"package.module:function"`` (dots after the colon reach attributes).

    The working folder is searched first, during this import only (:func:`cwd_on_path`):
    a module that imports its own neighbours later, at call time, must live on the
    normal path (``pip install -e``) or import them at module level. ``arg`` names the
    option in error messages (``encoder``, ``--decoder``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{arg}={spec!r}: expected 'module:function', e.g. 'my_vae:encode' (my_vae.py "
                         "in the working folder) or 'my_pkg.vae:encode'")
    try:
        with cwd_on_path():
            obj = importlib.import_module(module_name)
    except ImportError as exn:
        raise ValueError(f"{arg}={spec!r}: cannot import module {module_name!r} ({exn})") from exn
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{arg}={spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{arg}={spec!r}: {attr!r} is not callable")
    return obj


def encode_latents(encoder: Callable, frames: np.ndarray, dtype: str = "float16") -> np.ndarray:
    """Pixels uint8 ``(F, H, W, C)`` -> latents ``(F, c, h, w)`` of ``dtype``.

    The encoder gets a float32 tensor ``(F, C, H, W)`` in [-1, 1] (frames as the batch)
    and returns a tensor or array ``(F, c, h, w)``.
    """
    import torch

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # (F, C, H, W)
    with torch.no_grad():
        z = encoder(x)
    z = z.detach().cpu().float().numpy() if isinstance(z, torch.Tensor) else np.asarray(z, dtype=np.float32)
    if z.ndim != 4 or z.shape[0] != frames.shape[0]:
        raise ValueError(f"encoder output shape {z.shape}: expected (F={frames.shape[0]}, c, h, w)")
    return z.astype(dtype)
