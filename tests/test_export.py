"""ONNX export: parity with the torch ensemble, metadata, refusal of bad files and inputs, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

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
    content_sha256,
    export_onnx,
    label_summary,
    read_metadata,
)
from hgdefend.export.fileformat import file_sha256
from hgdefend.export.graph import EXPORT_KERNELS
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
    assert cases == {("random", 1), ("random", 7), ("real", 1), ("real", 7), ("invalid", 6)}
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
    assert meta == result.metadata
    assert meta["content_sha256"] == result.content_sha256 == content_sha256(out)
    assert result.sha256 == file_sha256(out) == OnnxDetector(out).sha256
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
    assert "input_valid" in det.outputs
    assert det.run(np.full((1, 1, 8, 8), np.nan, np.float32), invalid="flag")["input_valid"].tolist() == [
        False
    ]
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
    assert summary["sha256"] == file_sha256(out)
    assert {"inputs": "invalid", "batch": 6, "input_valid_mismatches": 0, "flag_mismatches": 0}.items() <= (
        summary["parity"][-1].items()
    )

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


# --------------------------------------------------------------------------- fail closed
def _plain_session(path):
    """The file as a plain onnxruntime user runs it (no hgdefend code between them)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda x: dict(zip(names, sess.run(None, {"x": x}), strict=True))


def test_invalid_inputs_fail_closed_in_plain_onnxruntime(exported, digits):
    out, _ = exported
    x = digits.test.x[:7].numpy().copy()
    x[0, 0, 3, 3] = np.nan
    x[1, 0, 0, 0] = np.inf
    x[2, 0, 7, 7] = -np.inf
    x[3, 0, 4, 4] = -0.01  # below the input range [0, 1]
    x[4, 0, 2, 5] = 1.5  # above it
    x[5] = digits.test.x[5].numpy() * 255  # the 0-255 scale of a broken pipeline
    got = _plain_session(out)(x)
    assert got["input_valid"].tolist() == [False] * 6 + [True]
    assert got["is_adversarial"][:6].all()
    # the same through the library when asked to let the graph decide, refused by default
    det = OnnxDetector(out, device="cpu")
    np.testing.assert_array_equal(det.run(x, invalid="flag")["is_adversarial"], got["is_adversarial"])
    assert [r["input_valid"] for r in det.records(x, invalid="flag")] == got["input_valid"].tolist()
    with pytest.raises(HgdefendError, match="NaN"):
        det.run(x)


def test_valid_inputs_at_the_range_edges_are_valid(exported):
    out, _ = exported
    x = np.zeros((2, 1, 8, 8), np.float32)
    x[1] = 1.0
    got = _plain_session(out)(x)
    assert got["input_valid"].all()


# --------------------------------------------------------------------------- integrity and pinning
def _tamper(
    src, dst, *, threshold_meta=None, threshold_graph=None, recompute=False, duplicate=False, meta=None
):
    """Edit a file as an attacker (or a careless tool) would; ``recompute`` re-signs it with the
    library's own public digest function."""
    from onnx import numpy_helper

    model = onnx.load(str(src))
    props = {p.key: p for p in model.metadata_props}
    if threshold_meta is not None:
        props["threshold"].value = repr(threshold_meta)
    if threshold_graph is not None:
        init = next(i for i in model.graph.initializer if i.name == "threshold")
        init.CopyFrom(numpy_helper.from_array(np.array(threshold_graph, np.float32), "threshold"))
    if duplicate:
        model.metadata_props.add(key="threshold", value="9.9")
    for key, value in (meta or {}).items():
        props[key].value = value
    if recompute:
        keep = [(p.key, p.value) for p in model.metadata_props if p.key != "content_sha256"]
        del model.metadata_props[:]
        for k, v in keep:
            model.metadata_props.add(key=k, value=v)
        digest = content_sha256(model.SerializeToString())
        model.metadata_props.add(key="content_sha256", value=digest)
    onnx.save(model, str(dst))
    return dst


