"""Inference: ``scd-msc generate`` (streaming to mp4/GIF) and ``scd-msc eval``
(continuation PSNR/SSIM on held-out shards). See ``scd_msc/inference/cli.py``.

Names are imported on first use, so that ``scd-msc`` does not pay for importing
torchmetrics unless it evaluates.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "EvalResult": "evaluate", "evaluate": "evaluate", "frame_metrics": "evaluate",
    "GenerationReport": "generate", "InterruptGuard": "generate", "stream_to_sinks": "generate",
    "GifWriter": "writers", "Mp4Writer": "writers", "open_sinks": "writers", "to_uint8": "writers",
    "write_report": "report",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"scd_msc.inference.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
