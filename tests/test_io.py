import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hgdefend import HyperGAN, load_model, save_model
from hgdefend.io import ModelFileError, file_sha256
from hgdefend.targets import digits_small


@pytest.fixture
def small_model(tmp_path):
    torch.manual_seed(0)
    hg = HyperGAN(digits_small(), noise_dim=16, code_dim=8, hidden=32)
    path = tmp_path / "m.safetensors"
    sha = save_model(path, hg, dataset={"name": "digits"})
    return hg, path, sha


def test_round_trip_gives_identical_predictions(small_model):
    hg, path, sha = small_model
    loaded = load_model(path)
    assert loaded.sha256 == sha == file_sha256(path)
    x = torch.rand(7, 1, 8, 8)
    a = hg.ensemble(5, seed=3).member_logits(x)
    b = loaded.hypergan.ensemble(5, seed=3).member_logits(x)
    assert torch.equal(a, b)
    assert loaded.config["dataset"]["name"] == "digits"
    assert loaded.config["target"]["name"] == "digits_small"


def test_tampered_weights_are_rejected(small_model, tmp_path):
    _, path, _ = small_model
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1.0
    bad = tmp_path / "tampered.safetensors"
    save_file(tensors, str(bad), meta)
    with pytest.raises(ModelFileError, match="integrity"):
        load_model(bad)


def test_flipped_byte_is_rejected(small_model, tmp_path):
    _, path, _ = small_model
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError):
        load_model(bad)


def test_truncated_and_garbage_files_are_rejected(small_model, tmp_path):
    _, path, _ = small_model
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_model(trunc)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04pickle-like garbage")
    with pytest.raises(ModelFileError):
        load_model(junk)
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")


def test_mismatched_config_is_rejected(small_model, tmp_path):
    _, path, _ = small_model
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    cfg = json.loads(meta["hgdefend_config"])
    cfg["hypergan"]["hidden"] = 64  # shapes no longer match
    meta["hgdefend_config"] = json.dumps(cfg)
    bad = tmp_path / "mismatch.safetensors"
    save_file(tensors, str(bad), meta)
    with pytest.raises(ModelFileError, match="shape"):
        load_model(bad)
    meta["format_version"] = "99"
    save_file(tensors, str(bad), meta)
    with pytest.raises(ModelFileError, match="format version"):
        load_model(bad)


def test_plain_safetensors_without_header_is_rejected(tmp_path):
    p = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(p))
    with pytest.raises(ModelFileError, match="not an hgdefend-model"):
        load_model(p)


def test_expected_sha256_pins_the_file(small_model):
    _, path, sha = small_model
    assert load_model(path, expected_sha256=sha).sha256 == sha
    with pytest.raises(ModelFileError, match="expected_sha256"):
        load_model(path, expected_sha256="0" * 64)


def test_failed_save_keeps_existing_good_file(small_model, monkeypatch):
    hg, path, sha = small_model
    import hgdefend.envelope as envelope_mod

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(envelope_mod, "save_file", boom)
    with pytest.raises(RuntimeError):
        save_model(path, hg)
    assert file_sha256(path) == sha
    assert not list(path.parent.glob(".*.tmp"))
