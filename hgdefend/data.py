"""Datasets: the built-in loaders (digits, MNIST, Fashion-MNIST, CIFAR-10, the cubic toy, ``.npz``
files) and deterministic train / calibration / test splits.

Images are float32 in [0, 1] with a channel axis. Nothing is downloaded unless the caller asks
(``download=True``); a missing local root gives a clear error naming where files were expected.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .arrays import read_npz
from .resources import check_memory
from .validation import HgdefendError
from .vocab import DATASETS

DATA_ROOT_ENV = "HGDEFEND_DATA_ROOT"
MAX_LABEL = (1 << 20) - 1
"""Largest class label a dataset may use (labels need not be contiguous: they are mapped to indices)."""


@dataclass
class Split:
    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, n: int | None) -> Split:
        return self if n is None or n >= len(self) else Split(self.x[:n], self.y[:n])


@dataclass
class DataSplits:
    """What training and evaluation consume. ``ood`` holds held-out classes when asked for."""

    name: str
    train: Split
    calib: Split
    test: Split
    input_shape: tuple[int, ...]
    num_classes: int
    classes: list[int]
    task: str = "classification"
    value_range: tuple[float, float] = (0.0, 1.0)
    ood: Split | None = None
    ood_name: str | None = None
    split_seed: int = 0
    meta: dict = field(default_factory=dict)

    def describe(self) -> dict:
        out = {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "classes": self.classes,
            "num_classes_all": self.meta.get("num_classes_all", len(self.classes)),
            "train": len(self.train),
            "calibration": len(self.calib),
            "test": len(self.test),
            "ood": None if self.ood is None else {"name": self.ood_name, "size": len(self.ood)},
            "split_seed": self.split_seed,
        }
        if not self.classes:  # regression: no class labels to record (the schema wants at least one)
            del out["classes"], out["num_classes_all"]
        return out


def parse_classes(text: str | Sequence[int] | None) -> list[int] | None:
    """'0-4' or '0,2,5' or [0, 1] -> sorted unique ints."""
    if text is None:
        return None
    out: set[int] = set()
    try:
        if not isinstance(text, str):
            out = {int(c) for c in text}
        else:
            for part in text.split(",")[: MAX_LABEL + 1]:
                part = part.strip()
                if "-" in part:
                    a, b = (int(v) for v in part.split("-", 1))
                    if not 0 <= a <= b <= MAX_LABEL:
                        raise HgdefendError(f"in_classes: range {part!r} must lie in [0, {MAX_LABEL}]")
                    out.update(range(a, b + 1))
                elif part:
                    out.add(int(part))
    except (ValueError, TypeError) as exc:
        if isinstance(exc, HgdefendError):
            raise
        raise HgdefendError(f"in_classes: expected e.g. '0-4' or '0,2,5', got {str(text)[:60]!r}") from exc
    if out and not 0 <= min(out) <= max(out) <= MAX_LABEL:
        raise HgdefendError(f"in_classes: classes must lie in [0, {MAX_LABEL}]")
    if not out:
        raise HgdefendError(f"in_classes: no classes in {text!r}")
    return sorted(out)


# --------------------------------------------------------------------------- raw loaders
def _images(arr: np.ndarray, name: str) -> np.ndarray:
    """uint8 or float images -> float32 [N, C, H, W] (or [N, D]) in [0, 1]."""
    if arr.dtype == np.uint8:
        x = arr.astype(np.float32) / 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        x = arr.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise HgdefendError(f"{name}: contains NaN or infinite values")
        if x.size and (x.min() < 0 or x.max() > 1):
            raise HgdefendError(
                f"{name}: float images must lie in [0, 1], got [{x.min():.3g}, {x.max():.3g}]"
            )
    else:
        raise HgdefendError(f"{name}: expected uint8 or float images, got dtype {arr.dtype}")
    if x.ndim == 3:  # [N, H, W] -> [N, 1, H, W]
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):  # NHWC -> NCHW
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    elif x.ndim not in (2, 4):
        raise HgdefendError(f"{name}: expected [N, D], [N, H, W] or [N, C, H, W], got {x.shape}")
    return x


def _labels(arr: np.ndarray, n: int, name: str) -> np.ndarray:
    y = np.asarray(arr)
    if y.shape != (n,):
        raise HgdefendError(f"{name}: expected shape ({n},) to match the images, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise HgdefendError(f"{name}: expected integer class labels, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() > MAX_LABEL):
        raise HgdefendError(f"{name}: labels must lie in [0, {MAX_LABEL}], got min {y.min()}, max {y.max()}")
    return y.astype(np.int64)


def _resolve_root(root: str | os.PathLike | None, dataset: str) -> Path:
    root = root or os.environ.get(DATA_ROOT_ENV)
    if not root:
        raise HgdefendError(
            f"data_root: dataset {dataset!r} is read from a local folder; pass --data-root "
            f"(or set {DATA_ROOT_ENV}) to a folder in torchvision's layout"
        )
    path = Path(root)
    if not path.is_dir():
        raise HgdefendError(f"data_root: {str(path)!r} is not a folder")
    return path


def check_idx(path: Path) -> tuple[int, ...]:
    """An idx file's declared dims, after checking magic, dtype, rank and that the file's size is
    exactly header + data (and within the memory limit); torchvision's reader only asserts."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
        ndim = head[3] if len(head) == 4 else 0
        dims_raw = f.read(4 * ndim)
    if len(head) < 4 or head[:3] != b"\x00\x00\x08" or not 1 <= ndim <= 4 or len(dims_raw) != 4 * ndim:
        raise HgdefendError(
            f"data_root: {str(path)!r} is not a uint8 idx file "
            f"(magic {head.hex() or 'empty'}, expected 000008 and a rank of 1-4)"
        )
    dims = tuple(int.from_bytes(dims_raw[4 * i : 4 * i + 4], "big") for i in range(ndim))
    expected = 4 + 4 * ndim + math.prod(dims)
    check_memory(4 * math.prod(dims), f"data_root: {str(path)!r} declaring {list(dims)}")
    if size != expected:
        raise HgdefendError(
            f"data_root: {str(path)!r} declares {list(dims)} ({expected} bytes) but holds {size} bytes"
        )
    return dims


