"""Shared helpers of the benchmark tools in ``tools/`` (attention, latency, training,
quality): :mod:`tools.bench.env` (versions, hardware, GPU name), :mod:`tools.bench.timing`
(steady-state timing, peak memory) and :mod:`tools.bench.report` (the ``.md`` / ``.json``
report). Not part of the installed ``scd_msc`` package: run the tools from the repository
root as modules, e.g. ``python -m tools.bench_latency``."""
