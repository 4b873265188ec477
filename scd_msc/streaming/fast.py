"""The fast path of streaming: ``torch.compile`` of the per-step model calls, shared by
every session of a model.

A session calls a few pure model functions many times with the same shapes: the
decoder call (``S`` times per frame), the encoder commit and the DiT's passes (once the
caches are full, their shapes never change). Each is compiled once per model —
``fullgraph=True``, ``dynamic=False``: the MSC layer compiles whole, NATTEN's kernels
being registered torch ops — and the compiled function is kept on the model instance
(not in its ``state_dict``), so the next session (``eval`` opens one per batch) reuses
it instead of recompiling. Caches are passed as arguments, never captured, so a new
session's caches do not trigger recompiles either. Tensor arguments are made contiguous
first: a compiled call guards on strides, so a strided view (``actions[:, j]``, a clip's
frame) would be one graph and the contiguous copy a CUDA graph captures another, compiled
inside the capture, where Inductor's autotuning cannot run (``cudaErrorStreamCaptureUnsupported``).

:func:`resolve_compile` turns the user's ``compile=`` into a backend: ``None`` (the
default) compiles with inductor on CUDA and runs eagerly elsewhere; ``True`` compiles
with inductor anywhere; ``False`` is eager; a string or callable is a ``torch.compile``
backend (tests count graphs with one).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn

CompileArg = Union[None, bool, str, Callable[..., Any]]
_STORE = "_scd_compiled"  # attribute of the model holding its compiled calls


def resolve_compile(compile: CompileArg, device: torch.device) -> Optional[Union[str, Callable[..., Any]]]:
    """The ``torch.compile`` backend ``compile`` asks for on ``device``, or None (eager)."""
    if compile is None:
        return "inductor" if device.type == "cuda" else None
    if compile is True:
        return "inductor"
    if compile is False:
        return None
    if isinstance(compile, str) or callable(compile):
        return compile
    raise ValueError(f"compile={compile!r}: expected None (auto), True, False or a torch.compile backend")


def compiled(model: nn.Module, name: str, backend: Union[str, Callable[..., Any]]) -> Callable[..., Any]:
    """``model.<name>`` compiled with ``backend`` (``fullgraph=True``, static shapes),
    made once per model, name and backend; its tensor arguments are made contiguous."""
    store = model.__dict__.setdefault(_STORE, {})
    key = (name, backend)
    if key not in store:
        store[key] = contiguous_args(torch.compile(getattr(model, name), backend=backend, fullgraph=True,
                                                   dynamic=False))
    return store[key]


def contiguous_args(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` called with its positional tensor arguments contiguous (the others as they
    are): one memory layout per shape, so one compiled graph."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(*(a.contiguous() if isinstance(a, Tensor) else a for a in args), **kwargs)

    return call
