"""Fixtures shared by the tests (helpers live in tests/helpers.py)."""

from pathlib import Path

import pytest

from .helpers import shared_dir


@pytest.fixture(scope="session")
def shared() -> Path:
    return shared_dir()
