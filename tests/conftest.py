"""Shared test setup. Fixture modules live in tests/fixtures/ and are loaded as plugins, so that
each part of the product keeps its fixtures in its own file."""

from __future__ import annotations

import os
import pkgutil
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

_FIXTURES = Path(__file__).parent / "fixtures"
pytest_plugins = [f"tests.fixtures.{m.name}" for m in pkgutil.iter_modules([str(_FIXTURES)])]


import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _offline_ultralytics() -> None:
    """Every test process runs Ultralytics the way the product does: offline, fonts bundled, PIL unpatched."""
    from hazardlens.models.ultralytics_env import prepare_ultralytics

    prepare_ultralytics()
