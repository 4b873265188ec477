"""Frame sinks of ``scd-msc generate``: an mp4 muxed frame by frame and a GIF
(:class:`scd_msc.media.Mp4Writer`, :class:`scd_msc.media.GifWriter`), opened and closed together.

Frames arrive as float tensors ``(B, C, H, W)`` in [-1, 1] and are turned into one uint8
RGB/grey image ``(H, B·W, C)`` by :func:`scd_msc.media.to_uint8`: the batch is tiled side
by side, so one video shows every sample. Each frame is encoded and muxed as soon as it
arrives; closing flushes the encoder and writes the index, and is safe from a
``finally`` after an interrupt. A missing output folder is created when the first frame
is written.

Shapes: ``B`` batch · ``C`` channels · ``H, W`` pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from scd_msc.media import GifWriter, Mp4Writer


class FrameSink(Protocol):
    """Anything that takes uint8 images ``(H, W, C)`` one at a time and is closed once."""

    path: Path
    frames: int

    def write(self, image: np.ndarray) -> None: ...

    def close(self) -> None: ...


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
