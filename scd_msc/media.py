"""Pictures and videos out: frames in [-1, 1] to uint8, GIF, PNG and mp4 writing, and the
check that an output path can be written. One home for what ``scd-msc generate`` (an mp4
muxed frame by frame), ``scd-msc eval`` and the training sample strips (PNG + GIF),
``make-shards`` (mp4 bytes per clip) and the tools write.

Model frames are float tensors in [-1, 1], channels before pixels (``(..., C, H, W)``);
:func:`to_uint8` turns them into uint8 numpy images, channels last (``(H, W, C)``,
``C = 1`` grey or ``3`` RGB), laid out by an einops pattern. GIFs keep grey frames exact
and quantise RGB to a 256-colour palette. mp4 has no grey profile that every decoder
reads, so grey is written as RGB.

mp4: H.264 (libx264) where PyAV can encode it, else ``mpeg4``; 4:2:0 chroma, or 4:4:4
for odd frame sizes (4:2:0 needs even ones; x264 only). :class:`Mp4Writer` encodes and
muxes each frame as it arrives, with x264 ``zerolatency`` (no lookahead, no B-frames:
nothing waits in the encoder); :func:`encode_mp4` encodes a whole clip to bytes with the
same choices but keeps the lookahead (smaller shards).

No torch import here: ``scd_msc.data.video`` takes :func:`to_channels` and
:func:`import_pyav` from this module, and the game-source workers that import it must
not import torch.

Shapes: ``B`` batch · ``F`` frames · ``C`` channels · ``H, W`` pixels.
"""

from __future__ import annotations

import io
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from einops import rearrange
from PIL import Image

from scd_msc.checks import choice, number

if TYPE_CHECKING:
    from torch import Tensor

TILED = "b c h w -> h (b w) c"  # a batch of frames side by side in one image
OUT_EXTENSIONS = (".mp4", ".gif")


# --------------------------------------------------------------------------- frames

def to_uint8(frames: Tensor, layout: str = TILED) -> np.ndarray:
    """Frames in [-1, 1] -> a C-contiguous uint8 array rearranged by the einops
    ``layout``. The default tiles a batch ``(B, C, H, W)`` side by side into one image
    ``(H, B·W, C)``; ``"... c h w -> ... h w c"`` keeps the frames apart."""
    x = frames.detach().float().clamp(-1, 1).add(1).mul(127.5).round().cpu().byte()
    return np.ascontiguousarray(rearrange(x, layout).numpy())


