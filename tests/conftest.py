"""Shared fixtures: one small HyperGAN trained on digits per test session (seconds on a CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hgdefend import load_data
from hgdefend.recipes import train_model

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


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


@pytest.fixture(scope="session")
def digits_deep4(digits):
    """A briefly trained 4-member deep ensemble of the digits target: what the attack tests break."""
    from hgdefend.recipes import default_spec
    from hgdefend.training import TrainConfig, deep_ensemble

    cfg = TrainConfig(steps=150, batch_size=64, seed=0)
    return deep_ensemble(default_spec(digits), digits.train, 4, cfg, device="cpu", progress=False)


def run_benchmark(script: str, *args: str) -> str:
    """Run ``benchmarks/SCRIPT`` with ``args`` in a subprocess (as a user would); its stdout."""
    cmd = [sys.executable, str(BENCHMARKS / script), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        # a failing benchmark's own message is the diagnosis: put it in the report (CI keeps no other)
        err = subprocess.CalledProcessError(out.returncode, cmd, out.stdout, out.stderr)
        if hasattr(err, "add_note"):  # Python >= 3.11
            err.add_note(f"{script} stderr (last 4,000 characters):\n{out.stderr[-4000:]}")
        raise err
    return out.stdout
