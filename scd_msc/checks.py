"""Argument checks, all failing in one phrasing: ``{name}={value!r}: expected {what}``.

``name`` is the argument as its user spells it (``--steps`` on a command line,
``train.lr`` in a config, ``steps`` in a Python call), so the message names what they can
change: ``steps=0: expected an integer >= 1``, ``runtime.sampler.name='dpm': expected one
of euler, heun``. Context that helps (the shapes of q, k, v; the token grid) follows after
``; ``. Every check raises ``ValueError``.

``bool`` is neither an integer nor a number here (``steps=True`` is a mistake), and a
number is finite (nan and infinities fail every range). Config dataclasses call these
from ``__post_init__`` with the key's config path (see ``ModelConfig``).

No torch here: the light command-line paths and the game workers import it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Iterable
from typing import Any, Optional


def error(name: str, value: Any, what: str, detail: str = "") -> ValueError:
    """The ``ValueError`` of every check, for the rare condition none of them covers:
    ``raise error("model.image_size", 30, "a multiple of model.patch=4")``."""
    return ValueError(f"{name}={value!r}: expected {what}" + (f"; {detail}" if detail else ""))


def _or(what: str, allow: Iterable[Any]) -> str:
    return " or ".join([what, *(str(a) for a in allow)])


def _range(low: Any, high: Any, low_open: bool = False, high_open: bool = False) -> str:
    """`` >= 1``, `` < 1``, `` in [0, 1)``, or nothing."""
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high}"
    return ""


def is_int(value: Any) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer(name: str, value: Any, *, low: Optional[int] = None, high: Optional[int] = None,
            odd: bool = False, allow: Collection[Any] = (), detail: str = "") -> None:
    """``value`` is an integer in ``[low, high]`` (either bound may be None), odd if
    ``odd``, or one of the extra values in ``allow`` (``None``, ``"auto"``)."""
    if any(value is a or (isinstance(a, str) and value == a) for a in allow):
        return
    if not is_int(value) or (low is not None and value < low) or (high is not None and value > high) \
            or (odd and value % 2 == 0):
        what = ("an odd integer" if odd else "an integer") + _range(low, high)
        raise error(name, value, _or(what, allow), detail)


def positive_int(name: str, value: Any, *, allow_none: bool = False, detail: str = "") -> None:
    """``value`` is an integer >= 1 (or None when ``allow_none``)."""
    integer(name, value, low=1, allow=(None,) if allow_none else (), detail=detail)


def non_negative_int(name: str, value: Any, *, allow_none: bool = False, detail: str = "") -> None:
    """``value`` is an integer >= 0 (or None when ``allow_none``)."""
    integer(name, value, low=0, allow=(None,) if allow_none else (), detail=detail)


def positive_ints(name: str, values: Any, detail: str = "") -> None:
    """``values`` is a non-empty list (or tuple) of integers >= 1: ``--batch=[1, 0]``."""
    if not isinstance(values, (list, tuple)) or not values or not all(is_int(v) and v >= 1 for v in values):
        raise error(name, values, "integers >= 1", detail)


def choice(name: str, value: Any, choices: Iterable[Any], detail: str = "") -> None:
    """``value`` is one of ``choices`` (listed in their order in the message)."""
    choices = tuple(choices)
    refused_bool = isinstance(value, bool) and not any(isinstance(c, bool) for c in choices)  # True == 1
    if refused_bool or value not in choices:
        raise error(name, value, f"one of {', '.join(str(c) for c in choices)}", detail)


def number(name: str, value: Any, *, low: Optional[float] = None, high: Optional[float] = None,
           low_open: bool = False, high_open: bool = False, allow_none: bool = False,
           detail: str = "") -> None:
    """``value`` is a finite real number (int or float, not bool) within the bounds;
    ``low_open``/``high_open`` leave a bound out: ``low=0, low_open=True`` is ``> 0``."""
    if value is None and allow_none:
        return
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        what = ("a number" + _range(low, high, low_open, high_open)) if low is not None or high is not None \
            else "a finite number"
        raise error(name, value, _or(what, (None,) if allow_none else ()), detail)