TRUST_ENV = "HGDEFEND_TRUST_DATA_ROOT"


def _check_trusted(name: str, root: Path, trust_data_root: bool | None) -> None:
    """CIFAR-10's batch files are Python pickles that torchvision unpickles: whoever can write the
    data root can run code as the user (torchvision's MD5 check guards against corruption, not
    against a writer who swaps a file after it). Refused unless the user says they trust the folder."""
    trusted = (
        os.environ.get(TRUST_ENV, "") in ("1", "true", "yes") if trust_data_root is None else trust_data_root
    )
    if name == "cifar10" and not trusted:
        raise HgdefendError(
            f"data_root: CIFAR-10's batch files under {str(root)!r} are Python pickles, and loading them "
            "runs code from the folder; pass --trust-data-root (trust_data_root=True, or "
            f"{TRUST_ENV}=1) only for a folder you control (see SECURITY.md)"
        )


def _torchvision(name: str, root: Path, download: bool) -> tuple[np.ndarray, ...]:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    layout = "cifar-10-batches-py" if name == "cifar10" else f"{cls.__name__}/raw"
    if name != "cifar10":
        for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                     "t10k-labels-idx1-ubyte"):  # fmt: skip
            if (root / layout / stem).is_file():
                check_idx(root / layout / stem)
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise HgdefendError(
            f"data_root: {cls.__name__} files not found or corrupt under {str(root)!r} "
            f"(torchvision says: {exc}); expected {root / layout}"
            + ("" if download else ", or pass --download if this machine has internet")
        ) from exc
    except (AssertionError, ValueError, OSError, EOFError, IndexError, TypeError) as exc:
        raise HgdefendError(  # torchvision's idx reader asserts on malformed files
            f"data_root: {cls.__name__} files under {str(root)!r} are malformed "
            f"({type(exc).__name__}: {str(exc)[:120] or 'failed a format check'}); "
            f"expected torchvision's layout in {root / layout}"
        ) from exc

    def arrays(ds) -> tuple[np.ndarray, np.ndarray]:
        data = ds.data.numpy() if isinstance(ds.data, Tensor) else np.asarray(ds.data)
        return data, np.asarray(ds.targets)

    return (*arrays(train), *arrays(test))


