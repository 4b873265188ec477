"""``python -m scd_msc``: the same command line as the ``scd-msc`` entry point."""

from scd_msc.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
