"""The CLI as a user runs it: exit codes, one-line errors, files written."""

import json

import pytest
from click.testing import CliRunner

from hgdefend.cli.main import cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    res = CliRunner().invoke(
        cli,
        [
            "train",
            "--out",
            str(out),
            "--steps",
            "60",
            "--quiet",
            "--eval-every",
            "30",
            "--checkpoint-every",
            "30",
        ],
    )
    assert res.exit_code == 0, res.output
    return out


def test_train_writes_model_checkpoint_and_log(trained):
    assert (trained / "model.safetensors").is_file()
    assert (trained / "checkpoint.safetensors").is_file()
    log = json.loads((trained / "train_log.json").read_text())
    assert log["history"][-1]["step"] == 60


def test_info_shows_hash_and_counts(trained):
    res = CliRunner().invoke(cli, ["info", str(trained / "model.safetensors"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert len(out["sha256"]) == 64
    assert out["parameters"]["target_network"] == 16 * 9 + 16 + 32 * 16 * 9 + 32 + 128 * 10 + 10


def test_evaluate_with_model_writes_report(trained, tmp_path):
    res = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--model",
            str(trained / "model.safetensors"),
            "--members",
            "10",
            "--out",
            str(tmp_path),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["meta"]["model_sha256"] == report["model"]["sha256"]
    assert set(report["accuracy"]["ensembles"]) == {"5", "10"}
    assert "relative std" in (tmp_path / "report.md").read_text()


def test_interrupted_training_resumes(tmp_path):
    base = ["train", "--out", str(tmp_path), "--steps", "40", "--quiet", "--eval-every", "20"]
    res = CliRunner().invoke(cli, [*base, "--time-budget", "0"])  # stops after one step
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "train_log.json").read_text())["history"][-1]["step"] == 1
    res = CliRunner().invoke(cli, [*base, "--resume"])
    assert res.exit_code == 0, res.output
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert [h["step"] for h in log["history"]] == [1, 20, 40]
    res = CliRunner().invoke(cli, [*base, "--steps", "50", "--resume"])
    assert res.exit_code == 2 and "another training config" in res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "--dataset", "imagenet"], "unknown dataset"),
        (["evaluate", "--members", "0"], "ensemble size"),
        (["evaluate", "--model", "/nonexistent/model.safetensors"], "does not exist"),
        (["train", "--dataset", "mnist", "--out", "x"], "data_root"),
        (["info", "/nonexistent.safetensors"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HGDEFEND_DATA_ROOT", raising=False)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_corrupt_model_does_not_overwrite_on_failed_train(trained, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    res = CliRunner().invoke(cli, ["evaluate", "--model", str(bad), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "corrupt or truncated" in res.output
    assert bad.read_bytes() == b"not a model"
