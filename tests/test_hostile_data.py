"""Hostile data files and arguments get one clear error (issue 17), each test named after a failure."""

import io
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from hgdefend import load_data
from hgdefend.cli.main import cli
from hgdefend.data import check_idx, parse_classes
from hgdefend.resources import ResourceLimitError, parse_size
from hgdefend.validation import HgdefendError


def _npz(path, x, y):
    np.savez(path, x=x, y=y)
    return str(path)


def _images(n):
    return np.random.default_rng(0).random((n, 1, 4, 4), dtype=np.float32)


def test_npz_labels_non_contiguous_are_mapped_to_indices(tmp_path):
    y = np.array([0, 3, 10] * 20)
    data = load_data(_npz(tmp_path / "d.npz", _images(60), y))
    assert data.classes == [0, 3, 10] and data.num_classes == 3
    assert set(data.train.y.tolist()) <= {0, 1, 2}


def test_npz_labels_out_of_range_are_refused(tmp_path):
    for bad in (np.array([0, 1] * 29 + [-1, 1]), np.array([0, 1] * 29 + [1 << 40, 1])):
        with pytest.raises(HgdefendError, match="labels must lie in"):
            load_data(_npz(tmp_path / "d.npz", _images(60), bad))
    with pytest.raises(HgdefendError, match="integer class labels"):
        load_data(_npz(tmp_path / "e.npz", _images(60), np.full(60, 0.5)))


def test_single_class_npz_is_refused(tmp_path):
    with pytest.raises(HgdefendError, match="single class"):
        load_data(_npz(tmp_path / "d.npz", _images(60), np.zeros(60, np.int64)))


def test_npy_renamed_npz_is_refused(tmp_path):
    p = tmp_path / "d.npz"
    np.save(tmp_path / "d.npy", _images(4))
    (tmp_path / "d.npy").rename(p)
    with pytest.raises(HgdefendError, match="not an .npz .*renamed"):
        load_data(str(p))


def test_npz_pickled_array_is_refused(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.array([{"a": 1}] * 4, dtype=object), y=np.zeros(4))
    with pytest.raises(HgdefendError, match="Python objects"):
        load_data(str(p))


def _member(name, shape, dtype="<f4", payload=b""):
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return name, np.lib.format.magic(1, 0) + buf.getvalue()[8:] + payload


def test_npz_declaring_233_tib_array_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setenv("HGDEFEND_MAX_MEMORY", "4G")
    p = tmp_path / "d.npz"
    with zipfile.ZipFile(p, "w") as zf:
        for name, raw in (_member("x.npy", (1 << 43, 1, 1, 7)), _member("y.npy", (4,), "<i8", b"\0" * 32)):
            zf.writestr(name, raw)
    with pytest.raises(
        ResourceLimitError, match=r"needs about .*TiB, more than the memory limit of 4\.0 GiB"
    ):
        load_data(str(p))


def test_npz_zip_bomb_is_refused_before_inflating(tmp_path, monkeypatch):
    monkeypatch.setenv("HGDEFEND_MAX_MEMORY", "64M")
    p = tmp_path / "d.npz"
    n = 1 << 27  # 128 MiB of zeros, a few hundred KiB compressed
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        name, raw = _member("x.npy", (n // 16, 1, 4, 4), "|u1")
        with zf.open(name, "w", force_zip64=True) as member:
            member.write(raw)
            for _ in range(n >> 20):
                member.write(b"\0" * (1 << 20))
        zf.writestr(*_member("y.npy", (n // 16,), "<i8"))
    with pytest.raises(ResourceLimitError, match="memory limit of 64.0 MiB"):
        load_data(str(p))


def test_malformed_idx_file_in_data_root_is_refused(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    bad = raw / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") * 3 + b"\0" * 5)
    with pytest.raises(HgdefendError, match="declares .* but holds"):
        load_data("mnist", root=tmp_path)
    bad.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(HgdefendError, match="not a uint8 idx file"):
        load_data("mnist", root=tmp_path)
    bad.write_bytes(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    assert check_idx(bad) == (3,)


def test_in_classes_0_to_1000000000_is_refused():
    with pytest.raises(HgdefendError, match="must lie in"):
        parse_classes("0-1000000000")
    with pytest.raises(HgdefendError, match="expected e.g."):
        parse_classes("a-b")
    res = CliRunner().invoke(cli, ["train", "--in-classes", "0-1000000000", "--out", "unused"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output


@pytest.mark.parametrize("device", ["bogus", "meta", "cuda:x", ""])
def test_device_bogus_and_meta_are_refused(device):
    for command in ("train", "evaluate"):
        res = CliRunner().invoke(cli, [command, "--device", device, "--out", "unused"])
        assert res.exit_code == 2, res.output
        assert res.output.startswith("error: device: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
        assert len(res.output.strip().splitlines()) == 1


def test_click_usage_errors_print_one_line(tmp_path):
    for args in (["detect", "-m", str(tmp_path)], ["train", "--steps", "many"], ["frobnicate"]):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 2 and res.output.startswith("error: "), res.output
        assert len(res.output.strip().splitlines()) == 1, res.output


def test_max_memory_sizes_parse():
    assert parse_size("512M") == 512 << 20 and parse_size("1.5G") == 3 << 29 and parse_size(4096) == 4096
    for bad in ("lots", "-1G", "0", True):
        with pytest.raises(HgdefendError, match="max_memory"):
            parse_size(bad)
