"""Benchmark code of ``tools/`` kept out of the installed ``scd_msc`` package: the shared
helpers :mod:`tools.bench.env` (versions, hardware, GPU name), :mod:`tools.bench.timing`
(steady-state timing, peak memory) and :mod:`tools.bench.report` (the ``.md`` / ``.json``
report), and the per-frame latency benchmark :mod:`tools.bench.latency`. Run the tools
from the repository root as modules, e.g. ``python -m tools.bench_latency``."""
