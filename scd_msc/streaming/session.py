"""Streaming sessions: one frame per :meth:`Session.step`, with frame-level caching.

A session owns everything that evolves over a stream (STYLE.md §12): the caches, the
committed history, the frame counter and the CUDA graphs. The model it drives is a set
of pure calls (encode with a cache, decode one frame, one velocity pass that reads or
writes a cache); the :class:`~scd_msc.diffusion.Sampler` it is handed makes every
random draw and integrates the ODE. Per frame: :meth:`Session.denoise` runs the ``S``
denoising steps (caches are only read), then :meth:`Session.commit` appends the
finished frame (caches are written).

``cache=True`` keeps per-layer frame caches, so each new frame costs the same however
long the video is; ``cache=False`` recomputes the whole history every frame (the slow
reference the cache is tested against). ``context_noise = t_c > 0`` commits every
context frame (prompt frames too) noised to level ``t_c`` and tells the model that
level, as context-noise training does (``flow.context_noise_max``).

Conditions (DESIGN.md §7, :mod:`scd_msc.conditions`): ``step(action)`` takes the ids
``(B,)`` of the action that leads to the frame being made; the prompt's frames come with
``prompt_actions (B, F0)``; ``labels (B,)`` condition the whole session.
``cond_guidance = s != 1`` is classifier-free guidance on the conditions,
``v = v_null + s·(v_cond − v_null)``: the conditioned and the null rows run in one
batched call of ``2B``. Guidance varies only the conditions of the frame being made:
the committed history keeps its real actions and labels (what a cache of committed
frames can offer; the recompute path does the same). It composes with guidance by
context perturbation (SCD's ``guidance``), which perturbs the context of both rows.

The fast path is the default on CUDA (``compile=None``): the per-step model calls are
compiled once per model (:mod:`scd_msc.streaming.fast`) and replayed from CUDA graphs.
The denoising call is captured as soon as its shapes are fixed; the commit call, which
writes the caches, once every cache window is full (its buffers are then written in
place and never move) and after one commit at those shapes has run (and compiled)
outside the graph. ``compile=False`` is eager (no compile, no graphs);
:meth:`Session.use_cuda_graphs` replays graphs of the eager calls. The time spent
compiling and capturing is :attr:`Session.setup_seconds` (excluded from steady-state
figures: frames up to :attr:`Session.setup_frame` paid for it).

Shapes: ``B`` batch · ``F`` frames · ``C`` channels · ``H, W`` pixels.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator, Optional, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from scd_msc.checks import error, number, positive_int
from scd_msc.conditions import check_conditions, check_ids
from scd_msc.diffusion import FlowConfig, Sampler, training_loss
from scd_msc.streaming.cache import StackCache
from scd_msc.streaming.fast import CompileArg, compiled, resolve_compile
from scd_msc.streaming.graphs import GraphedCall


@runtime_checkable
class StreamingSession(Protocol):
    """What the CLI, evaluation and benchmarks use of a session."""

    batch_size: int
    steps: int
    frames_done: int

    def step(self, action: Optional[Tensor] = None) -> Tensor: ...

    def denoise(self, action: Optional[Tensor] = None) -> Tensor: ...

    def commit(self, frame: Tensor, action: Optional[Tensor] = None) -> None: ...

    def cache_bytes(self) -> int: ...

    def use_cuda_graphs(self) -> "StreamingSession": ...


def check_generation_args(model: nn.Module, batch_size: int, steps: int,
                          prompt: Optional[Tensor], num_frames: int = 1,
                          context_noise: float = 0.0, prompt_actions: Optional[Tensor] = None,
                          labels: Optional[Tensor] = None, cond_guidance: float = 1.0,
                          actions: Optional[Tensor] = None, check_actions: bool = False) -> None:
    """ValueErrors naming the argument, the value and what was expected (``actions``
    ``(B, num_frames)`` are checked when ``check_actions``: ``generate`` has them all)."""
    cfg = model.cfg
    for name, value in (("batch_size", batch_size), ("steps", steps), ("num_frames", num_frames)):
        positive_int(name, value)
    number("context_noise", context_noise, low=0, high=1, high_open=True)
    if prompt is not None:
        expect = (batch_size, cfg.channels, cfg.image_size, cfg.image_size)
        if prompt.dim() != 5 or prompt.shape[0] != batch_size or tuple(prompt.shape[2:]) != expect[1:]:
            raise ValueError(f"prompt must be (B, F, C, H, W) = ({batch_size}, F, {cfg.channels}, "
                             f"{cfg.image_size}, {cfg.image_size}), got {tuple(prompt.shape)}")
    if prompt is None and prompt_actions is not None:
        raise ValueError("prompt_actions: given without a prompt; expected None")
    if prompt is not None:
        check_ids("prompt_actions", prompt_actions, cfg.actions, "actions", (batch_size, prompt.shape[1]))
    check_ids("labels", labels, cfg.classes, "classes", (batch_size,))
    if check_actions:
        check_ids("actions", actions, cfg.actions, "actions", (batch_size, num_frames))
    number("cond_guidance", cond_guidance)
    if cond_guidance != 1.0 and not (cfg.actions or cfg.classes):
        raise error("cond_guidance", cond_guidance, "1.0", "this model has no actions or classes to guide on")


class Session:
    """The frame loop shared by every model family. Subclasses supply the model's part:

    * :meth:`denoise` — the sampler over the model's velocity call (read-only);
    * :meth:`write` — append committed frames ``(B, F, C, H, W)`` at levels ``(B, F)``
      with the actions ``(B, F)`` that led to them (eager; with or without a cache),
      returning what the session keeps (or None);
    * :meth:`write_one` — the same for one frame ``(B, C, H, W)`` (and its action ``(B,)``
      when the model has actions) through full caches, as a function of tensors only
      (what a CUDA graph captures);
    * :meth:`written` — take what the write returned;
    * :attr:`cache` — the :class:`StackCache` written by commits (None without caching).
    """

    cache: Optional[StackCache] = None

    def __init__(self, model: nn.Module, batch_size: int, steps: int, sampler: Sampler,
                 generator: Optional[torch.Generator], context_noise: float = 0.0,
                 labels: Optional[Tensor] = None, cond_guidance: float = 1.0, compile: CompileArg = None):
        self.model, self.batch_size, self.steps = model, batch_size, steps
        self.sampler, self.generator = sampler, generator
        self.context_noise = float(context_noise)
        self.cond_guidance = float(cond_guidance)
        self.frames_done = 0
        self._graphed: dict[str, GraphedCall] = {}
        self._calls: dict[str, int] = {}  # calls of each stateful call at its fixed shapes
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.backend = resolve_compile(compile, self.device)  # torch.compile backend, None: eager
        self.graphs = self.backend is not None and self.device.type == "cuda"
        self.setup_seconds = 0.0  # compiling and capturing, this session
        self.setup_frame = 0  # frames up to this one paid for setup
        self._first_calls: set[str] = set()
        cfg = model.cfg
        self.frame_shape = (batch_size, cfg.channels, cfg.image_size, cfg.image_size)
        # the level committed frames are given: (B, 1), fixed for the session (graph-safe)
        self.t_commit = torch.full((batch_size, 1), self.context_noise, device=self.device, dtype=self.dtype)
        # conditions: the clip labels (B,) and the null ids guidance compares against, fixed for the session
        self.labels = None if labels is None else labels.to(self.device)
        self.null_action = torch.full((batch_size,), cfg.actions, dtype=torch.long, device=self.device)
        self.null_labels = torch.full((batch_size,), cfg.classes, dtype=torch.long, device=self.device)

    # ------------------------------------------------------------------ the model's part

    def denoise(self, action: Optional[Tensor] = None) -> Tensor:
        """Run the S denoising steps of the next frame, made with ``action`` ``(B,)`` (the
        caches are only read)."""
        raise NotImplementedError

    def write(self, frames: Tensor, t: Tensor, actions: Optional[Tensor]) -> Optional[Tensor]:
        raise NotImplementedError

    def write_one(self, frame: Tensor, *action: Tensor) -> Tensor:
        raise NotImplementedError

    def written(self, out: Optional[Tensor]) -> None:
        """Keep what a write returned (SCD: the next frame's context)."""

    # ------------------------------------------------------------------ conditions

    def ids(self, action: Optional[Tensor], labels: Optional[Tensor]) -> tuple[Tensor, ...]:
        """The condition ids the model takes, as positional tensors (what a CUDA graph
        can capture): ``(action, labels)`` without the ones it does not have."""
        cfg = self.model.cfg
        return tuple(ids for ids, size in ((action, cfg.actions), (labels, cfg.classes)) if size)

    def unpack(self, ids: tuple[Tensor, ...]) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """Inverse of :meth:`ids`: ``(action or None, labels or None)``."""
        cfg, rest = self.model.cfg, list(ids)
        action = rest.pop(0) if cfg.actions else None
        return action, rest.pop(0) if cfg.classes else None

    def call_ids(self, action: Optional[Tensor]) -> tuple[Tensor, ...]:
        """The ids of the model call that makes the frame (:meth:`ids`): with
        ``cond_guidance != 1``, the conditioned rows then the null rows (``2B``)."""
        ids = self.ids(action, self.labels)
        if self.cond_guidance == 1.0:
            return ids
        return tuple(torch.cat([i, n]) for i, n in zip(ids, self.ids(self.null_action, self.null_labels)))

    def guided(self, call: Callable[..., Tensor], action: Optional[Tensor]) -> Callable[..., Tensor]:
        """``call(x, t, *args, *ids) -> v`` as ``(x, t, *args) -> v`` for the frame made with
        ``action``: with ``cond_guidance = s != 1``, the conditioned and null rows go
        through ``call`` in one batched call and ``v = v_null + s·(v_cond − v_null)``."""
        s, both = self.cond_guidance, self.call_ids(action)
        if s == 1.0:
            return lambda x, t, *args: call(x, t, *args, *both)

        def velocity(x: Tensor, t: Tensor, *args: Tensor) -> Tensor:
            v_cond, v_null = call(*(torch.cat([a, a]) for a in (x, t, *args)), *both).chunk(2)  # 2 × (B, ...)
            return v_null + s * (v_cond - v_null)

        return velocity

    # ------------------------------------------------------------------ the frame loop

    def prior(self) -> Tensor:
        """The noise the next frame starts from, ``(B, C, H, W)``."""
        return self.sampler.prior(self.frame_shape, self.generator, self.device, self.dtype)

    def noised(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """Context frames ``(B, F, C, H, W)`` as committed: noised to ``context_noise``,
        with their levels ``(B, F)``. At 0 returns ``frames`` itself and draws nothing."""
        t = self.t_commit.expand(-1, frames.shape[1])  # (B, F)
        return self.sampler.noise_to(frames, self.context_noise, self.generator), t

    @torch.no_grad()
    def begin(self, prompt: Optional[Tensor], prompt_actions: Optional[Tensor] = None) -> None:
        """Commit the prompt frames ``(B, F0, C, H, W)`` (clean; noised here), if any, with
        the actions ``(B, F0)`` that led to them."""
        if prompt is not None:
            frames, t = self.noised(prompt.to(self.device, self.dtype))
            actions = None if prompt_actions is None else prompt_actions.to(self.device)
            self.written(self.write(frames, t, actions))

    @torch.no_grad()
    def commit(self, frame: Tensor, action: Optional[Tensor] = None) -> None:
        """Append a finished frame ``(B, C, H, W)`` made with ``action`` ``(B,)``: noised to
        ``context_noise``, then written once through the model (replayed from a CUDA
        graph when it may be)."""
        frames, t = self.noised(frame[:, None])  # (B, 1, C, H, W), (B, 1)
        write = self._write_call()
        if write is not None:
            self.written(write(frames[:, 0], *(() if action is None else (action,))))
        else:
            self.written(self.write(frames, t, None if action is None else action[:, None]))
        self.frames_done += 1

    @torch.no_grad()
    def step(self, action: Optional[Tensor] = None) -> Tensor:
        """The next frame ``(B, C, H, W)``, made with ``action`` ``(B,)`` (the ids of the
        action that leads to it; required when the model has actions): :meth:`denoise`,
        then :meth:`commit`."""
        check_ids("action", action, self.model.cfg.actions, "actions", (self.batch_size,))
        action = None if action is None else action.to(self.device)
        frame = self.denoise(action)
        self.commit(frame, action)
        return frame

    def __iter__(self) -> Iterator[Tensor]:
        while True:
            yield self.step()

    def cache_bytes(self) -> int:
        """Bytes held by the frame caches (0 without a cache)."""
        return 0 if self.cache is None else self.cache.nbytes()

    # ------------------------------------------------------------------ the fast path

    def fn(self, name: str) -> Callable[..., Tensor]:
        """The model's call ``name`` (``decode``, ``encode``, ``forward``): compiled on the
        fast path (once per model), else the plain method. For fixed shapes only."""
        if self.backend is None:
            return getattr(self.model, name)
        return self._timed(name, compiled(self.model, name, self.backend))

    def _timed(self, key: str, fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """``fn``, whose first call in this session (compile, capture) counts as setup."""
        if key in self._first_calls:
            return fn

        def first(*args: Tensor) -> Tensor:
            start = time.perf_counter()
            out = fn(*args)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.setup_seconds += time.perf_counter() - start
            self.setup_frame = self.frames_done + 1
            self._first_calls.add(key)
            return out

        return first

    def use_cuda_graphs(self) -> "Session":
        """Replay the denoising call, and once the caches are full the commit call, from
        CUDA graphs (same numbers, far fewer launches). CUDA only."""
        if self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA model, this one is on {self.device}")
        self.graphs = True
        return self

    def graphed(self, name: str, fn: Callable[..., Tensor], ready: bool = True) -> Callable[..., Tensor]:
        """``fn`` (a read-only call of tensors) replayed from a CUDA graph when graphs are
        on and ``ready`` (its shapes and the memory it reads are fixed), else ``fn``."""
        if not (self.graphs and ready):
            return fn
        if name not in self._graphed:
            self._graphed[name] = GraphedCall(fn)
        return self._timed(f"graph:{name}", self._graphed[name])

    def _write_call(self) -> Optional[Callable[..., Tensor]]:
        """:meth:`write_one` once every cache window is full (shapes fixed; see
        :meth:`stateful`); None while the caches grow."""
        if self.cache is None or not self.cache.full():
            return None
        return self.stateful("write", self.write_one, eager_calls=1)

    def stateful(self, name: str, fn: Callable[..., Tensor], eager_calls: int) -> Callable[..., Tensor]:
        """``fn``, a call that writes state in place at fixed shapes, replayed from a CUDA
        graph once it ran (and compiled) ``eager_calls`` times outside the graph: capture
        records without executing, so the replay that follows performs the call once."""
        count = self._calls[name] = self._calls.get(name, 0) + 1
        if not self.graphs or count <= eager_calls:
            return fn
        if name not in self._graphed:
            self._graphed[name] = GraphedCall(fn, warmup=0)
        return self._timed(f"graph:{name}", self._graphed[name])


class Generates:
    """Mixin: the public calls both families share. ``training_loss`` (the family's
    objective, :attr:`objective`), ``stream`` (argument checks, then the family's
    ``open_session``) and ``generate`` on top of it."""

    def training_loss(self, video: Tensor, generator: Optional[torch.Generator] = None,
                      flow: Optional[FlowConfig] = None, actions: Optional[Tensor] = None,
                      labels: Optional[Tensor] = None) -> dict[str, Tensor]:
        """Convenience: :func:`scd_msc.diffusion.training_loss` (SCD or diffusion forcing)."""
        check_conditions(self.cfg, actions, labels, video.shape[0], video.shape[1])
        return training_loss(self, video, flow, generator, actions, labels)

    def stream(self, batch_size: int, steps: int, prompt: Optional[Tensor] = None,
               generator: Optional[torch.Generator] = None, cache: bool = True,
               guidance: float = 1.0, context_noise: float = 0.0,
               sampler: Optional[Sampler] = None, prompt_actions: Optional[Tensor] = None,
               labels: Optional[Tensor] = None, cond_guidance: float = 1.0,
               compile: CompileArg = None) -> "Session":
        """A session that makes one frame per ``step(action)`` after the optional ``prompt``
        (``prompt_actions`` ``(B, F0)``: the actions that led to its frames); ``labels``
        ``(B,)`` condition every frame. ``guidance``: CFG by perturbing the context (SCD
        only); ``cond_guidance``: CFG on the actions and labels. ``compile``: the fast path
        (None: compiled and graph-replayed on CUDA, eager elsewhere; False: eager; see
        :mod:`scd_msc.streaming.fast`)."""
        check_generation_args(self, batch_size, steps, prompt, context_noise=context_noise,
                              prompt_actions=prompt_actions, labels=labels, cond_guidance=cond_guidance)
        return self.open_session(batch_size, steps, sampler or Sampler(), generator, cache, guidance, prompt,
                                 context_noise, prompt_actions, labels, cond_guidance, compile)

    def generate(self, batch_size: int, num_frames: int, steps: int,
                 generator: Optional[torch.Generator] = None, prompt: Optional[Tensor] = None,
                 cache: bool = True, guidance: float = 1.0,
                 callback: Optional[Callable[[int, Tensor], None]] = None,
                 context_noise: float = 0.0, sampler: Optional[Sampler] = None,
                 actions: Optional[Tensor] = None, labels: Optional[Tensor] = None,
                 prompt_actions: Optional[Tensor] = None, cond_guidance: float = 1.0,
                 compile: CompileArg = None) -> Tensor:
        """``num_frames`` new frames ``(B, num_frames, C, H, W)`` after the optional
        ``prompt (B, F0, C, H, W)``; ``actions (B, num_frames)``: ``actions[:, i]`` leads to
        new frame ``i``; ``labels (B,)``; ``callback(i, frame)`` sees each frame as it is made."""
        check_generation_args(self, batch_size, steps, prompt, num_frames, context_noise, prompt_actions,
                              labels, cond_guidance, actions, check_actions=True)
        session = self.stream(batch_size, steps, prompt=prompt, generator=generator, cache=cache,
                              guidance=guidance, context_noise=context_noise, sampler=sampler,
                              prompt_actions=prompt_actions, labels=labels, cond_guidance=cond_guidance,
                              compile=compile)
        frames = []
        for i in range(num_frames):
            frames.append(session.step(None if actions is None else actions[:, i]))
            if callback is not None:
                callback(i, frames[-1])
        return torch.stack(frames, dim=1)
