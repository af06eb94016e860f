"""The CLI as a user runs it: exit codes, one-line errors, files written."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

import hgdefend
from hgdefend.cli.main import COMMANDS, cli

HEAVY = ("torch", "sklearn", "art", "onnx", "onnxruntime")


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
    res = CliRunner().invoke(cli, ["info", "--model", str(trained / "model.safetensors"), "--json"])
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
            "--no-attacks",
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
        (["evaluate", "--members", "0"], "members"),
        (["evaluate", "--model", "/nonexistent/model.safetensors"], "does not exist"),
        (["train", "--dataset", "mnist", "--out", "x"], "data_root"),
        (["info", "--model", "/nonexistent.safetensors"], "does not exist"),
        (["info", "-m", "/nonexistent.safetensors"], "does not exist"),
        (["train", "--out", "x", "--time-budget", "-1"], "time_budget_s"),
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


def _python(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return res.stdout


@pytest.mark.parametrize(
    "code",
    [
        "import hgdefend",
        "import hgdefend.cli.main",
        "import hgdefend.cli.train, hgdefend.cli.info, hgdefend.cli.export, hgdefend.cli.detect",
        "from hgdefend.cli.main import cli; cli(['--help'], prog_name='hgdefend', standalone_mode=False)",
    ],
)
def test_start_up_imports_no_heavy_library(code):
    """`hgdefend --help` stays fast: torch, scikit-learn, ART and onnx load only when a command runs."""
    out = _python(f"import sys\n{code}\nprint('loaded:', *(m for m in {HEAVY!r} if m in sys.modules))")
    assert out.splitlines()[-1] == "loaded:", f"{code!r} imported {out.splitlines()[-1]}"


def test_public_names_load_lazily():
    assert set(hgdefend.__all__) <= set(dir(hgdefend))
    for name in hgdefend.__all__:
        assert getattr(hgdefend, name) is not None, name
    from hgdefend.training import Trainer

    assert hgdefend.Trainer is Trainer
    with pytest.raises(AttributeError):
        _ = hgdefend.no_such_name


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_python_m_hgdefend_prints_the_version(flag):
    res = subprocess.run([sys.executable, "-m", "hgdefend", flag], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"hgdefend, version {hgdefend.__version__}"


def test_command_list_matches_the_commands():
    """The group lists commands without importing them; its one-line summaries must stay true."""
    ctx = cli.make_context("hgdefend", ["--help"], resilient_parsing=True)
    for name, summary in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
        assert command.get_short_help_str(limit=1000) == summary, name
    assert cli.get_command(ctx, "nope") is None
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0 and all(name in res.output for name in COMMANDS)


@pytest.mark.parametrize(
    "command, takes, lacks",
    [
        ("train", ("--seed", "--device", "--threads", "--quiet"), ()),
        ("evaluate", ("--seed", "--device", "--threads", "--quiet"), ()),
        ("export", ("--seed", "--threads", "--quiet"), ("--device",)),
        ("detect", ("--device", "--threads", "--quiet"), ("--seed",)),
        ("info", (), ("--seed", "--device", "--threads", "--quiet")),
    ],
)
def test_shared_options_are_where_the_readme_says(command, takes, lacks):
    """README's table of shared options; every command names its model with --model / -m."""
    ctx = cli.make_context("hgdefend", ["--help"], resilient_parsing=True)
    opts = {o for p in cli.get_command(ctx, command).params for o in p.opts}
    assert set(takes) <= opts and not set(lacks) & opts
    if command != "train":
        assert {"--model", "-m"} <= opts
