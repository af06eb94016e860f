"""CIFAR-10's pickled batches are read only from a data root the user says they trust (issue 17,
item 6): torchvision unpickles them, so a planted batch file would run code."""

import pickle

import numpy as np
import pytest
from click.testing import CliRunner

from hgdefend import load_data
from hgdefend.cli.main import cli
from hgdefend.errors import HgdefendError


class _Payload:
    """Unpickling this creates a marker file: proof that code from the data root ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _cifar_root(tmp_path, payload=None):
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": list(range(4))}
        with open(folder / name, "wb") as f:
            pickle.dump(payload if (payload is not None and name == "data_batch_1") else batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    return tmp_path / "cifar"


@pytest.fixture
def no_md5(monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # our files aren't the real ones
    monkeypatch.delenv("HGDEFEND_TRUST_DATA_ROOT", raising=False)


def test_cifar10_pickled_batch_is_not_unpickled_without_trust_data_root(tmp_path, no_md5):
    marker = tmp_path / "pwned"
    root = _cifar_root(tmp_path, _Payload(marker))
    with pytest.raises(HgdefendError, match="Python pickles.*--trust-data-root"):
        load_data("cifar10", root=root)
    for command in (["train", "--out", str(tmp_path / "t")], ["evaluate", "--out", str(tmp_path / "e")]):
        res = CliRunner().invoke(cli, [*command, "--dataset", "cifar10", "--data-root", str(root), "-q"])
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
        assert "--trust-data-root" in res.output and "SECURITY.md" in res.output
    assert not marker.exists()


def test_cifar10_is_read_with_trust_data_root_flag_or_variable(tmp_path, no_md5, monkeypatch):
    root = _cifar_root(tmp_path)
    assert load_data("cifar10", root=root, trust_data_root=True).input_shape == (3, 32, 32)
    monkeypatch.setenv("HGDEFEND_TRUST_DATA_ROOT", "1")
    assert len(load_data("cifar10", root=root).train) == 20
    with pytest.raises(HgdefendError, match="trust-data-root"):  # an explicit False wins over the variable
        load_data("cifar10", root=root, trust_data_root=False)
