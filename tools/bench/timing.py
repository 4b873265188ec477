"""Steady-state timing of benchmark cases: CUDA events on a GPU (``perf_counter`` and a
synchronise on a CPU), median / p90 summaries, and peak memory.

Warm-up (and compile, which :func:`measure` times apart as the first call) is excluded;
times are medians over ``iters`` calls.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from typing import Any, Callable, Sequence

import torch


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], Any], device: str | torch.device) -> float:
    """Wall seconds of one call, synchronised (for first calls: compile, warm-up)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def time_cuda(fn: Callable[[], Any], warmup: int = 3, iters: int = 10,
              device: str | torch.device | None = None) -> dict[str, float]:
    """Steady-state time of ``fn()``: ``warmup`` untimed calls, then ``iters`` calls each
    timed with CUDA events (``perf_counter`` + synchronise on CPU). Returns
    ``median_ms``, ``p90_ms``, ``min_ms``, ``mean_ms`` and ``iters``."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    if on_cuda:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(iters)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        times = [start.elapsed_time(end) for start, end in events]
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return summarize_ms(times)


def summarize_ms(times_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(times_ms)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return {"median_ms": statistics.median(ordered), "p90_ms": p90, "min_ms": ordered[0],
            "mean_ms": statistics.fmean(ordered), "iters": len(ordered)}


def iters_for_budget(estimate_ms: float, budget_ms: float, lo: int = 3, hi: int = 100) -> int:
    """How many timed calls fit in ``budget_ms`` given one call takes ``estimate_ms``."""
    if estimate_ms <= 0:
        return hi
    return int(max(lo, min(hi, budget_ms // estimate_ms)))


def reset_peak_memory(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: str | torch.device) -> float | None:
    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def measure(build: Callable[[], Callable[[], Any]], device: str | torch.device, *,
            budget_ms: float = 1000.0, warmup: int = 3, min_iters: int = 3,
            max_iters: int = 100,
            skip_errors: tuple[type[BaseException], ...] = ()) -> dict[str, Any]:
    """Build one case (``build() -> fn``) and time ``fn()``, never raising.

    The first call (compile, caches, lazy set-up) is timed alone as ``first_call_s``; a
    second call estimates the cost, which sets ``iters`` (about ``budget_ms`` of timed
    calls, within ``[min_iters, max_iters]``) and the warm-up (at most ``warmup`` calls,
    about a quarter of the budget). Returns ``status`` ("ok", "skipped" for
    ``skip_errors``, "oom", "error"), ``error``, ``first_call_s``, ``median_ms``,
    ``p90_ms``, ``iters`` and ``peak_gib`` (CUDA). Frees the case's memory afterwards.
    """
    out: dict[str, Any] = {"status": "ok", "error": None, "first_call_s": None,
                           "median_ms": None, "p90_ms": None, "iters": None, "peak_gib": None}
    fn = None
    try:
        reset_peak_memory(device)
        fn = build()
        out["first_call_s"] = time_once(fn, device)
        estimate_ms = time_once(fn, device) * 1e3
        iters = iters_for_budget(estimate_ms, budget_ms, min_iters, max_iters)
        n_warm = iters_for_budget(estimate_ms, budget_ms / 4, 0, warmup)
        t = time_cuda(fn, warmup=n_warm, iters=iters, device=device)
        out.update(median_ms=t["median_ms"], p90_ms=t["p90_ms"], iters=t["iters"],
                   peak_gib=peak_memory_gib(device))
    except skip_errors as e:
        out.update(status="skipped", error=str(e))
    except torch.OutOfMemoryError as e:
        out.update(status="oom", error=str(e).splitlines()[0][:300])
    except Exception as e:  # one failing case must not end the run
        out.update(status="error", error=f"{type(e).__name__}: {e}"[:300])
    finally:
        del fn
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return out
