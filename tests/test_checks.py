"""scd_msc.checks: one phrasing (``name=value: expected what``), bools and nan refused,
open and closed bounds, and no torch import."""

import math
import subprocess
import sys

import numpy as np
import pytest

from scd_msc import checks


def message(call, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as err:
        call(*args, **kwargs)
    return str(err.value)


@pytest.mark.parametrize("value", [1, 7, np.int64(3)])
def test_positive_int_accepts_integers(value):
    checks.positive_int("steps", value)


@pytest.mark.parametrize("value", [0, -2, 2.0, True, False, "3", None, float("nan")])
def test_positive_int_refuses(value):
    assert message(checks.positive_int, "steps", value) == f"steps={value!r}: expected an integer >= 1"


def test_none_only_when_allowed():
    checks.positive_int("--prompt-frames", None, allow_none=True)
    checks.non_negative_int("seed", None, allow_none=True)
    assert message(checks.positive_int, "data.val_batches", 0, allow_none=True) == \
        "data.val_batches=0: expected an integer >= 1 or None"
    assert message(checks.non_negative_int, "train.seed", -1) == "train.seed=-1: expected an integer >= 0"
    checks.non_negative_int("train.seed", 0)


def test_integer_bounds_odd_and_extra_values():
    checks.integer("window", 5, low=1, high=5, odd=True)
    assert message(checks.integer, "window", 4, low=1, high=5, odd=True) == \
        "window=4: expected an odd integer in [1, 5]"
    assert message(checks.integer, "window", 7, low=1, high=5, odd=True) == \
        "window=7: expected an odd integer in [1, 5]"
    assert message(checks.integer, "n", 9, high=8) == "n=9: expected an integer <= 8"
    assert message(checks.integer, "n", 1.5) == "n=1.5: expected an integer"
    checks.integer("data.channels", "auto", low=1, allow=("auto",))
    assert message(checks.integer, "data.channels", "grey", low=1, allow=("auto",)) == \
        "data.channels='grey': expected an integer >= 1 or auto"


def test_positive_ints():
    checks.positive_ints("--batch", [1, 4])
    for values in ([1, 0], [], [True], (2, 2.5), 3):
        assert message(checks.positive_ints, "--batch", values) == f"--batch={values!r}: expected integers >= 1"


def test_choice_lists_the_choices_in_order():
    checks.choice("runtime.sampler.name", "heun", ("euler", "heun"))
    checks.choice("runtime.sampler.name", "heun", {"euler": 1, "heun": 2})  # a dict: its keys
    assert message(checks.choice, "runtime.sampler.name", "dpm", ("euler", "heun")) == \
        "runtime.sampler.name='dpm': expected one of euler, heun"
    assert message(checks.choice, "channels", 2, (1, 3)) == "channels=2: expected one of 1, 3"
    assert message(checks.choice, "channels", True, (1, 3)) == "channels=True: expected one of 1, 3"  # True == 1
    checks.choice("flag", True, (True, False))


@pytest.mark.parametrize("kwargs, ok, bad, what", [
    (dict(low=0, low_open=True), [1e-9, 3, np.float32(0.5)], [0, -1.0], "a number > 0"),
    (dict(low=0), [0, 0.0, 2], [-1e-9], "a number >= 0"),
    (dict(high=1, high_open=True), [0.999, -5], [1, 1.0], "a number < 1"),
    (dict(high=1), [1.0, -5], [1.5], "a number <= 1"),
    (dict(low=0, high=1, high_open=True), [0, 0.5], [1.0, -0.1], "a number in [0, 1)"),
    (dict(low=0, high=1, low_open=True), [1, 0.5], [0, 1.1], "a number in (0, 1]"),
    (dict(low=0, high=1), [0, 1], [-0.1, 1.1], "a number in [0, 1]"),
    (dict(), [0, -3.5, 10**6], [], "a finite number"),
])
def test_number_bounds(kwargs, ok, bad, what):
    for value in ok:
        checks.number("x", value, **kwargs)
    for value in [*bad, float("nan"), float("inf"), -math.inf, True, "0.5", None]:
        assert message(checks.number, "x", value, **kwargs) == f"x={value!r}: expected {what}"


def test_number_none_only_when_allowed():
    checks.number("fps", None, low=0, low_open=True, allow_none=True)
    assert message(checks.number, "fps", 0.0, low=0, low_open=True, allow_none=True) == \
        "fps=0.0: expected a number > 0 or None"


def test_detail_follows_after_a_semicolon():
    assert message(checks.positive_int, "frames", 0, detail="q (1, 3, 5, 7, 2, 8)") == \
        "frames=0: expected an integer >= 1; q (1, 3, 5, 7, 2, 8)"
    err = checks.error("model.image_size", 30, "a multiple of model.patch=4")
    assert isinstance(err, ValueError) and str(err) == "model.image_size=30: expected a multiple of model.patch=4"


def test_importing_the_checks_does_not_import_torch():
    code = "import sys, scd_msc.checks; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
