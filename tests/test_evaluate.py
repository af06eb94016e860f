"""The evaluation pipeline as a user meets it: the summary on stdout, --json, the HTML report, the
dataset recorded in a model file, calibration and exact intervals."""

from __future__ import annotations

import json
import os
import stat
from html.parser import HTMLParser

import numpy as np
import pytest
from click.testing import CliRunner

from hgdefend import save_model
from hgdefend.cli.main import cli
from hgdefend.detectors.metrics import binomial_ci
from hgdefend.evaluate.accuracy import calibration_bins, expected_calibration_error


@pytest.fixture(scope="module")
def model_file(trained_digits, digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(path, trained_digits, dataset=digits.describe(), training={"steps": 400, "seed": 0})
    return path


@pytest.fixture(scope="module")
def noise_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("noise") / "noise.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((100, 8, 8)).astype(np.float32), y=rng.integers(0, 10, 100))
    return path


@pytest.fixture(scope="module")
def evaluated(model_file, noise_npz, tmp_path_factory):
    """`evaluate --json` on a given model with an OOD file: what a CI job would run."""
    out = tmp_path_factory.mktemp("report")
    args = [
        "evaluate",
        "--model",
        str(model_file),
        "--members",
        "10",
        "--ood",
        str(noise_npz),
        "--out",
        str(out),
        "--json",
        "--threads",
        "2",
        "--no-attacks",
    ]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout), res


def test_json_summary_names_the_operating_point_and_the_report(evaluated, noise_npz):
    out, summary, _ = evaluated
    op = summary["operating_point"]
    assert op["score"] == "entropy" and op["target_fpr"] == 0.05
    lo, hi = op["realised_fpr_ci"]
    assert 0 <= lo <= op["realised_fpr"] <= hi <= 1
    assert [o["name"] for o in op["ood"]] == [str(noise_npz)] and 0 <= op["ood"][0]["tpr"] <= 1
    assert summary["worst_finding"] is None and "none were run (--no-attacks)" in summary["lines"][-2]
    assert summary["report"]["html"] == str(out / "report.html")
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["lines"] == summary["lines"]


