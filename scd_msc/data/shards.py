"""Write clips to webdataset tar shards (one sample per clip).

A sample is ``{"__key__": "clip000123", <field>: bytes, "json": metadata}`` with
``<field>`` one of
* ``frames.npy``: uint8 ``(F, H, W, C)`` saved with ``np.save`` (``fmt="npy"``),
* ``mp4``: H.264 bytes from PyAV (``fmt="mp4"``),
* ``latent.npy``: float16/float32 ``(F, c, h, w)`` (source ``latents``),
and ``json`` = ``{fps, frames, height, width, channels, source, ...}``. Keys have no
dots (webdataset splits the key from the field name at the first dot). Clips with
conditions (the game sources) add ``actions.npy`` and json ``label``, ``action_names``,
``class_names`` (see ``conditions.py``).
"""

from __future__ import annotations

import inspect
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import webdataset as wds
from tqdm import tqdm

from scd_msc.checks import choice, integer, number, positive_int
from scd_msc.media import check_writable_folder, encode_mp4

from .conditions import clip_conditions
from .sources import (
    GAME_SOURCES,
    GENERATORS,
    PIXEL_SOURCES,
    SOURCES,
    VIDEO_EXTENSIONS,
    Clip,
    VideoReport,
    encode_latents,
    find_videos,
    game_clips,
    generator_clips,
    load_callable,
    video_folder_clips,
)

FORMATS = ("npy", "mp4")
SHARD_PATTERN = "shard-%06d.tar"


@dataclass
class ShardSummary:
    """What ``make_shards`` wrote: clip and frame counts, total bytes and the shard paths."""

    clips: int
    frames: int
    bytes: int
    shards: list[str] = field(default_factory=list)
    videos: Optional[VideoReport] = None  # source videos: files read, skipped or upscaled

    def __str__(self) -> str:
        where = os.path.dirname(self.shards[0]) if self.shards else "-"
        lines = [f"wrote {self.clips} clips ({self.frames} frames, {self.bytes / 1e6:.2f} MB) "
                 f"in {len(self.shards)} shards under {where}"]
        if self.videos is not None:
            lines.append(f"read {self.videos.files} videos")
            lines += self.videos.lines()
        return "\n".join(lines)


def npy_bytes(array: np.ndarray) -> bytes:
    """``np.save`` to bytes (no pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def clip_sample(key: str, clip: Clip, fmt: str) -> dict:
    """The webdataset sample of one pixel clip."""
    f, h, w, c = clip.frames.shape
    meta = {"fps": clip.fps, "frames": f, "height": h, "width": w, "channels": c, "source": clip.source,
            **clip.extra}
    fields, conditions = clip_conditions(f, clip.actions, clip.label, clip.action_names, clip.class_names)
    data = npy_bytes(clip.frames) if fmt == "npy" else encode_mp4(clip.frames, clip.fps)
    return {"__key__": key, "frames.npy" if fmt == "npy" else "mp4": data, **fields,
            "json": json.dumps({**meta, **conditions})}


def latent_sample(key: str, clip: Clip, latent: np.ndarray, encoder: str) -> dict:
    """The webdataset sample of one latent clip ``(F, c, h, w)``."""
    f, c, h, w = latent.shape
    meta = {"fps": clip.fps, "frames": f, "height": h, "width": w, "channels": c,
            "source": f"latents:{clip.source}", "encoder": encoder, "dtype": str(latent.dtype),
            "pixel_height": clip.frames.shape[1], "pixel_width": clip.frames.shape[2], **clip.extra}
    fields, conditions = clip_conditions(f, clip.actions, clip.label, clip.action_names, clip.class_names)
    return {"__key__": key, "latent.npy": npy_bytes(latent), **fields, "json": json.dumps({**meta, **conditions})}


def check_out_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check that ``out_dir`` can be created or written and holds no shards of an earlier run."""
    out = check_writable_folder(out_dir, "out")
    old = sorted(out.glob("shard-*.tar")) if out.is_dir() else []
    if old and not overwrite:
        raise ValueError(f"out={str(out_dir)!r}: expected no existing shards, found {len(old)} "
                         f"(e.g. {old[0].name}); pass overwrite=True (--overwrite) to replace them")
    return out


