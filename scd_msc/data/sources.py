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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .synthetic import bouncing_shapes, moving_digits
from .video import iter_video_frames, video_fps

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
    if name not in GENERATORS:
        raise ValueError(f"source={name!r}: expected one of {sorted(GENERATORS)}")
    make = GENERATORS[name]
    for i in range(clips):
        frames = make(num_frames, size, np.random.default_rng([seed, i]), **kwargs)  # (F, H, W, C)
        yield Clip(frames, fps, name, {"index": i})


def game_clips(name: str, num_frames: int, size: int, clips: int, seed: int = 0, **kwargs) -> Iterator[Clip]:
    """``clips`` clips played by a random policy in a game engine (``atari`` or ``doom``).

    Checks every option at once (a bad one raises here, not on the first ``next``).
    """
    from .games import GAMES

    if name not in GAMES:
        raise ValueError(f"source={name!r}: expected one of {', '.join(GAMES)}")
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


def video_folder_clips(path: str | Path, num_frames: int, size: int, clips: int | None = None,
                       stride: int | None = None, channels: int = 3, crop: bool = True) -> Iterator[Clip]:
    """Clips of ``num_frames`` frames every ``stride`` frames (default: no overlap), resized to ``size``.

    Files that FFmpeg cannot read are logged and skipped. Stops after ``clips`` clips.
    """
    stride = num_frames if stride is None else stride
    if stride < 1:
        raise ValueError(f"stride={stride!r}: expected a positive integer")
    files = find_videos(path)
    if not files:
        raise ValueError(f"path={str(path)!r}: expected video files ({', '.join(VIDEO_EXTENSIONS)}), found none")
    produced = 0
    for file in files:
        try:
            fps = video_fps(file)
            frames = iter_video_frames(file, channels=channels, size=size, crop=crop)
            for start, clip in cut_clips(frames, num_frames, stride):
                yield Clip(clip, fps, "videos", {"path": str(file), "start": start})
                produced += 1
                if clips is not None and produced >= clips:
                    return
        except (ValueError, OSError) as exn:  # av.FFmpegError is a ValueError
            log.warning("skipping undecodable video %s: %s", file, exn)


def load_callable(spec: str) -> Callable:
    """Import ``"package.module:function"`` (dots after the colon reach attributes)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"encoder={spec!r}: expected 'module:function', e.g. 'my_pkg.vae:encode'")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exn:
        raise ValueError(f"encoder={spec!r}: cannot import module {module_name!r} ({exn})") from exn
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"encoder={spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"encoder={spec!r}: {attr!r} is not callable")
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
