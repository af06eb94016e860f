"""Generated CIFAR-10 in torchvision's on-disk layout, for testing the ``--dataset cifar10`` path
end to end where the real data cannot be obtained (issue 13, item 6).

* :func:`write_fake_cifar10` writes ``ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``
  as torchvision's ``CIFAR10`` reads them: pickled dicts with ``data`` (uint8 ``[n, 3072]``, the
  channel-major 3×32×32 layout) and ``labels``. Each class has its own mean colour, so a few
  training steps learn something; every class occurs in every batch.
* torchvision checks each batch file's MD5 against the real CIFAR-10's: generated files never pass.
  In-process tests use the ``fake_cifar10`` fixture (import ``fake_cifar10_fixture``), which patches
  that check to "the file exists" with ``monkeypatch``; subprocesses (a benchmark script, the
  ``hgdefend`` CLI) are run with :func:`run_with_fake_cifar`, which applies the same patch in the
  child before running it. Nothing else is patched: the pickles are read, reshaped and converted
  by the production code.
* CIFAR-10's batches are Python pickles, read only with ``--trust-data-root`` (or
  ``trust_data_root=True``); the helpers do not set ``HGDEFEND_TRUST_DATA_ROOT``, so callers pass the
  flag as a user would.

Reuse from another test module::

    from tests.cifar_fixture import fake_cifar10_fixture, run_with_fake_cifar  # noqa: F401 (the fixture)

    def test_my_script_on_cifar(fake_cifar10, tmp_path):
        out = run_with_fake_cifar(["benchmarks/my_script.py", "--dataset", "cifar10",
                                   "--data-root", str(fake_cifar10), "--trust-data-root", "--quick"])
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BATCH_FOLDER = "cifar-10-batches-py"
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]

_PATCH = (
    "import os, torchvision.datasets.cifar as _c; "
    "_c.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)"
)
_BOOTSTRAP = f"""{_PATCH}
import runpy, sys
target = sys.argv[1]
sys.argv = sys.argv[1:]
if target == "-m":
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
    runpy.run_path(target, run_name="__main__")
"""


def fake_cifar10_arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` generated images (uint8 ``[n, 3, 32, 32]``) and labels cycling over the 10 classes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    colours = np.random.default_rng(1234).uniform(40, 215, size=(10, 3, 1, 1))
    noise = rng.normal(0, 30, size=(n, 3, 32, 32))
    images = np.clip(colours[labels] + noise, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def write_fake_cifar10(root: str | os.PathLike, *, per_batch: int = 40, n_test: int = 100,
                       seed: int = 0) -> Path:  # fmt: skip
    """Write a generated CIFAR-10 under ``root`` (5 × ``per_batch`` training images, ``n_test``
    test images, all 3×32×32) in torchvision's layout; return ``root``."""
    if per_batch < 10 or n_test < 20:
        raise ValueError(f"per_batch/n_test: need >= 10 / 20 images, got {per_batch} / {n_test}")
    folder = Path(root) / BATCH_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate([*TRAIN_BATCHES, "test_batch"]):
        x, y = fake_cifar10_arrays(n_test if name == "test_batch" else per_batch, seed=seed + i)
        batch = {"batch_label": name, "data": x.reshape(len(x), 3072), "labels": y.tolist(),
                 "filenames": [f"{name}_{j}.png" for j in range(len(x))]}  # fmt: skip
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": LABEL_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return Path(root)


@pytest.fixture(name="fake_cifar10")
def fake_cifar10_fixture(tmp_path, monkeypatch) -> Path:
    """A generated CIFAR-10 data root (200 training and 100 test images, 3×32×32) that this process's
    torchvision accepts (its MD5 check patched to "the file exists"); pass it as ``--data-root``
    with ``--trust-data-root``. Subprocesses: :func:`run_with_fake_cifar`."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    monkeypatch.delenv("HGDEFEND_TRUST_DATA_ROOT", raising=False)
    return write_fake_cifar10(tmp_path / "cifar10-generated")


def run_with_fake_cifar(args: list[str], *, timeout: float = 300, check: bool = True,
                        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:  # fmt: skip
    """Run ``python SCRIPT ARGS...`` (or ``["-m", "MODULE", ...]``) in a subprocess from the
    repository root, with torchvision's CIFAR-10 MD5 check patched as in :func:`fake_cifar10`.

    ``HGDEFEND_TRUST_DATA_ROOT`` is removed from the child's environment (pass ``--trust-data-root``).
    Returns the completed process (text output); raises on a non-zero exit when ``check``,
    with the child's stderr in the message."""
    child_env = {k: v for k, v in os.environ.items() if k != "HGDEFEND_TRUST_DATA_ROOT"}
    child_env.update(env or {})
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), child_env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", _BOOTSTRAP, *args], cwd=REPO, env=child_env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[:3]} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc
