"""Per-frame latency benchmark (same as ``scd-msc bench``); see scd_msc/bench/latency.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's scd_msc

from scd_msc.bench.latency import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