TAMPERING = {
    "metadata threshold": {"threshold_meta": 9.9},
    "graph threshold": {"threshold_graph": 9.9},
    "repeated metadata key": {"duplicate": True},
}


@pytest.mark.parametrize("edit", list(TAMPERING))
def test_tampering_without_a_new_digest_is_refused_even_without_a_pin(exported, digits, tmp_path, edit):
    out, _ = exported
    bad = _tamper(out, tmp_path / "bad.onnx", **TAMPERING[edit])
    with pytest.raises(OnnxFileError, match="integrity|repeats metadata"):
        OnnxDetector(bad)
    np.save(tmp_path / "x.npy", digits.test.x[:3].numpy())
    res = CliRunner().invoke(cli, ["detect", "-m", str(bad), "--input", str(tmp_path / "x.npy")])
    assert res.exit_code == 2 and res.output.startswith("error: onnx:"), res.output
    assert len(res.output.strip().splitlines()) == 1


ONNX_METADATA_EDITS = {
    "class label formula": ({"class_labels": json.dumps(["=1+1"] * 10)}, "class_labels"),
    "class labels repeated": ({"class_labels": json.dumps([0] * 10)}, "distinct"),
    "class labels too few": ({"class_labels": json.dumps([0, 1])}, "class_labels"),
    "input range infinite": ({"input_range": "[-1e999, 1e999]"}, "input_range"),
    "input range NaN": ({"input_range": "[NaN, 1]"}, "input_range"),
    "input range reversed": ({"input_range": "[1, 0]"}, "lo < hi"),
    "threshold not a number": ({"threshold": "nan-ish"}, "threshold"),
    "threshold infinite": ({"threshold": "inf"}, "threshold"),
    "members huge": ({"members": "1000000000"}, "members"),
    "score unknown": ({"score": "\x1b[2Jevil"}, "score"),
    "nested input shape": ({"input_shape": "[" * 5000 + "]" * 5000}, "nested deeper"),
}


@pytest.mark.parametrize("edit", list(ONNX_METADATA_EDITS))
def test_onnx_metadata_edits_are_schema_checked(exported, tmp_path, edit):
    """Even re-signed with the public digest, metadata that breaks the schema is refused."""
    out, _ = exported
    change, message = ONNX_METADATA_EDITS[edit]
    bad = _tamper(out, tmp_path / "bad.onnx", recompute=True, meta=change)
    with pytest.raises(OnnxFileError, match="malformed hgdefend metadata.*" + message):
        read_metadata(bad)


@pytest.mark.parametrize("edit", ["metadata threshold", "graph threshold"])
def test_tampering_with_a_recomputed_digest_is_refused_by_the_pin(exported, digits, tmp_path, edit):
    out, _ = exported
    pin = file_sha256(out)
    bad = _tamper(out, tmp_path / "bad.onnx", recompute=True, **TAMPERING[edit])
    # A recomputed digest passes the embedded check: that is what it cannot stop ...
    det = OnnxDetector(bad)
    x = digits.test.x.numpy()
    if edit == "graph threshold":
        assert det.flag(x).sum() == 0 < OnnxDetector(out).flag(x).sum()
    else:
        assert det.threshold == 9.9
    # ... and why the file's SHA-256 is pinned where it is used.
    with pytest.raises(OnnxFileError, match="expected_sha256"):
        OnnxDetector(bad, expected_sha256=pin)
    np.save(tmp_path / "x.npy", x[:3])
    res = CliRunner().invoke(
        cli, ["detect", "-m", str(bad), "--input", str(tmp_path / "x.npy"), "--expected-sha256", pin]
    )
    assert res.exit_code == 2 and res.output.startswith("error: expected_sha256:"), res.output
    assert pin in res.output and len(res.output.strip().splitlines()) == 1


