"""Per-frame latency of SCD-MSC vs SCD-dense vs the causal DiT, and training throughput:
``python -m tools.bench_latency --help`` from the repository root (the code and its
options: ``tools/bench/latency.py``)."""

import sys

from tools.bench.latency import main

if __name__ == "__main__":
    sys.exit(main())
