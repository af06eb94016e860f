"""ONNX export: parity with the torch ensemble, metadata, refusal of bad files and inputs, CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from hgdefend import HyperGAN, __version__, load_data, save_model
from hgdefend.cli.main import cli
from hgdefend.detectors.detector import ScoreDetector
from hgdefend.detectors.scores import compute_scores
from hgdefend.export import (
    OUTPUTS,
    EnsembleGraph,
    OnnxDetector,
    OnnxFileError,
    ParityError,
    export_onnx,
    read_metadata,
)
from hgdefend.io import file_sha256
from hgdefend.targets import digits_small
from hgdefend.validation import HgdefendError

K = 10


@pytest.fixture(scope="module")
def model_file(trained_digits, digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(path, trained_digits, dataset=digits.describe())
    return path


@pytest.fixture(scope="module")
def exported(model_file, tmp_path_factory):
    """The default exporter (dynamo), threshold fit on the digits calibration split."""
    out = tmp_path_factory.mktemp("onnx") / "ensemble.onnx"
    result = export_onnx(model_file, K, out, seed=3, calibration="digits", target_fpr=0.05)
    return out, result


@pytest.fixture(scope="module")
def small_hg():
    torch.manual_seed(0)
    return HyperGAN(digits_small(), noise_dim=16, code_dim=8, hidden=32)


def test_parity_batch_1_and_7_on_digits(exported, trained_digits, digits):
    out, result = exported
    cases = {(r["inputs"], r["batch"]) for r in result.parity}
    assert cases == {("random", 1), ("random", 7), ("real", 1), ("real", 7)}
    assert result.max_abs_prob_diff <= 1e-4
    # Independently of check_parity: compare with the library's torch ensemble and detector.
    ens = trained_digits.ensemble(K, seed=3)
    det = ScoreDetector(ens, "entropy", 0.05).fit(digits.calib.x)
    onnx_det = OnnxDetector(out, device="cpu")
    assert onnx_det.threshold == pytest.approx(det.threshold_, abs=0)
    for x in (digits.test.x[:1], digits.test.x[:7], digits.test.x):
        got = onnx_det.run(x.numpy())
        ref = ens.predict_proba(x).numpy()
        assert np.abs(got["probabilities"] - ref).max() <= 1e-4
        np.testing.assert_array_equal(got["predicted_class"], ref.argmax(-1))
        np.testing.assert_array_equal(got["is_adversarial"], det.flag(x))
        assert got["member_logits"].shape == (K, len(x), 10)
        ref_scores = compute_scores(ens.member_logits(x))
        for name, value in ref_scores.items():
            assert np.abs(got[f"score_{name}"] - value.numpy()).max() <= 1e-4


def test_legacy_exporter_also_matches(small_hg, digits, tmp_path):
    result = export_onnx(
        small_hg,
        3,
        tmp_path / "e.onnx",
        seed=0,
        threshold=0.5,
        exporter="legacy",
        parity_inputs=digits.test.x,
    )
    assert result.max_abs_prob_diff <= 1e-4
    assert read_metadata(tmp_path / "e.onnx")["exporter"] == "legacy"


def test_metadata_round_trip(exported, model_file, digits):
    out, result = exported
    meta = read_metadata(out)
    assert meta == {**result.metadata, "graph_sha256": meta["graph_sha256"]}
    assert meta["source_model_sha256"] == file_sha256(model_file)
    assert meta["members"] == str(K) and meta["seed"] == "3"
    assert float(meta["target_fpr"]) == 0.05
    assert json.loads(meta["input_shape"]) == [1, 8, 8]
    assert json.loads(meta["input_range"]) == [0.0, 1.0]
    assert meta["library_version"] == __version__
    assert int(meta["n_calibration"]) == len(digits.calib)
    det = OnnxDetector(out, device="cpu")
    assert det.k == K and det.input_shape == (1, 8, 8) and det.score == "entropy"
    assert det.threshold == float(meta["threshold"]) == result.threshold
    assert det.outputs == list(OUTPUTS)


def test_calibration_uses_the_models_classes(small_hg, tmp_path):
    """A model trained on held-out classes calibrates on those classes only and labels them."""
    torch.manual_seed(0)
    hg = HyperGAN(digits_small(5), noise_dim=16, code_dim=8, hidden=32)
    five = load_data("digits", in_classes="0-4")
    model = tmp_path / "m.safetensors"
    save_model(model, hg, dataset=five.describe())
    result = export_onnx(model, 2, tmp_path / "e.onnx", calibration="digits", exporter="legacy")
    assert result.metadata["n_calibration"] == str(len(five.calib))
    assert OnnxDetector(tmp_path / "e.onnx").class_labels == [0, 1, 2, 3, 4]


def test_corrupted_file_is_refused(exported, tmp_path):
    out, _ = exported
    data = bytearray(out.read_bytes())
    flipped = tmp_path / "flipped.onnx"
    mid = len(data) // 2  # inside the weights
    data[mid : mid + 8] = bytes(b ^ 0xFF for b in data[mid : mid + 8])
    flipped.write_bytes(bytes(data))
    with pytest.raises(OnnxFileError, match="integrity|not a readable"):
        OnnxDetector(flipped)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(out.read_bytes()[: len(data) // 3])
    with pytest.raises(OnnxFileError):
        OnnxDetector(truncated)
    with pytest.raises(OnnxFileError, match="does not exist"):
        OnnxDetector(tmp_path / "missing.onnx")


def test_file_without_hgdefend_metadata_is_refused(exported, tmp_path):
    out, _ = exported
    model = onnx.load(str(out))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(OnnxFileError, match="no hgdefend metadata"):
        OnnxDetector(bare)
    with pytest.raises(OnnxFileError, match="no hgdefend metadata"):
        read_metadata(bare)


def test_bad_inputs_give_clear_errors(exported):
    det = OnnxDetector(exported[0], device="cpu")
    good = np.zeros((2, 1, 8, 8), np.float32)
    assert det.run(good)["probabilities"].shape == (2, 10)
    with pytest.raises(HgdefendError, match=r"expected shape \[B, 1, 8, 8\]"):
        det.run(np.zeros((2, 1, 28, 28), np.float32))
    with pytest.raises(HgdefendError, match="dtype int64"):
        det.run(np.zeros((2, 1, 8, 8), np.int64))
    nan = good.copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(HgdefendError, match="NaN"):
        det.run(nan)
    with pytest.raises(HgdefendError, match="values must lie in"):
        det.run(good + 5)
    with pytest.raises(HgdefendError, match="expected a numpy array"):
        det.run([[0.0]])


def test_k_below_one_and_bad_arguments(small_hg, tmp_path):
    for k in (0, -1, 1.5):
        with pytest.raises(HgdefendError, match="k: ensemble size"):
            export_onnx(small_hg, k, tmp_path / "e.onnx")
    with pytest.raises(HgdefendError, match="either a threshold or calibration"):
        export_onnx(small_hg, 2, tmp_path / "e.onnx", threshold=1.0, calibration="digits")
    with pytest.raises(HgdefendError, match="target_fpr"):
        export_onnx(small_hg, 2, tmp_path / "e.onnx", calibration="digits", target_fpr=1.5)
    assert not (tmp_path / "e.onnx").exists()


def test_failed_parity_leaves_existing_file_untouched(small_hg, tmp_path, monkeypatch):
    out = tmp_path / "e.onnx"
    export_onnx(small_hg, 2, out, exporter="legacy")
    before = out.read_bytes()
    forward = EnsembleGraph.forward

    def broken(self, x):  # a graph that drifts from torch, as an exporter bug would
        logits, probs, *rest = forward(self, x)
        return (logits, probs * 0.5, *rest)

    monkeypatch.setattr(EnsembleGraph, "forward", broken)
    with pytest.raises(ParityError, match="no file was written"):
        export_onnx(small_hg, 3, out, exporter="legacy")
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.onnx"]


def test_no_threshold_means_no_flag_output(small_hg, tmp_path):
    out = tmp_path / "e.onnx"
    result = export_onnx(small_hg, 2, out, exporter="legacy")
    assert result.threshold is None and result.metadata["threshold"] == ""
    det = OnnxDetector(out)
    assert "is_adversarial" not in det.outputs
    assert det.records(np.zeros((1, 1, 8, 8), np.float32))[0]["is_adversarial"] is None
    with pytest.raises(HgdefendError, match="without a threshold"):
        det.flag(np.zeros((1, 1, 8, 8), np.float32))


def test_cli_export_and_detect_round_trip(model_file, digits, tmp_path):
    runner = CliRunner()
    out = tmp_path / "ens.onnx"
    res = runner.invoke(
        cli,
        [
            "export",
            "--model",
            str(model_file),
            "--members",
            "4",
            "--seed",
            "1",
            "--out",
            str(out),
            "--threshold-from",
            "digits",
            "--exporter",
            "legacy",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["members"] == 4 and summary["max_abs_prob_diff"] <= 1e-4

    x = digits.test.x[:9].numpy()
    np.save(tmp_path / "x.npy", x)
    res = runner.invoke(cli, ["detect", "--model", str(out), "--input", str(tmp_path / "x.npy")])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines()]
    expected = OnnxDetector(out).run(x)
    assert [r["predicted_class"] for r in rows] == expected["predicted_class"].tolist()
    assert [r["is_adversarial"] for r in rows] == expected["is_adversarial"].tolist()

    np.savez(tmp_path / "x.npz", x=x)
    csv_out = tmp_path / "out.csv"
    res = runner.invoke(
        cli,
        [
            "detect",
            "-m",
            str(out),
            "--input",
            str(tmp_path / "x.npz"),
            "--format",
            "csv",
            "--out",
            str(csv_out),
        ],
    )
    assert res.exit_code == 0, res.output
    lines = csv_out.read_text().splitlines()
    assert lines[0].startswith("index,predicted_class,label,probability,entropy") and len(lines) == 10

    np.save(tmp_path / "bad.npy", (x * 255).astype(np.uint8))
    res = runner.invoke(cli, ["detect", "--model", str(out), "--input", str(tmp_path / "bad.npy")])
    assert res.exit_code == 2 and res.output.startswith("error:") and len(res.output.splitlines()) == 1

    res = runner.invoke(cli, ["detect", "--model", str(model_file), "--input", str(tmp_path / "x.npy")])
    assert res.exit_code == 2 and "not a readable ONNX file" in res.output

    res = runner.invoke(cli, ["export", "-m", str(model_file), "-k", "0", "--out", str(tmp_path / "z.onnx")])
    assert res.exit_code == 2 and "ensemble size must be an integer >= 1" in res.output
    assert not (tmp_path / "z.onnx").exists()
