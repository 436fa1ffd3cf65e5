"""Fixtures shared by the tests (helpers live in tests/helpers.py)."""

from pathlib import Path

import pytest

from .helpers import shared_dir


@pytest.fixture(scope="session")
def shared() -> Path:
    return shared_dir()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: on a machine without it they are skipped (CI and the README's
    command also deselect them with ``-m "not gpu"``)."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