def _cubic(seed: int) -> tuple[np.ndarray, ...]:
    """The paper's toy regression: 20 points x ~ U[-4, 4], y = x³ + N(0, 3²)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-4, 4, size=(20, 1)).astype(np.float32)
    y = (x[:, 0] ** 3 + rng.normal(0, 3, size=20)).astype(np.float32)
    xt = np.linspace(-6, 6, 200, dtype=np.float32)[:, None]
    return x, y, xt, (xt[:, 0] ** 3).astype(np.float32)


# --------------------------------------------------------------------------- public API
def load_data(
    name: str = "digits",
    *,
    root: str | os.PathLike | None = None,
    download: bool = False,
    in_classes: str | Sequence[int] | None = None,
    split_seed: int = 0,
    calib_fraction: float = 0.2,
    test_fraction: float = 0.2,
    trust_data_root: bool | None = None,
) -> DataSplits:
    """Load a dataset by name (or an ``.npz`` path) into deterministic splits.

    Datasets with an official test set (MNIST, Fashion-MNIST, CIFAR-10) train on the official
    training set and split the official test set in halves: calibration and test. Others are
    shuffled once with ``split_seed`` and cut by the given fractions.

    CIFAR-10 is read only with ``trust_data_root=True`` (or ``HGDEFEND_TRUST_DATA_ROOT=1``; ``None``
    reads the variable): torchvision unpickles its batch files, so the folder is code.
    """
    if name == "cubic":
        x, y, xt, yt = _cubic(split_seed)
        t = Split(torch.from_numpy(xt), torch.from_numpy(yt))
        return DataSplits(
            "cubic", Split(torch.from_numpy(x), torch.from_numpy(y)), t, t, (1,), 1, [],
            task="regression", value_range=(-6.0, 6.0), split_seed=split_seed,
        )  # fmt: skip
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        pool_x = (d.images / 16.0).astype(np.float32)[:, None]
        pool_y = d.target.astype(np.int64)
        tr_x = tr_y = None
    elif name.endswith(".npz"):
        path = Path(name)
        if not path.is_file():
            raise HgdefendError(f"dataset: npz file {name!r} does not exist")
        arrays = read_npz(path, ("x", "y"), "dataset")
        pool_x = _images(arrays.pop("x"), "dataset x")
        pool_y = _labels(arrays.pop("y"), len(pool_x), "dataset y")
        tr_x = tr_y = None
    elif name in ("mnist", "fashion-mnist", "cifar10"):
        resolved = _resolve_root(root, name)
        _check_trusted(name, resolved, trust_data_root)
        a, b, c, d_ = _torchvision(name, resolved, download)
        tr_x, tr_y = _images(a, f"{name} train"), _labels(b, len(a), f"{name} labels")
        pool_x, pool_y = _images(c, f"{name} test"), _labels(d_, len(c), f"{name} labels")
    else:
        raise HgdefendError(
            f"dataset: unknown dataset {name!r}; expected one of {DATASETS[:-1]} or a .npz file"
        )
    if len(pool_x) == 0:
        raise HgdefendError(f"dataset: {name!r} is empty")

    rng = np.random.default_rng(split_seed)
    order = rng.permutation(len(pool_x))
    pool_x, pool_y = pool_x[order], pool_y[order]
    n = len(pool_x)
    if tr_x is None:
        n_test = int(round(n * test_fraction))
        n_cal = int(round(n * calib_fraction))
        test_x, test_y = pool_x[:n_test], pool_y[:n_test]
        cal_x, cal_y = pool_x[n_test : n_test + n_cal], pool_y[n_test : n_test + n_cal]
        tr_x, tr_y = pool_x[n_test + n_cal :], pool_y[n_test + n_cal :]
    else:
        half = n // 2
        cal_x, cal_y, test_x, test_y = pool_x[:half], pool_y[:half], pool_x[half:], pool_y[half:]

    all_classes = sorted(set().union(*(np.unique(y).tolist() for y in (tr_y, cal_y, test_y))))
    chosen = parse_classes(in_classes)
    ood = None
    if chosen is not None:
        unknown = sorted(set(chosen) - set(all_classes))
        if unknown:
            raise HgdefendError(f"in_classes: {unknown} not in the dataset's classes {all_classes}")
        if len(chosen) < 2 or len(chosen) == len(all_classes):
            raise HgdefendError("in_classes: need at least 2 in-distribution classes and at least 1 held out")
        out_mask = ~np.isin(test_y, chosen)
        ood = Split(torch.from_numpy(test_x[out_mask]), torch.from_numpy(test_y[out_mask]))
        remap = {c: i for i, c in enumerate(chosen)}

        def keep(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            m = np.isin(y, chosen)
            return x[m], np.array([remap[int(v)] for v in y[m]], dtype=np.int64)

        tr_x, tr_y = keep(tr_x, tr_y)
        cal_x, cal_y = keep(cal_x, cal_y)
        test_x, test_y = keep(test_x, test_y)
        classes = chosen
    else:
        if len(all_classes) < 2:
            raise HgdefendError(
                f"dataset: {name!r} has a single class {all_classes}: a classifier (and its detector, "
                "whose entropy would always be 0) needs at least 2"
            )
        classes = all_classes
        if classes != list(range(len(classes))):  # e.g. labels {0, 3, 10}: train on indices 0, 1, 2
            index = np.full(classes[-1] + 1, -1, np.int64)
            index[classes] = np.arange(len(classes))
            tr_y, cal_y, test_y = index[tr_y], index[cal_y], index[test_y]
    for split_name, arr in (("train", tr_x), ("calibration", cal_x), ("test", test_x)):
        if len(arr) == 0:
            raise HgdefendError(f"dataset: {name!r} leaves the {split_name} split empty")

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y))

    return DataSplits(
        name=name,
        train=split(tr_x, tr_y),
        calib=split(cal_x, cal_y),
        test=split(test_x, test_y),
        input_shape=tuple(tr_x.shape[1:]),
        num_classes=len(classes),
        classes=classes,
        ood=ood,
        ood_name=None if ood is None else f"{name} held-out classes",
        split_seed=split_seed,
        meta={"num_classes_all": len(all_classes)},
    )


def load_ood(
    name: str,
    like: DataSplits,
    *,
    root: str | os.PathLike | None = None,
    download: bool = False,
    trust_data_root: bool | None = None,
) -> Split:
    """The test split of another dataset as an OOD set; its input shape must match ``like``."""
    other = load_data(name, root=root, download=download, split_seed=like.split_seed,
                      trust_data_root=trust_data_root)  # fmt: skip
    if other.input_shape != like.input_shape:
        raise HgdefendError(
            f"ood: {name!r} has input shape {list(other.input_shape)}, the model expects "
            f"{list(like.input_shape)}"
        )
    return other.test
