"""CUDA-graph replay of streaming steps with static shapes.

The frame-wise decoder sees the same shapes at every denoising step of every frame.
Once every layer's cache window is full, the encoder pass and the DiT's passes do too:
full caches are written in place and frame positions live in a device counter, so a
captured graph keeps reading and advancing the right memory. One replay then replaces
hundreds of kernel launches.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor


class GraphedCall:
    """``fn(*tensors)`` replayed from a CUDA graph captured on the first call (and
    re-captured if the input shapes change). Outputs are cloned out of the graph.

    ``warmup`` calls run before capture; a step that writes state (a cache) must use
    ``warmup=0`` and have run eagerly at the same shapes before: capture records
    without executing, and the replay that follows performs the step once. The capture
    runs on copies of the arguments (a strided view's copy is contiguous); the compiled
    calls make their arguments contiguous (:func:`scd_msc.streaming.fast.contiguous_args`),
    so a strided argument at the eager call does not make the capture compile a new graph.
    """

    def __init__(self, module: Callable[..., Tensor], warmup: int = 2):
        self.module, self.warmup = module, warmup
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.inputs: tuple[Tensor, ...] = ()
        self.output: Optional[Tensor] = None

    def _capture(self, args: tuple[Tensor, ...]) -> None:
        self.inputs = tuple(a.clone() for a in args)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(self.warmup):
                self.module(*self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.output = self.module(*self.inputs)

    def __call__(self, *args: Tensor) -> Tensor:
        shapes = [(a.shape, a.dtype) for a in args]
        if self.graph is None or shapes != [(a.shape, a.dtype) for a in self.inputs]:
            self._capture(args)
        for dst, src in zip(self.inputs, args):
            dst.copy_(src)
        self.graph.replay()
        return self.output.clone()
