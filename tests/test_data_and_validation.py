import numpy as np
import pytest
import torch

from hgdefend import HgdefendError, load_data
from hgdefend.data import parse_classes
from hgdefend.validation import as_inputs, as_labels


def test_digits_splits_are_deterministic_and_disjoint(digits):
    again = load_data("digits")
    assert torch.equal(digits.test.x, again.test.x)
    assert len(digits.train) + len(digits.calib) + len(digits.test) == 1797
    rows = lambda s: {tuple(r) for r in s.x.flatten(1).numpy().round(4).tolist()}  # noqa: E731
    assert not rows(digits.test) & rows(digits.calib)
    assert digits.input_shape == (1, 8, 8) and float(digits.train.x.max()) <= 1.0


def test_held_out_classes(digits):
    d = load_data("digits", in_classes="0-4")
    assert d.num_classes == 5 and d.classes == [0, 1, 2, 3, 4]
    assert int(d.train.y.max()) == 4
    assert d.ood is not None and set(d.ood.y.tolist()) <= {5, 6, 7, 8, 9}
    assert parse_classes("0,2,5-6") == [0, 2, 5, 6]
    with pytest.raises(HgdefendError, match="in_classes"):
        load_data("digits", in_classes="0-9")
    with pytest.raises(HgdefendError, match="in_classes"):
        load_data("digits", in_classes="a-b")


def test_npz_dataset(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "mine.npz"
    np.savez(p, x=rng.integers(0, 256, (50, 8, 8), dtype=np.uint8), y=rng.integers(0, 3, 50))
    d = load_data(str(p))
    assert d.input_shape == (1, 8, 8) and d.num_classes == 3
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((3, 8, 8)))
    with pytest.raises(HgdefendError, match="'x' and 'y'"):
        load_data(str(bad))
    nan = tmp_path / "nan.npz"
    np.savez(nan, x=np.full((3, 8, 8), np.nan, dtype=np.float32), y=np.zeros(3, dtype=int))
    with pytest.raises(HgdefendError, match="NaN"):
        load_data(str(nan))


def test_cifar10_path_through_torchvision_on_generated_files(tmp_path, monkeypatch):
    """CIFAR-10 cannot be downloaded here: write a tiny archive in its on-disk layout instead."""
    import pickle

    root = tmp_path / "cifar"
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            "data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, 4).tolist(),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    import torchvision.datasets.cifar as tv_cifar

    # our generated files have other checksums than the real archive
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    d = load_data("cifar10", root=root, trust_data_root=True)
    assert d.input_shape == (3, 32, 32) and len(d.train) == 20


def test_unknown_dataset_and_missing_root(tmp_path, monkeypatch):
    monkeypatch.delenv("HGDEFEND_DATA_ROOT", raising=False)
    with pytest.raises(HgdefendError, match="unknown dataset"):
        load_data("imagenet")
    with pytest.raises(HgdefendError, match="data_root"):
        load_data("mnist")
    with pytest.raises(HgdefendError, match="not found"):
        load_data("mnist", root=tmp_path)


def test_mnist_from_shared_data(shared_data):
    d = load_data("fashion-mnist", root=shared_data)
    assert d.input_shape == (1, 28, 28) and len(d.train) == 60000 and len(d.test) == 5000


@pytest.mark.parametrize(
    "x, match",
    [
        (np.zeros((2, 1, 8, 8), dtype=np.uint8), "floating-point"),
        (np.zeros((2, 8, 8), dtype=np.float32), r"shape \[B, 1, 8, 8\]"),
        (np.full((2, 1, 8, 8), np.nan, dtype=np.float32), "NaN"),
        (np.full((2, 1, 8, 8), 2.0, dtype=np.float32), r"\[0, 1\]"),
        (np.zeros((0, 1, 8, 8), dtype=np.float32), "empty"),
        ([[0.0]], "numpy array or torch tensor"),
    ],
)
def test_inputs_are_validated(x, match):
    with pytest.raises(HgdefendError, match=match):
        as_inputs(x, (1, 8, 8), name="x")


def test_float64_inputs_are_converted():
    assert as_inputs(np.zeros((2, 1, 8, 8)), (1, 8, 8)).dtype == torch.float32


def test_labels_are_validated():
    assert as_labels([0, 9], 2, 10).dtype == torch.int64
    with pytest.raises(HgdefendError, match=r"\[0, 9\]"):
        as_labels([0, 10], 2, 10)
    with pytest.raises(HgdefendError, match="one-hot"):
        as_labels(np.eye(10)[:3], 3, 10)
    with pytest.raises(HgdefendError, match="shape"):
        as_labels([0, 1, 2], 2, 10)