def test_text_summary_is_a_few_lines_and_progress_stays_out_of_logs(model_file, tmp_path):
    args = ["evaluate", "--model", str(model_file), "--members", "5", "--out", str(tmp_path), "--no-attacks"]
    res = CliRunner().invoke(cli, [*args, "--threads", "2"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert 3 <= len(lines) <= 8 and lines[0].startswith("Accuracy:") and lines[-1].startswith("Report: ")
    assert "it/s" not in res.stderr and "scoring" not in res.stderr  # stderr is not a terminal here


def test_report_html_is_self_contained_with_the_summary_first(evaluated):
    out, _, _ = evaluated

    class Collect(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tags: list[tuple[str, dict]] = []

        def handle_starttag(self, tag, attrs):
            self.tags.append((tag, dict(attrs)))

    text = (out / "report.html").read_text()
    p = Collect()
    p.feed(text)
    tags = [t for t, _ in p.tags]
    assert "script" not in tags and "link" not in tags
    h2 = [a.get("id") for t, a in p.tags if t == "h2"]
    assert h2[0] == "summary" and "detection-threshold-at-a-target-fpr-ood" in h2
    imgs = [a["src"] for t, a in p.tags if t == "img"]
    assert imgs and all(src.startswith("data:image/png;base64,") for src in imgs)
    assert "http://" not in text and "https://" not in text
    assert tags.count("table") >= 5


def test_findings_appear_once_and_the_accuracy_table_has_the_ensemble_used(evaluated):
    out, _, _ = evaluated
    report = json.loads((out / "report.json").read_text())
    assert set(report["accuracy"]["ensembles"]) == {"5", "10"}
    md = (out / "report.md").read_text()
    assert "ensemble of 10 (the one evaluated)" in md
    for f in report["findings"]:
        assert md.count(f) == 1
    cal = report["calibration"]
    assert (
        0 <= cal["ensemble_ece"] <= 1 and cal["single_network_ece"]["min"] <= cal["single_network_ece"]["max"]
    )
    assert (out / cal["plot"]).read_bytes()[:4] == b"\x89PNG"
    assert (out / report["detection"]["plots"]["det"]).is_file()


def test_files_follow_the_umask(evaluated):
    out, _, _ = evaluated
    old = os.umask(0o022)
    os.umask(old)
    for name in ("report.json", "report.md", "report.html"):
        mode = stat.S_IMODE((out / name).stat().st_mode)
        assert mode == 0o666 & ~old, (name, oct(mode))


def test_evaluate_uses_the_dataset_recorded_in_the_model_file(tmp_path):
    """A model trained on a 28×28 .npz evaluates without --dataset (it used to fall back to digits
    and fail: 'trained on input shape [1, 28, 28], dataset gives [1, 8, 8]')."""
    rng = np.random.default_rng(1)
    npz = tmp_path / "small28.npz"
    np.savez(npz, x=(rng.random((150, 28, 28)) * 255).astype(np.uint8), y=np.arange(150) % 3)
    runner = CliRunner()
    res = runner.invoke(
        cli,
        [
            "train",
            "--dataset",
            str(npz),
            "--steps",
            "2",
            "--out",
            str(tmp_path / "m"),
            "--quiet",
            "--threads",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        cli,
        [
            "evaluate",
            "--model",
            str(tmp_path / "m" / "model.safetensors"),
            "--members",
            "3",
            "--out",
            str(tmp_path / "r"),
            "--quiet",
            "--threads",
            "2",
            "--no-attacks",
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["data"]["name"] == str(npz) and report["data"]["input_shape"] == [1, 28, 28]


def test_a_failing_gate_prints_one_line_per_failed_limit(model_file, noise_npz, tmp_path):
    res = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--model",
            str(model_file),
            "--members",
            "5",
            "--ood",
            str(noise_npz),
            "--out",
            str(tmp_path),
            "--quiet",
            "--threads",
            "2",
            "--fail-under",
            "auroc=1.0,tpr=1.0",
            "--no-attacks",
        ],
    )
    assert res.exit_code == 1
    gate = json.loads((tmp_path / "report.json").read_text())["gate"]
    failed = [line for line in res.stderr.splitlines() if line.startswith("gate failed: ")]
    assert len(failed) == len(gate["failures"]) >= 1


def test_expected_calibration_error_on_known_cases():
    y = np.array([0, 1, 0, 1])
    onehot = np.eye(2)[y]
    assert expected_calibration_error(onehot, y) == 0.0  # confident and right
    sixty = np.tile([0.6, 0.4], (4, 1))  # always says class 0 with 60 %: right half the time
    assert expected_calibration_error(sixty, y) == pytest.approx(0.1)
    b = calibration_bins(sixty, y, bins=10)
    assert b["count"].sum() == 4 and np.nanmax(b["accuracy"]) == 0.5


def test_binomial_interval_is_exact_clopper_pearson():
    lo, hi = binomial_ci(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.3084971, abs=1e-6)  # 1 - 0.025 ** (1/10)
    lo, hi = binomial_ci(5, 10)
    assert lo < 0.5 < hi and lo == pytest.approx(1 - hi)


def test_evaluate_on_the_cubic_regression_toy(tmp_path):
    """Regression data: inputs in [-6, 6] are accepted (the ensembles take the data's range), the
    model file records a dataset with no classes, and no attack runs."""
    res = CliRunner().invoke(cli, ["evaluate", "--dataset", "cubic", "--train-steps", "30", "--members", "10",
                                   "--out", str(tmp_path), "--quiet", "--threads", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["data"]["task"] == "regression" and report["data"]["value_range"] == [-6.0, 6.0]
    assert "classes" not in report["data"] and "attacks" not in report
    assert "none were run" in " ".join(report["summary"]["lines"])