def test_expected_sha256_pins_the_file(exported, digits, tmp_path):
    out, _ = exported
    pin = file_sha256(out)
    np.save(tmp_path / "x.npy", digits.test.x[:3].numpy())
    args = ["detect", "-m", str(out), "--input", str(tmp_path / "x.npy")]
    runner = CliRunner()
    assert runner.invoke(cli, [*args, "--expected-sha256", pin.upper()]).exit_code == 0
    wrong = runner.invoke(cli, [*args, "--expected-sha256", "0" * 64])
    assert wrong.exit_code == 2 and "expected_sha256" in wrong.output and pin in wrong.output
    assert len(wrong.output.strip().splitlines()) == 1
    malformed = runner.invoke(cli, [*args, "--expected-sha256", "abc"])
    assert malformed.exit_code == 2 and "64 hex digits" in malformed.output
    assert OnnxDetector(out, expected_sha256=pin).sha256 == pin
    with pytest.raises(OnnxFileError, match="expected_sha256"):
        read_metadata(out, expected_sha256="f" * 64)


def test_older_format_is_refused(exported, tmp_path):
    out, _ = exported
    model = onnx.load(str(out))
    next(p for p in model.metadata_props if p.key == "hgdefend_format_version").value = "1"
    onnx.save(model, str(tmp_path / "v1.onnx"))
    with pytest.raises(OnnxFileError, match="format version '1'.*reads 2"):
        OnnxDetector(tmp_path / "v1.onnx")