def display_scale(width: int, least: int = 64) -> int:
    """The integer factor (nearest-neighbour enlargement) that shows frames ``width`` pixels
    wide at least ``least`` wide in a strip or GIF; 1 when they already are."""
    return max(1, least // width)


def to_channels(frames: np.ndarray, channels: int) -> np.ndarray:
    """Convert uint8 ``(..., C)`` between grey (C=1) and RGB (C=3); ITU-R 601 luma for RGB->grey."""
    choice("channels", channels, (1, 3))
    have = frames.shape[-1]
    if have == channels:
        return frames
    if have == 1:
        return np.repeat(frames, 3, axis=-1)
    luma = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.rint(luma).clip(0, 255).astype(np.uint8)[..., None]


def _pil(image: np.ndarray) -> Image.Image:
    """uint8 ``(H, W, C)`` (C = 1 or 3) as a PIL image (grey: mode L)."""
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def save_png(image: np.ndarray, path: str | Path | BinaryIO) -> None:
    """Write a uint8 image ``(H, W, C)`` (C = 1 or 3) as a PNG, to a path or a binary file."""
    _pil(image).save(path, format="PNG")


# --------------------------------------------------------------------------- GIF

def save_gif(images: list[np.ndarray], path: str | Path, fps: float = 8.0) -> None:
    """Write uint8 images ``(H, W, C)`` (C = 1 or 3) as a looping GIF. Pillow merges a
    frame identical to the previous one into a longer display time."""
    pil = [_pil(im) for im in images]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pil[0].save(path, save_all=True, append_images=pil[1:], duration=max(1, round(1000 / fps)), loop=0)


class GifWriter:
    """An animated GIF written on :meth:`close` (pillow cannot append to a GIF, so the
    uint8 frames are kept in memory: ``H·W·C`` bytes each)."""

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


# --------------------------------------------------------------------------- mp4

def import_pyav():
    """PyAV, imported on first use: npy shards and the models never need it."""
    try:
        import av
    except ImportError as err:
        raise ImportError("PyAV is needed to read or write video files and mp4 samples: pip install av") from err
    return av


def _available_codec(codec: str) -> str:
    av = import_pyav()
    for name in (codec, "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 -- PyAV raises several types for a missing codec
            continue
    raise RuntimeError(f"codec={codec!r}: neither it nor 'mpeg4' can encode in this PyAV build")


class Mp4Writer:
    """An mp4 (see the module docstring for the codec) muxed frame by frame into a file,
    whose folder is created with the first frame, or into a binary file object.
    ``zerolatency``: x264 emits every frame at once (for streaming; see the module docstring)."""

    def __init__(self, path: str | Path | BinaryIO, fps: float = 8.0, crf: int = 18, *,
                 codec: str = "libx264", zerolatency: bool = True):
        self.path = path if hasattr(path, "write") else Path(path)
        self.fps, self.crf, self.codec, self.zerolatency = fps, crf, codec, zerolatency
        self.frames = 0
        self._container: Any = None  # av OutputContainer, opened with the first frame
        self._stream: Any = None  # av VideoStream

    def _open(self, h: int, w: int) -> None:
        av = import_pyav()
        if isinstance(self.path, Path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path) if isinstance(self.path, Path) else self.path,
                                  mode="w", format="mp4")
        stream = self._container.add_stream(_available_codec(self.codec),
                                            rate=Fraction(self.fps).limit_denominator(1001))
        stream.width, stream.height = w, h
        x264 = stream.codec_context.name == "libx264"
        stream.pix_fmt = "yuv420p" if (h % 2 == 0 and w % 2 == 0) or not x264 else "yuv444p"
        if x264:
            stream.options = {"crf": str(self.crf), "preset": "veryfast",
                              **({"tune": "zerolatency"} if self.zerolatency else {})}
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


def encode_mp4(frames: np.ndarray, fps: float = 8.0, *, codec: str = "libx264", crf: int = 18) -> bytes:
    """Encode uint8 ``(F, H, W, C)`` (C = 1 or 3) to mp4 bytes (H.264 by default, ``mpeg4``
    as fallback; ``crf`` only applies to x264)."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 \
            or frames.shape[-1] not in (1, 3) or frames.shape[0] < 1:
        got = getattr(frames, "dtype", type(frames).__name__), getattr(frames, "shape", None)
        raise ValueError(f"frames (dtype, shape)={got}: expected uint8 (F>=1, H, W, C in {{1, 3}})")
    number("fps", fps, low=0, low_open=True)
    buffer = io.BytesIO()
    writer = Mp4Writer(buffer, fps, crf, codec=codec, zerolatency=False)
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.close()
    return buffer.getvalue()


# --------------------------------------------------------------------------- output paths

def check_writable_folder(path: str | os.PathLike, arg: str, value: str | None = None) -> Path:
    """``Path(path)``, or a one-line ValueError naming ``arg`` and its ``value`` (default
    ``path``; e.g. the file that goes into the folder) unless ``path`` is a folder that
    exists or can be created: its nearest existing ancestor is a folder in which a file
    can be created. Permission bits do not answer that (root ignores them; read-only
    mounts, /proc and /sys refuse writes whatever they say), so an anonymous temporary
    file is created there and removed at once. Nothing else is created."""
    out = Path(path)
    shown = str(path) if value is None else value
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise ValueError(f"{arg}={shown!r}: expected a folder, but {str(parent)!r} is a file")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise ValueError(f"{arg}={shown!r}: expected a writable folder, {str(parent)!r} is not "
                         f"writable ({err.strerror or err})") from None
    return out


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
