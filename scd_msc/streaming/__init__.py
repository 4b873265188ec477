"""Streaming generation: sessions, their frame caches and CUDA-graph replay.

Everything that evolves over a stream lives here (STYLE.md §12): a session
(:class:`Session`; :class:`SCDSession`, :class:`DiTSession`) owns the caches it writes,
the history, the frame counter and the captured graphs; models are pure calls on the
inputs and the cache they are handed. :class:`StreamingSession` is the protocol the
CLI, evaluation and benchmarks take.
"""

from scd_msc.streaming.cache import (
    DenseCache,
    FrameKV,
    LayerCache,
    MSCCache,
    StackCache,
    new_layer_cache,
    new_stack_cache,
)
from scd_msc.streaming.dit import DiTSession
from scd_msc.streaming.graphs import GraphedCall
from scd_msc.streaming.scd import SCDSession
from scd_msc.streaming.session import Generates, Session, StreamingSession, check_generation_args

__all__ = [
    "DenseCache", "DiTSession", "FrameKV", "Generates", "GraphedCall", "LayerCache", "MSCCache",
    "SCDSession", "Session", "StackCache", "StreamingSession", "check_generation_args",
    "new_layer_cache", "new_stack_cache",
]