def test_info_reads_an_onnx_file(exported, tmp_path):
    out, result = exported
    res = CliRunner().invoke(cli, ["info", "-m", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["sha256"] == file_sha256(out) and info["content_sha256"] == result.content_sha256
    assert info["members"] == K and info["seed"] == 3 and info["threshold"] == result.threshold
    assert list(info["outputs"]) == list(OUTPUTS) and "input is invalid" in info["outputs"]["is_adversarial"]
    text = CliRunner().invoke(cli, ["info", "-m", str(out)])
    assert text.exit_code == 0 and file_sha256(out) in text.output and "K = 10" in text.output
    bad = _tamper(out, tmp_path / "bad.onnx", threshold_meta=9.9)
    res = CliRunner().invoke(cli, ["info", "-m", str(bad)])
    assert res.exit_code == 2 and "integrity" in res.output


# --------------------------------------------------------------------------- labels, light runtime
def test_label_summary_counts():
    outputs = {
        "predicted_class": np.array([0, 1, 2, 0, 1, 2]),
        "input_valid": np.array([True, True, True, True, True, False]),
        "is_adversarial": np.array([False, True, False, True, False, True]),
    }
    # class_labels [5, 6, 7]: labels are values of the classes; 9 lies outside them (OOD)
    s = label_summary(outputs, [5, 6, 7], np.array([5, 6, 5, 5, 9, 7]))
    assert s["inputs"] == 6 and s["invalid"] == 1 and s["flagged"] == 3
    assert s["unknown_class"] == 1 and s["correct"] == 4 and s["accuracy"] == pytest.approx(4 / 5)
    assert s["flag_rate_correct"] == pytest.approx(3 / 4) and s["flag_rate_wrong"] == 0.0
    assert s["flag_rate_unknown_class"] == 0.0
    assert s["missed_and_wrong"] == pytest.approx(2 / 6)  # index 2 (wrong) and 4 (unknown), unflagged
    assert s["accuracy_unflagged"] == pytest.approx(1 / 2)  # unflagged with a known class: 0 (right), 2
    with pytest.raises(HgdefendError, match="labels: expected one label per input"):
        label_summary(outputs, [5, 6, 7], np.zeros(5, np.int64))


def test_detect_labels_add_accuracy_and_flag_rates(exported, digits, tmp_path):
    out, _ = exported
    x, y = digits.test.x.numpy(), digits.test.y.numpy()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    res = CliRunner().invoke(
        cli,
        ["detect", "-m", str(out), "--input", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy")],
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    got = OnnxDetector(out).run(x)
    correct = got["predicted_class"] == y
    assert [r["correct"] for r in rows] == correct.tolist()
    assert [r["true_label"] for r in rows] == y.tolist()
    flagged = got["is_adversarial"]
    assert f"accuracy {100 * correct.mean():.1f} %" in res.stderr
    assert f"{100 * flagged[~correct].mean():.1f} % of wrong" in res.stderr
    np.save(tmp_path / "short.npy", y[:5])
    res = CliRunner().invoke(
        cli,
        [
            "detect",
            "-m",
            str(out),
            "--input",
            str(tmp_path / "x.npy"),
            "--labels",
            str(tmp_path / "short.npy"),
        ],
    )
    assert res.exit_code == 2 and "--labels: expected one label per input" in res.output


HEAVY = ("torch", "sklearn", "scipy", "onnx")
BLOCK_HEAVY = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ImportError("blocked by the test: " + name)
sys.meta_path.insert(0, Block())
"""
RUN_CLI = f"""
from hgdefend.cli.main import cli
try:
    cli(sys.argv[1:], prog_name="hgdefend")
except SystemExit as exc:
    print("exit", exc.code, "loaded:", *(m for m in {HEAVY!r} if m in sys.modules))
"""


def test_detect_runs_where_torch_cannot_be_imported(exported, digits, tmp_path):
    import subprocess
    import sys

    out, _ = exported
    np.save(tmp_path / "x.npy", digits.test.x[:20].numpy())
    np.save(tmp_path / "y.npy", digits.test.y[:20].numpy())
    probe = subprocess.run(
        [sys.executable, "-c", BLOCK_HEAVY + "import torch"], capture_output=True, text=True
    )
    assert "blocked by the test: torch" in probe.stderr  # the block works
    args = ["detect", "-m", str(out), "--input", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy")]
    args += ["--out", str(tmp_path / "r.jsonl"), "--threads", "1", "--expected-sha256", file_sha256(out)]
    res = subprocess.run([sys.executable, "-c", BLOCK_HEAVY + RUN_CLI, *args], capture_output=True, text=True)
    assert res.stdout.strip() == "exit 0 loaded:", res.stdout + res.stderr
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["predicted_class"] for r in rows] == OnnxDetector(out).run(digits.test.x[:20].numpy())[
        "predicted_class"
    ].tolist()
    assert "accuracy" in res.stderr


# --------------------------------------------------------------------------- devices
def test_io_binding_path_matches_a_plain_run(exported, digits):
    out, _ = exported
    x = digits.test.x[:9].numpy()
    plain = OnnxDetector(out, device="cpu", io_binding=False).run(x, batch_size=4)
    bound = OnnxDetector(out, device="cpu", io_binding=True).run(x, batch_size=4)
    for name in plain:
        np.testing.assert_array_equal(plain[name], bound[name])


def _cuda_detector(path):
    try:
        return OnnxDetector(path, device="cuda")
    except HgdefendError as exc:
        pytest.skip(f"no usable CUDA provider here: {exc}")


def test_cuda_device_matches_cpu(exported, digits):
    out, _ = exported
    det = _cuda_detector(out)
    assert det.providers[0] == "CUDAExecutionProvider" and det.io_binding and det.device == "cuda:0"
    x = digits.test.x.numpy()
    ref = OnnxDetector(out, device="cpu").run(x)
    got = det.run(x)
    assert np.abs(got["probabilities"] - ref["probabilities"]).max() <= 1e-4
    np.testing.assert_array_equal(got["input_valid"], ref["input_valid"])


def test_cuda_request_without_a_gpu_is_a_clear_error(exported):
    import onnxruntime as ort

    from hgdefend.export.runtime import _gpu_present

    if "CUDAExecutionProvider" in ort.get_available_providers() and _gpu_present():
        pytest.skip("a GPU is visible: test_cuda_device_matches_cpu covers this machine")
    with pytest.raises(HgdefendError, match="device: 'cuda' requested"):
        OnnxDetector(exported[0], device="cuda")
    with pytest.raises(HgdefendError, match="device: expected"):
        OnnxDetector(exported[0], device="gpu")


# --------------------------------------------------------------------------- no grouped convolutions
@pytest.mark.parametrize("kernel", ["unfold", "loop"])
def test_export_without_grouped_convolutions(small_hg, digits, tmp_path, kernel):
    export_onnx(small_hg, 3, tmp_path / "grouped.onnx", seed=1, threshold=1.0, parity_inputs=digits.test.x)
    res = export_onnx(
        small_hg, 3, tmp_path / "e.onnx", seed=1, threshold=1.0, parity_inputs=digits.test.x, kernel=kernel
    )
    assert res.kernel == kernel and read_metadata(tmp_path / "e.onnx")["kernel"] == kernel
    assert res.max_abs_prob_diff <= 1e-4 and {r["inputs"] for r in res.parity} == {
        "random",
        "real",
        "invalid",
    }
    model = onnx.load(str(tmp_path / "e.onnx"))
    groups = [a.i for n in model.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert all(g == 1 for g in groups)
    ref_groups = onnx.load(str(tmp_path / "grouped.onnx")).graph.node
    assert any(a.i > 1 for n in ref_groups if n.op_type == "Conv" for a in n.attribute if a.name == "group")
    x = digits.test.x.numpy()
    a, b = OnnxDetector(tmp_path / "grouped.onnx").run(x), OnnxDetector(tmp_path / "e.onnx").run(x)
    assert np.abs(a["member_logits"] - b["member_logits"]).max() <= 1e-4
    with pytest.raises(HgdefendError, match="kernel: expected one of"):
        export_onnx(small_hg, 3, tmp_path / "z.onnx", kernel="vmap")


# --------------------------------------------------------------------------- evaluate what ships
@pytest.fixture(scope="module")
def five_classes(tmp_path_factory):
    """A model trained on digits 0-4 (5-9 held out as OOD), exported beside its model file."""
    from hgdefend.recipes import train_model

    five = load_data("digits", in_classes="0-4")
    trained = train_model(five, seed=0, device="cpu", steps=150, progress=False)
    folder = tmp_path_factory.mktemp("five")
    model = folder / "model.safetensors"
    save_model(model, trained.hypergan, dataset=five.describe(), training=trained.training)
    out = folder / "e.onnx"
    export_onnx(model, 6, out, seed=2, calibration="digits", exporter="legacy")
    return five, trained.hypergan, model, out


def test_evaluate_onnx_equals_the_torch_ensemble(five_classes, tmp_path):
    from hgdefend.detectors.metrics import binomial_ci, detection_metrics
    from hgdefend.evaluate import EvaluateOptions, run_evaluate
    from hgdefend.probabilities import predict

    five, hg, _, out = five_classes
    report, paths = run_evaluate(EvaluateOptions(onnx=str(out), out=str(tmp_path / "r"), quiet=True))
    # the torch ensemble with the same members and the same threshold
    ens, thr = hg.ensemble(6, seed=2), OnnxDetector(out).threshold
    with torch.no_grad():
        test_logits, ood_logits = ens.member_logits(five.test.x), ens.member_logits(five.ood.x)
    s_test = compute_scores(test_logits)["entropy"].numpy().astype(np.float64)
    s_ood = compute_scores(ood_logits)["entropy"].numpy().astype(np.float64)
    flags = s_test > thr
    wrong = (predict(test_logits) != five.test.y).numpy()
    ref = detection_metrics(s_test, s_ood, thr, target_fpr=0.05, clean_wrong=wrong, seed=0)

    t, r = report["detection"]["thresholds"][0], report["detection"]["rows"][0]
    assert t["threshold"] == thr and t["n_test"] == len(five.test) == flags.size
    assert t["realised_fpr"] == flags.mean()
    assert t["realised_fpr_ci"] == binomial_ci(int(flags.sum()), flags.size)
    assert r["ood"] == "digits held-out classes" and r["score"] == "entropy"
    assert r["auroc"] == pytest.approx(ref["auroc"], abs=1e-12)
    assert r["auroc_ci"] == pytest.approx(ref["auroc_ci"], abs=1e-12)
    assert r["tpr_at_threshold"] == ref["tpr_at_threshold"] == r["flagged_by_graph"]
    assert r["tpr_exact_ci"] == ref["tpr_exact_ci"] and r["flag_disagreements"] == 0
    assert report["accuracy"]["ensembles"]["6"] == pytest.approx(1 - wrong.mean(), abs=1e-6)
    assert report["model"]["onnx_sha256"] == file_sha256(out) == report["meta"]["onnx_sha256"]
    assert "exported file's entropy threshold" in report["summary"]["lines"][1]
    assert "attacks" not in report and "transfer" not in report and "diversity" not in report
    assert "Transfer" not in paths["markdown"].read_text()


def test_evaluate_onnx_transfer_attacks_are_scored_by_the_graph(five_classes, tmp_path):
    from hgdefend.attacks import FGSM
    from hgdefend.evaluate import EvaluateOptions, run_evaluate

    five, hg, _, out = five_classes
    opts = EvaluateOptions(onnx=str(out), out=str(tmp_path / "r"), quiet=True, attacks="fgsm", eps="0.2",
                           protocols="fixed", attack_inputs=20, attack_bootstrap=0)  # fmt: skip
    report, _ = run_evaluate(opts)
    sec = report["transfer"]
    assert sec["same_weights_max_abs_logit_diff"] <= 1e-3
    rows = {r["crafted_on"]: r for r in sec["rows"]}
    assert set(rows) == {"exported networks", "fresh sample (seed 3)"}
    x, y = five.test.x[:20], five.test.y[:20]
    x_adv = FGSM(hg.ensemble(6, seed=2), 0.2)(x, y)
    got = OnnxDetector(out).run(x_adv.numpy())
    wrong = got["predicted_class"] != y.numpy()
    row = rows["exported networks"]
    assert row["onnx_accuracy"] == pytest.approx(1 - wrong.mean())
    assert row["tpr_at_threshold"] == pytest.approx(got["is_adversarial"].mean())
    assert row["missed_and_wrong"] == pytest.approx((wrong & ~got["is_adversarial"]).mean())
    assert sec["sanity"]["passed"] and len(sec["gate_rows"]) == 2


def test_evaluate_onnx_adaptive_attacks_fight_the_files_own_score_and_threshold(five_classes, tmp_path):
    from hgdefend.evaluate import EvaluateOptions, run_evaluate

    _, _, _, out = five_classes
    det = OnnxDetector(out)
    opts = EvaluateOptions(onnx=str(out), out=str(tmp_path / "r"), quiet=True,
                           attacks="apgd-ce-t,score-search", eps="0.2", protocols="adaptive",
                           attack_inputs=10, attack_steps=2, attack_targets=2, eot_members=2,
                           attack_bootstrap=0)  # fmt: skip
    report, _ = run_evaluate(opts)
    rows = report["transfer"]["rows"]
    assert [r["attack"] for r in rows] == ["apgd-ce-t", "score-search"]
    for r in rows:
        assert r["score"] == det.score and r["params"]["threshold"] == pytest.approx(det.threshold)
    assert rows[0]["params"]["targets"] == 2 and rows[1]["params"]["lam"].startswith("searched")


def test_evaluate_onnx_without_its_source_model(five_classes, model_file, tmp_path):
    from hgdefend.evaluate import EvaluateOptions, run_evaluate

    _, _, _, out = five_classes
    alone = tmp_path / "alone.onnx"
    alone.write_bytes(out.read_bytes())
    args = ["evaluate", "--onnx", str(alone), "--attacks", "fgsm", "--eps", "0.2", "--attack-inputs", "10"]
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "r"), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["transfer"]["skipped"].startswith("No transfer attacks: the source model is not found")
    assert report["model"]["source_model"].startswith("not found")
    assert any(line.startswith("Attacks: No transfer attacks") for line in report["summary"]["lines"])
    assert "detection" in report and report["detection"]["thresholds"]
    with pytest.raises(HgdefendError, match="model: .* was exported from a model file with SHA-256"):
        run_evaluate(EvaluateOptions(onnx=str(out), model=str(model_file), out=str(tmp_path / "r2")))


def test_export_report_describes_the_exported_file(five_classes, tmp_path):
    _, _, model, _ = five_classes
    out = tmp_path / "x.onnx"
    res = CliRunner().invoke(cli, ["export", "-m", str(model), "-k", "3", "--seed", "5", "--out", str(out),
                                   "--threshold-from", "digits", "--exporter", "legacy", "--report",
                                   str(tmp_path / "rep"), "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    result = json.loads(res.output)
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["model"]["onnx_sha256"] == result["sha256"] == file_sha256(out)
    assert report["model"]["members"] == 3 and report["model"]["seed"] == 5
    assert report["detection"]["thresholds"][0]["threshold"] == result["threshold"]
    assert (tmp_path / "rep" / "report.html").is_file()


def test_parity_refuses_a_graph_that_fails_open(small_hg, digits, tmp_path, monkeypatch):
    forward = EnsembleGraph.forward

    def fail_open(self, x):  # flags only by score, as format version 1 did
        *rest, valid, flag = forward(self, x)
        return (*rest, valid, flag & valid)

    monkeypatch.setattr(EnsembleGraph, "forward", fail_open)
    # threshold above log(10): no input is flagged by its score, so only the validity check flags
    with pytest.raises(ParityError, match="'inputs': 'invalid'"):
        export_onnx(
            small_hg, 2, tmp_path / "e.onnx", threshold=3.0, exporter="legacy", parity_inputs=digits.test.x
        )
    assert not (tmp_path / "e.onnx").exists()


def test_latency_benchmark_times_each_kernel(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "export_latency.py"
    args = "--members 2 --batches 1 --kernels grouped loop --no-torch --threads 1 --min-reps 1".split()
    args += ["--min-seconds", "0.01", "--exporter", "legacy", "--out", str(tmp_path / "r.json")]
    res = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    rows = json.loads((tmp_path / "r.json").read_text())["results"]
    timed = {r["kernel"]: r for r in rows if "median_ms" in r}
    assert set(timed) == {"grouped", "loop"} and timed["grouped"]["relative_to_grouped"] == 1.0
    assert all(r["max_abs_prob_diff"] <= 1e-4 for r in rows if "max_abs_prob_diff" in r)


# --------------------------------------------------------------------------- batch 0
@pytest.mark.parametrize("kernel", EXPORT_KERNELS)
def test_every_kernel_answers_an_empty_batch_in_plain_onnxruntime(small_hg, tmp_path, kernel):
    """The graph declares a dynamic batch axis, so a serving stack may send a batch of 0: it must get
    empty outputs, not a crashed process (a subprocess, so that a crash fails this test only)."""
    path = tmp_path / "e.onnx"
    export_onnx(small_hg, 3, path, seed=1, threshold=1.0, kernel=kernel)
    code = (
        "import json, sys, numpy as np, onnxruntime as ort\n"
        "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
        "i = s.get_inputs()[0]\n"
        "shape = [0] + [int(d) for d in i.shape[1:]]\n"
        "outs = s.run(None, {i.name: np.zeros(shape, np.float32)})\n"
        "print(json.dumps({o.name: list(v.shape) for o, v in zip(s.get_outputs(), outs)}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    shapes = json.loads(res.stdout.strip().splitlines()[-1])
    assert shapes["member_logits"][:2] == [3, 0] and shapes["probabilities"][0] == 0
    assert all(v[0] == 0 for k, v in shapes.items() if k != "member_logits"), shapes
    assert "is_adversarial" in shapes
