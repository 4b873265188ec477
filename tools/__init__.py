"""Benchmarks and reports of scd_msc, run from the repository root as modules
(``python -m tools.bench_attention --quick``), so that this checkout's ``scd_msc`` and
:mod:`tools.bench` import without installing anything or editing ``sys.path``."""
