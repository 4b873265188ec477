"""PyAV helpers: decode video bytes or files, resample by timestamp, resize.

Frames are uint8 ``(F, H, W, C)`` with ``C = 1`` (grey) or ``C = 3`` (RGB). Writing
(``encode_mp4``, GIFs, the frame-by-frame mp4 writer) and grey/RGB conversion
(``to_channels``) live in :mod:`scd_msc.media`. A grey clip is written as an RGB video
and read back as grey with ``channels=1``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image

from scd_msc.checks import choice, number, positive_int
from scd_msc.media import import_pyav

VideoSource = bytes | str | os.PathLike
T = TypeVar("T")


def resize_frames(frames: np.ndarray, size: int, *, crop: bool = True) -> np.ndarray:
    """Resize uint8 ``(F, H, W, C)`` to ``(F, size, size, C)``.

    With ``crop`` the largest centred square is cut first (no distortion); without it
    the frames are stretched. Bilinear filtering (PIL, antialiased when shrinking).
    """
    positive_int("size", size)
    return np.stack([_resize_one(f, size, crop) for f in frames])


def _resize_one(frame: np.ndarray, size: int, crop: bool) -> np.ndarray:
    """``(H, W, C)`` -> ``(size, size, C)``."""
    h, w, c = frame.shape
    if crop and h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        frame = frame[top:top + s, left:left + s]
    if frame.shape[:2] == (size, size):
        return frame
    image = Image.fromarray(frame[..., 0] if c == 1 else frame)
    out = np.asarray(image.resize((size, size), Image.BILINEAR))
    return out[..., None] if c == 1 else out


def iter_at_rate(timed: Iterable[tuple[float, T]], fps: float, period: float) -> Iterator[T]:
    """Resample ``(time in s, frame)`` pairs to ``fps`` by timestamp: output frame ``k``
    (at ``t0 + k / fps``) is the last input frame whose time is <= that, so frames are
    dropped (``fps`` below the input's rate) or repeated (above it). The last input frame
    lasts ``period`` seconds (one frame of the input's rate)."""
    number("fps", fps, low=0, low_open=True)
    eps = 1e-6  # timestamps are floats of pts·time_base
    tick, t0, prev, prev_t = 0, 0.0, None, 0.0
    for t, frame in timed:
        if prev is None:
            t0 = t
        while prev is not None and t0 + tick / fps < t - eps:  # ticks before this frame show prev
            yield prev
            tick += 1
        prev, prev_t = frame, t
    while prev is not None and t0 + tick / fps < prev_t + period - eps:
        yield prev
        tick += 1


def iter_video_frames(source: VideoSource, *, channels: int = 3, size: int | None = None,
                      max_frames: int | None = None, crop: bool = True,
                      fps: float | None = None) -> Iterator[np.ndarray]:
    """Yield uint8 frames ``(H, W, channels)`` (or ``(size, size, channels)``) one at a time.

    ``source`` is encoded bytes or a path (mp4, webm, avi, gif, ... anything FFmpeg reads).
    ``fps``: resample to that rate by timestamp (:func:`iter_at_rate`; None keeps every
    decoded frame). Decoding stops after ``max_frames`` (output frames). Raises
    ``av.FFmpegError`` (a ``ValueError``) on undecodable data.
    """
    choice("channels", channels, (1, 3))
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)
    fmt = "gray" if channels == 1 else "rgb24"
    av = import_pyav()
    with av.open(handle, mode="r") as container:
        if not container.streams.video:
            raise ValueError(f"source={_describe(source)}: expected a video stream, found none")
        decoded = container.decode(video=0)
        if fps is not None:
            rate = container.streams.video[0].average_rate
            period = 1.0 / float(rate) if rate else 1.0 / fps
            timed = ((period * i if f.time is None else f.time, f) for i, f in enumerate(decoded))
            decoded = iter_at_rate(timed, fps, period)
        count, last, array = 0, None, None
        for frame in decoded:
            if max_frames is not None and count >= max_frames:
                break
            if frame is not last:  # a repeated frame is converted once
                last, array = frame, frame.to_ndarray(format=fmt)
                array = array[..., None] if channels == 1 else array          # (H, W, C)
                array = _resize_one(array, size, crop) if size is not None else array
            yield array
            count += 1


def decode_video(source: VideoSource, *, channels: int = 3, size: int | None = None,
                 max_frames: int | None = None, crop: bool = True) -> np.ndarray:
    """Decode a whole video (or its first ``max_frames``) to uint8 ``(F, H, W, channels)``."""
    frames = list(iter_video_frames(source, channels=channels, size=size, max_frames=max_frames, crop=crop))
    if not frames:
        raise ValueError(f"source={_describe(source)}: decoded no frames")
    return np.stack(frames)


@dataclass(frozen=True)
class VideoInfo:
    """The first video stream's average frame rate (``default`` when unknown) and frame size."""

    fps: float
    height: int
    width: int


def video_info(source: VideoSource, default_fps: float = 8.0) -> VideoInfo:
    """Frame rate and size of the first video stream (read from the container, nothing decoded)."""
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)
    av = import_pyav()
    with av.open(handle, mode="r") as container:
        if not container.streams.video:
            raise ValueError(f"source={_describe(source)}: expected a video stream, found none")
        stream = container.streams.video[0]
        rate = stream.average_rate
        return VideoInfo(float(rate) if rate else default_fps, stream.codec_context.height,
                         stream.codec_context.width)


def video_fps(source: VideoSource, default: float = 8.0) -> float:
    """Average frame rate of the first video stream, or ``default`` when unknown."""
    return video_info(source, default).fps


def _describe(source: VideoSource) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else repr(os.fspath(source))
