"""Frame sinks of ``scd-msc generate``: an mp4 muxed frame by frame and a GIF.

Frames arrive as float tensors ``(B, C, H, W)`` in [-1, 1] and are turned into one uint8
RGB/grey image ``(H, B·W, C)``: the batch is tiled side by side, so one video shows
every sample. The mp4 container is opened once and each frame is encoded and muxed as
soon as it arrives (x264 ``zerolatency``: no lookahead, no B-frames, so nothing waits
in the encoder); :meth:`Mp4Writer.close` flushes the encoder and writes the index, and
is safe to call from a ``finally`` after an interrupt. A missing output folder is created
when the first frame is written.

Shapes: ``B`` batch · ``C`` channels · ``H, W`` pixels.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from einops import rearrange
from PIL import Image
from torch import Tensor

from scd_msc.data.video import import_pyav, to_channels
from scd_msc.paths import check_writable_folder

OUT_EXTENSIONS = (".mp4", ".gif")


def check_output_path(path: str, arg: str = "--out", extensions: tuple[str, ...] = OUT_EXTENSIONS) -> Path:
    """A ValueError naming ``arg`` unless ``path`` has an accepted extension, is not a
    folder or a read-only file, and its folder exists or can be created. Nothing is
    created here: the writers create the folder when they write the first frame."""
    out = Path(path)
    if out.suffix.lower() not in extensions:
        raise ValueError(f"{arg}={path!r}: expected a file name ending in {' or '.join(extensions)}")
    if out.is_dir():
        raise ValueError(f"{arg}={path!r}: expected a file, it is a folder")
    if out.exists() and not os.access(out, os.W_OK):
        raise ValueError(f"{arg}={path!r}: the file exists and is not writable")
    check_writable_folder(out.parent, arg, path)
    return out


def to_uint8(frames: Tensor) -> np.ndarray:
    """``(B, C, H, W)`` in [-1, 1] -> uint8 ``(H, B·W, C)``, the batch tiled side by side."""
    x = frames.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to("cpu")
    return rearrange(x.byte().numpy(), "b c h w -> h (b w) c")


class FrameSink(Protocol):
    """Anything that takes uint8 images ``(H, W, C)`` one at a time and is closed once."""

    path: Path
    frames: int

    def write(self, image: np.ndarray) -> None: ...

    def close(self) -> None: ...


class Mp4Writer:
    """H.264 (``mpeg4`` where x264 is missing) mp4, muxed frame by frame. Grey frames
    are written as RGB; odd sizes use 4:4:4 chroma (4:2:0 needs even sizes)."""

    def __init__(self, path: str | Path, fps: float = 8.0, crf: int = 18):
        self.path, self.fps, self.crf = Path(path), fps, crf
        self.frames = 0
        self._container: Any = None  # av OutputContainer, opened with the first frame
        self._stream: Any = None  # av VideoStream

    def _open(self, h: int, w: int) -> None:
        av = import_pyav()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), mode="w", format="mp4")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = self._container.add_stream(codec, rate=Fraction(self.fps).limit_denominator(1001))
        stream.width, stream.height = w, h
        even = h % 2 == 0 and w % 2 == 0
        stream.pix_fmt = "yuv420p" if even or codec != "libx264" else "yuv444p"
        if codec == "libx264":
            stream.options = {"crf": str(self.crf), "preset": "veryfast", "tune": "zerolatency"}
        self._stream = stream

    def write(self, image: np.ndarray) -> None:
        """Encode and mux one uint8 image ``(H, W, C)`` now."""
        rgb = np.ascontiguousarray(to_channels(image, 3))
        if self._container is None:
            self._open(*rgb.shape[:2])
        for packet in self._stream.encode(import_pyav().VideoFrame.from_ndarray(rgb, format="rgb24")):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush delayed packets and finish the file (idempotent)."""
        if self._container is None:
            return
        container, self._container = self._container, None
        try:
            for packet in self._stream.encode():  # flush
                container.mux(packet)
        finally:
            container.close()


class GifWriter:
    """An animated GIF written on :meth:`close` (pillow cannot append to a GIF, so the
    uint8 frames are kept in memory: ``H·W·C`` bytes each). Grey frames are exact;
    RGB frames are quantised to a 256-colour palette. Pillow merges a frame identical to
    the previous one into a longer display time."""

    def __init__(self, path: str | Path, fps: float = 8.0):
        self.path, self.fps = Path(path), fps
        self.images: list[np.ndarray] = []
        self._closed = False

    @property
    def frames(self) -> int:
        return len(self.images)

    def write(self, image: np.ndarray) -> None:
        self.images.append(image.copy())

    def close(self) -> None:
        if self._closed or not self.images:
            return
        self._closed = True
        save_gif(self.images, self.path, self.fps)


def save_gif(images: list[np.ndarray], path: str | Path, fps: float = 8.0) -> None:
    """Write uint8 images ``(H, W, C)`` (C = 1 or 3) as a looping GIF."""
    pil = [Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im) for im in images]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pil[0].save(path, save_all=True, append_images=pil[1:], duration=max(1, round(1000 / fps)), loop=0)


def open_sinks(out: str | Path, gif: bool, fps: float) -> list[FrameSink]:
    """``video.mp4`` (+ ``video.gif`` with ``gif``), or only the GIF when ``out`` ends in .gif."""
    out = Path(out)
    if out.suffix.lower() == ".gif":
        return [GifWriter(out, fps)]
    sinks: list[FrameSink] = [Mp4Writer(out, fps)]
    if gif:
        sinks.append(GifWriter(out.with_suffix(".gif"), fps))
    return sinks


def close_all(sinks: list[FrameSink]) -> list[BaseException]:
    """Close every sink even when one fails; the errors are returned, not raised."""
    errors: list[BaseException] = []
    for sink in sinks:
        try:
            sink.close()
        except Exception as err:  # noqa: BLE001 -- keep closing the others
            errors.append(err)
    return errors


def check_output_dir(path: str, arg: str = "--out") -> Path:
    """A ValueError naming ``arg`` unless ``path`` is a folder that exists or can be
    created (its nearest existing ancestor is a writable folder); nothing is created."""
    return check_writable_folder(path, arg)
