"""Output folders every command checks before any work: can a file be created there?

Permission bits do not answer that (root ignores them; read-only mounts, /proc and
/sys refuse writes whatever they say), so the check creates an anonymous temporary file
in the nearest existing folder and removes it at once. Nothing else is created.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def check_writable_folder(path: str | os.PathLike, arg: str, value: str | None = None) -> Path:
    """``Path(path)``, or a one-line ValueError naming ``arg`` and its ``value`` (default
    ``path``; e.g. the file that goes into the folder) unless ``path`` is a folder that
    exists or can be created: its nearest existing ancestor is a folder in which a file
    can be created."""
    out = Path(path)
    shown = str(path) if value is None else value
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise ValueError(f"{arg}={shown!r}: expected a folder, but {str(parent)!r} is a file")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise ValueError(f"{arg}={shown!r}: expected a writable folder, {str(parent)!r} is not "
                         f"writable ({err.strerror or err})") from None
    return out