def validate(source: str, frames: int, size: int, clips: int | None, shard_size: int, fmt: str,
             **kwargs) -> None:
    """Raise a ``ValueError`` for any bad ``make_shards`` argument, before any work is done."""
    choice("source", source, SOURCES)
    positive_int("frames", frames)
    positive_int("size", size)
    positive_int("shard_size", shard_size)
    choice("fmt", fmt, FORMATS)
    pixels = kwargs.get("pixels", "moving-digits") if source == "latents" else source
    choice("pixels", pixels, PIXEL_SOURCES)
    positive_int("clips", clips, allow_none=pixels == "videos")
    if pixels in GENERATORS:
        integer("size", size, low=8, detail=f"the smallest canvas of the {pixels} generator")
    if pixels == "videos":
        if not kwargs.get("path"):
            raise ValueError(f"path={kwargs.get('path')!r}: expected a folder of videos for source {source!r}")
        if not find_videos(kwargs["path"]):
            raise ValueError(f"path={str(kwargs['path'])!r}: expected video files "
                             f"({', '.join(VIDEO_EXTENSIONS)}), found none")
    known = {"videos": set(inspect.signature(video_folder_clips).parameters)}
    known.update({name: set(inspect.signature(fn).parameters) for name, fn in GENERATORS.items()})
    if pixels in GAME_SOURCES:
        from .games import GAMES

        known[pixels] = set(inspect.signature(GAMES[pixels]).parameters) - {"seed"}
    allowed = (known[pixels] - {"num_frames", "size", "rng", "clips", "report"}) | {"fps", "pixels", "encoder",
                                                                                     "latent_dtype"}
    if set(kwargs) - allowed:
        raise ValueError(f"source options {sorted(set(kwargs) - allowed)}: not understood by {pixels!r}, "
                         f"expected some of {sorted(allowed)}")
    positive_int("stride", kwargs.get("stride"), allow_none=True)
    number("fps", kwargs.get("fps"), low=0, low_open=True, allow_none=True)
    if pixels in GENERATORS:  # a one-frame dry run checks the values of the generator options
        GENERATORS[pixels](1, size, 0, **{k: v for k, v in kwargs.items() if k in known[pixels]})
    elif pixels in GAME_SOURCES:  # checks every option; the engines only start on the first next()
        game_clips(pixels, frames, size, clips, **{k: v for k, v in kwargs.items() if k in known[pixels]})
    else:
        choice("channels", kwargs.get("channels", 3), (1, 3))
    if source == "latents":
        load_callable(kwargs.get("encoder") or "")  # raises a ValueError naming the problem
        choice("latent_dtype", kwargs.get("latent_dtype", "float16"), ("float16", "float32"))


def pixel_clips(pixels: str, frames: int, size: int, clips: int | None, seed: int,
                report: VideoReport | None = None, **kwargs) -> Iterator[Clip]:
    """Clips from a pixel source; ``kwargs`` go to the generator or the folder reader
    (which fills ``report``)."""
    if pixels == "videos":
        return video_folder_clips(kwargs.pop("path"), frames, size, clips=clips, report=report, **kwargs)
    if pixels in GAME_SOURCES:
        return game_clips(pixels, frames, size, clips, seed=seed, **kwargs)
    return generator_clips(pixels, frames, size, clips, seed=seed, **kwargs)


def make_shards(source: str, out_dir: str | os.PathLike, frames: int, size: int, clips: int | None = 1000,
                shard_size: int = 1000, seed: int = 0, fmt: str = "npy", *, overwrite: bool = False,
                progress: bool = True, **source_kwargs) -> ShardSummary:
    """Write ``clips`` clips of ``frames`` frames of ``size`` x ``size`` pixels to tar shards.

    Args:
        source: ``moving-digits``, ``bouncing-shapes``, ``videos``, ``atari``, ``doom`` or ``latents``.
        out_dir: folder for ``shard-000000.tar``, ``shard-000001.tar``, ...
        clips: number of clips; for ``videos`` None means every clip of every file.
        shard_size: clips per shard.
        fmt: ``npy`` or ``mp4`` (pixel sources; latents are always ``latent.npy``).
        source_kwargs: generator options (``channels``, ``num_digits``, ...), ``fps`` (the
            rate stored for synthetic clips; for ``videos`` the rate every file is resampled
            to by timestamp, None: each file's own); ``path``, ``stride``, ``channels`` for
            ``videos``; ``encoder`` ("module:function"),
            ``pixels`` (pixel source, default ``moving-digits``) and ``latent_dtype`` for ``latents``;
            ``games`` / ``scenarios``, ``workers``, ``clips_per_rollout``, ``channels`` for
            ``atari`` / ``doom`` (see ``scd_msc.data.games``).
    """
    validate(source, frames, size, clips, shard_size, fmt, **source_kwargs)
    out = check_out_dir(out_dir, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("shard-*.tar"):
        old.unlink()
    kwargs = dict(source_kwargs)
    encoder_spec = kwargs.pop("encoder", None)
    latent_dtype = kwargs.pop("latent_dtype", "float16")
    pixels = kwargs.pop("pixels", "moving-digits") if source == "latents" else source
    if kwargs.get("fps") is None:
        kwargs.pop("fps", None)
    encoder = load_callable(encoder_spec) if source == "latents" else None
    report = VideoReport(frames, size) if pixels == "videos" else None

    written: list[str] = []
    total_clips = total_frames = 0
    bar = tqdm(total=clips, unit="clip", desc=f"make-shards {source}", disable=not progress)
    with wds.ShardWriter(str(out / SHARD_PATTERN), maxcount=shard_size, verbose=0, mtime=0.0,
                         post=written.append) as sink:
        for i, clip in enumerate(pixel_clips(pixels, frames, size, clips, seed, report, **kwargs)):
            key = f"clip{i:06d}"
            if encoder is not None:
                sink.write(latent_sample(key, clip, encode_latents(encoder, clip.frames, latent_dtype), encoder_spec))
            else:
                sink.write(clip_sample(key, clip, fmt))
            total_clips += 1
            total_frames += clip.frames.shape[0]
            bar.update(1)
    bar.close()
    return ShardSummary(total_clips, total_frames, sum(os.path.getsize(p) for p in written), written, report)
