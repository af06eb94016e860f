"""Shared fixtures: one small HyperGAN trained on digits per test session (seconds on a CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hgdefend import load_data
from hgdefend.recipes import train_model

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _threads():
    """2 threads (the CI machine's cores); HGDEFEND_TEST_THREADS=1 leaves a core to a long job."""
    torch.set_num_threads(int(os.environ.get("HGDEFEND_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def digits():
    return load_data("digits")


@pytest.fixture(scope="session")
def trained_digits(digits):
    """The default digits recipe, as `hgdefend train` and `hgdefend evaluate` train it."""
    return train_model(digits, seed=0, device="cpu", progress=False).hypergan


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip("../shared/data/MNIST is not beside this checkout")
    return SHARED_DATA
