"""Streaming generation to files: one frame at a time, written as soon as it is made.

:func:`stream_to_sinks` drives a model's stream session (DESIGN.md section 3: the
session's frame caches keep memory and per-frame time constant however long the video
is) and hands every finished frame to the sinks (:mod:`scd_msc.inference.writers`).
Ctrl-C and SIGTERM stop it between frames: :class:`InterruptGuard` turns both into
``KeyboardInterrupt``, defers them while a frame is being written, and the sinks are
flushed and closed in ``finally``, so the files hold every finished frame.

Shapes: ``B`` batch · ``F`` frames · ``C`` channels · ``H, W`` pixels.
"""

from __future__ import annotations

import signal
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Iterator, Optional

from torch import Tensor
from tqdm import tqdm

from scd_msc.inference.writers import FrameSink, close_all
from scd_msc.media import to_uint8
from scd_msc.streaming import StreamingSession

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class InterruptGuard:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt``, except inside :meth:`critical`,
    where they are held until the block ends (so a frame is never half written).
    Handlers are only installed from the main thread (Python's rule); elsewhere the
    guard does nothing. ``signum`` is the last signal received."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._depth = 0
        self._pending = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "InterruptGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in _SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        self.signum = signum
        if self._depth:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextmanager
    def critical(self, raise_pending: bool = True) -> Iterator[None]:
        """Hold signals inside the block; re-raise one at its end if ``raise_pending``."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._depth == 0 and self._pending:
            self._pending = False
            if raise_pending:
                raise KeyboardInterrupt


@dataclass
class GenerationReport:
    """What :func:`stream_to_sinks` did: frame counts, per-frame latency, files."""

    requested: int
    prompt_frames: int = 0
    ms_per_frame: list[float] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    interrupted: bool = False
    signum: Optional[int] = None
    errors: list[BaseException] = field(default_factory=list)
    setup_seconds: float = 0.0  # compiling and capturing the fast path
    setup_frames: int = 0  # the first frames, which paid for it (out of the steady state)
    fast_path: str = "eager"

    @property
    def steady_ms(self) -> list[float]:
        """Per-frame latency after the frames that compiled or captured anything."""
        return self.ms_per_frame[self.setup_frames:]

    def as_dict(self) -> dict:
        """The report as plain data (``generate --report FILE.json``)."""
        steady = self.steady_ms
        return {"frames": self.frames, "requested": self.requested, "prompt_frames": self.prompt_frames,
                "interrupted": self.interrupted, "fast_path": self.fast_path,
                "setup_seconds": self.setup_seconds, "setup_frames": self.setup_frames,
                "steady_ms_per_frame_median": statistics.median(steady) if steady else None,
                "steady_ms_per_frame_mean": statistics.mean(steady) if steady else None,
                "ms_per_frame": self.ms_per_frame, "paths": [str(p) for p in self.paths]}

    @property
    def frames(self) -> int:
        """Generated frames that were finished and written."""
        return len(self.ms_per_frame)

    @property
    def exit_code(self) -> int:
        """0, 1 when a file could not be closed, or 128 + signal number when interrupted."""
        if self.errors:
            return 1
        return 128 + (self.signum or signal.SIGINT) if self.interrupted else 0

    def summary(self) -> str:
        ms = self.ms_per_frame
        done = f"{self.frames} of {self.requested}" if self.interrupted else f"{self.frames}"
        lines = [("interrupted: " if self.interrupted else "") + f"generated {done} frames"
                 + (f" after {self.prompt_frames} prompt frames" if self.prompt_frames else "")]
        steady = self.steady_ms
        if steady:
            lines.append(f"latency ({self.fast_path}): median {statistics.median(steady):.1f} ms/frame, mean "
                         f"{statistics.mean(steady):.1f} ms/frame over {len(steady)} frames"
                         + (f"; compile and capture took {self.setup_seconds:.1f} s in the first "
                            f"{self.setup_frames} frames, left out" if self.setup_frames else ""))
        elif ms:
            lines.append(f"latency ({self.fast_path}): every frame compiled or captured something "
                         f"({self.setup_seconds:.1f} s); mean {statistics.mean(ms):.1f} ms/frame")
        lines += [f"wrote {p} ({self.prompt_frames + self.frames} frames)" for p in self.paths]
        lines += [f"error closing a file: {err!r}" for err in self.errors]
        return "\n".join(lines)


def stream_to_sinks(session: StreamingSession, frames: int, sinks: list[FrameSink], prompt: Optional[Tensor] = None,
                    progress: bool = True, actions: Optional[Tensor] = None) -> GenerationReport:
    """Write the ``prompt (B, F0, C, H, W)`` frames (when given), then ``frames`` frames
    of ``session`` (``.step(action) -> (B, C, H, W)``, ``.cache_bytes()``) to every sink,
    one at a time; frame ``i`` is made with ``actions[:, i]`` (``actions (B, frames)``, for a
    model conditioned on actions). Never raises ``KeyboardInterrupt``: the report says it
    happened."""
    report = GenerationReport(requested=frames, paths=[s.path for s in sinks])
    bar = tqdm(total=frames, unit="frame", desc="generate", disable=not progress)
    with InterruptGuard() as guard:
        try:
            if prompt is not None:
                with guard.critical():
                    for f in range(prompt.shape[1]):
                        image = to_uint8(prompt[:, f])  # (H, B·W, C)
                        for sink in sinks:
                            sink.write(image)
                        report.prompt_frames += 1
            for i in range(frames):
                start = time.perf_counter()
                frame = session.step() if actions is None else session.step(actions[:, i])
                image = to_uint8(frame)  # .cpu() inside waits for the device
                ms = (time.perf_counter() - start) * 1e3
                with guard.critical():
                    for sink in sinks:
                        sink.write(image)
                    report.ms_per_frame.append(ms)
                cache_mb = session.cache_bytes() / 2**20
                bar.set_postfix(ms_frame=f"{ms:.1f}", cache_MB=f"{cache_mb:.2f}", refresh=False)
                bar.update(1)
        except KeyboardInterrupt:
            report.interrupted, report.signum = True, guard.signum
        finally:
            with guard.critical(raise_pending=False):  # a second Ctrl-C must not cut the flush
                report.errors = close_all(sinks)
                bar.close()
    report.paths = [s.path for s in sinks if s.frames]
    report.setup_seconds = getattr(session, "setup_seconds", 0.0)
    report.setup_frames = min(getattr(session, "setup_frame", 0), report.frames)
    report.fast_path = fast_path_name(session)
    return report


def fast_path_name(session: StreamingSession) -> str:
    """``compiled + CUDA graphs``, ``compiled``, ``CUDA graphs`` or ``eager``."""
    parts = (["compiled"] if getattr(session, "backend", None) is not None else []) + \
        (["CUDA graphs"] if getattr(session, "graphs", False) else [])
    return " + ".join(parts) or "eager"
