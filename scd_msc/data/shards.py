"""Write clips to webdataset tar shards (one sample per clip).

A sample is ``{"__key__": "clip000123", <field>: bytes, "json": metadata}`` with
``<field>`` one of
* ``frames.npy``: uint8 ``(F, H, W, C)`` saved with ``np.save`` (``fmt="npy"``),
* ``mp4``: H.264 bytes from PyAV (``fmt="mp4"``),
* ``latent.npy``: float16/float32 ``(F, c, h, w)`` (source ``latents``; its json also
  names the encoder, or the autoencoder with its sha256 and scaling, and the pixel
  shape: ``latent_shards.py``),
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
from typing import Any, Optional

import numpy as np
import webdataset as wds
from tqdm import tqdm

from scd_msc.checks import choice, integer, number, positive_int
from scd_msc.media import check_writable_folder, encode_mp4

from .conditions import clip_conditions
from .dataset import expand_shards
from .latent_shards import LatentEncoder, encoded, shard_clips
from .sources import (
    GAME_SOURCES,
    GENERATORS,
    PIXEL_SOURCES,
    SOURCES,
    VIDEO_EXTENSIONS,
    Clip,
    VideoReport,
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


def latent_sample(key: str, clip: Clip, latent: np.ndarray, encoder: str | dict[str, Any]) -> dict:
    """The webdataset sample of one latent clip ``(F, c, h, w)``; ``encoder``: the
    ``module:function`` that made it, or the json fields that name it
    (``LatentEncoder.meta``: an autoencoder's path, sha256 and scaling)."""
    f, c, h, w = latent.shape
    names = {"encoder": encoder} if isinstance(encoder, str) else encoder
    meta = {"fps": clip.fps, "frames": f, "height": h, "width": w, "channels": c,
            "source": f"latents:{clip.source}", **names, "dtype": str(latent.dtype),
            "pixel_height": clip.frames.shape[1], "pixel_width": clip.frames.shape[2],
            "pixel_channels": clip.frames.shape[3], **clip.extra}
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


LATENT_OPTIONS = ("encoder", "autoencoder", "from_shards", "device", "batch", "pixels", "latent_dtype")


def validate_latents(frames: int | None, size: int | None, clips: int | None, **kwargs) -> None:
    """The options of source ``latents`` (named as ``make-shards`` spells them): exactly one
    of ``--encoder`` / ``--autoencoder``; with ``--from`` no pixel source, frames or size."""
    encoder, autoencoder, from_shards = (kwargs.get(k) for k in ("encoder", "autoencoder", "from_shards"))
    if (encoder is None) == (autoencoder is None):
        raise ValueError("--encoder/--autoencoder: expected exactly one of them for source 'latents', got "
                         + ("both" if encoder else "neither"))
    if encoder is not None:
        load_callable(encoder, "--encoder")  # raises a ValueError naming the problem
    elif not os.path.isfile(autoencoder):
        raise ValueError(f"--autoencoder={autoencoder!r}: expected a scd-msc train-ae checkpoint file; there is none")
    for name in ("device", "batch"):
        if kwargs.get(name) is not None and autoencoder is None:
            raise ValueError(f"--{name}: only used with --autoencoder (an --encoder gets one clip per call)")
    positive_int("--batch", kwargs.get("batch"), allow_none=True)
    choice("--latent-dtype", kwargs.get("latent_dtype", "float16"), ("float16", "float32"))
    if from_shards is None:
        return
    for name, value in (("--frames", frames), ("--size", size), ("--pixels", kwargs.get("pixels"))):
        if value is not None:
            raise ValueError(f"{name}={value!r}: not used with --from (every clip of the pixel shards is encoded "
                             "whole, at its own size); drop it")
    positive_int("--clips", clips, allow_none=True)
    try:
        expand_shards(from_shards)
    except ValueError as err:
        raise ValueError(f"--from: {err}") from None
    unknown = set(kwargs) - set(LATENT_OPTIONS)
    if unknown:
        raise ValueError(f"source options {sorted(unknown)}: not understood with --from, expected some of "
                         f"{sorted(set(LATENT_OPTIONS) - {'pixels'})}")


def validate(source: str, frames: int | None, size: int | None, clips: int | None, shard_size: int, fmt: str,
             **kwargs) -> None:
    """Raise a ``ValueError`` for any bad ``make_shards`` argument, before any work is done."""
    choice("source", source, SOURCES)
    positive_int("shard_size", shard_size)
    choice("fmt", fmt, FORMATS)
    if source == "latents":
        validate_latents(frames, size, clips, **kwargs)
        if kwargs.get("from_shards") is not None:
            return
    positive_int("frames", frames)
    positive_int("size", size)
    pixels = (kwargs.get("pixels") or "moving-digits") if source == "latents" else source
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
    allowed = (known[pixels] - {"num_frames", "size", "rng", "clips", "report"}) | {"fps", *LATENT_OPTIONS}
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


def pixel_clips(pixels: str, frames: int, size: int, clips: int | None, seed: int,
                report: VideoReport | None = None, **kwargs) -> Iterator[Clip]:
    """Clips from a pixel source; ``kwargs`` go to the generator or the folder reader
    (which fills ``report``)."""
    if pixels == "videos":
        return video_folder_clips(kwargs.pop("path"), frames, size, clips=clips, report=report, **kwargs)
    if pixels in GAME_SOURCES:
        return game_clips(pixels, frames, size, clips, seed=seed, **kwargs)
    return generator_clips(pixels, frames, size, clips, seed=seed, **kwargs)


def make_shards(source: str, out_dir: str | os.PathLike, frames: int | None, size: int | None,
                clips: int | None = 1000, shard_size: int = 1000, seed: int = 0, fmt: str = "npy", *,
                overwrite: bool = False, progress: bool = True, **source_kwargs) -> ShardSummary:
    """Write ``clips`` clips of ``frames`` frames of ``size`` x ``size`` pixels to tar shards.

    Args:
        source: ``moving-digits``, ``bouncing-shapes``, ``videos``, ``atari``, ``doom`` or ``latents``.
        out_dir: folder for ``shard-000000.tar``, ``shard-000001.tar``, ...
        clips: number of clips; for ``videos`` (and ``latents`` from shards) None means every clip.
        shard_size: clips per shard.
        fmt: ``npy`` or ``mp4`` (pixel sources; latents are always ``latent.npy``).
        source_kwargs: generator options (``channels``, ``num_digits``, ...), ``fps`` (the
            rate stored for synthetic clips; for ``videos`` the rate every file is resampled
            to by timestamp, None: each file's own); ``path``, ``stride``, ``channels`` for
            ``videos``; for ``latents`` (:mod:`scd_msc.data.latent_shards`) ``encoder``
            ("module:function") or ``autoencoder`` (a ``train-ae`` checkpoint, with
            ``device`` and ``batch``: clips per call), ``pixels`` (pixel source, default
            ``moving-digits``) or ``from_shards`` (pixel shards, encoded whole: ``frames``
            and ``size`` None), and ``latent_dtype``; ``games`` / ``scenarios``,
            ``workers``, ``clips_per_rollout``, ``channels`` for ``atari`` / ``doom`` (see
            ``scd_msc.data.games``).
    """
    validate(source, frames, size, clips, shard_size, fmt, **source_kwargs)
    out = check_out_dir(out_dir, overwrite)
    kwargs = dict(source_kwargs)
    latent = {k: kwargs.pop(k, None) for k in LATENT_OPTIONS}
    pixels = (latent["pixels"] or "moving-digits") if source == "latents" else source
    encoder = None
    if source == "latents":  # loaded before the old shards go: a bad checkpoint leaves them
        encoder = (LatentEncoder.module(latent["encoder"]) if latent["encoder"] else
                   LatentEncoder.autoencoder(latent["autoencoder"], latent["device"] or "auto", latent["batch"] or 16))
    if kwargs.get("fps") is None:
        kwargs.pop("fps", None)
    report = VideoReport(frames, size) if pixels == "videos" and not latent["from_shards"] else None
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("shard-*.tar"):
        old.unlink()

    if latent["from_shards"]:
        keyed: Iterator[tuple[str, Clip]] = shard_clips(latent["from_shards"], clips)
    else:
        keyed = ((f"clip{i:06d}", clip)
                 for i, clip in enumerate(pixel_clips(pixels, frames, size, clips, seed, report, **kwargs)))
    if encoder is None:
        samples = ((clip, clip_sample(key, clip, fmt)) for key, clip in keyed)
    else:
        dtype = latent["latent_dtype"] or "float16"
        samples = ((clip, latent_sample(key, clip, z, encoder.meta)) for key, clip, z in encoded(keyed, encoder, dtype))
    written: list[str] = []
    total_clips = total_frames = 0
    bar = tqdm(total=clips, unit="clip", desc=f"make-shards {source}", disable=not progress)
    with wds.ShardWriter(str(out / SHARD_PATTERN), maxcount=shard_size, verbose=0, mtime=0.0,
                         post=written.append) as sink:
        for clip, sample in samples:
            sink.write(sample)
            total_clips += 1
            total_frames += clip.frames.shape[0]
            bar.update(1)
    bar.close()
    return ShardSummary(total_clips, total_frames, sum(os.path.getsize(p) for p in written), written, report)
