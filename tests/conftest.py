"""Session settings. The suite runs on pytest-xdist's workers (``-n auto`` in
pyproject.toml; ``-n 0`` runs it in one process): each worker gives torch one thread, so
that the workers do not fight over the cores, and the longest test starts first, so that
the others run beside it instead of after it."""

from __future__ import annotations

import os

import pytest
import torch

LONGEST_FIRST = ("test_readme_commands_run_as_written",)  # ~5 min on a 2-core CPU, half the suite


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.name not in LONGEST_FIRST)  # stable: the rest keep their order
