"""`hgdefend train --backbone FILE.py:build --backbone-weights W --generate ...` and the commands that
load such a model (issue #16 item 3): the user's module and weights from files, refused cleanly."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from hgdefend import HgdefendError
from hgdefend.backbone import load_backbone
from hgdefend.cli.main import cli
from hgdefend.targets import backbone_sha256

MODULE = """
import torch
from torch import nn

def build():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10))

def not_a_module():
    return 3

VALUE = 1
"""


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error_line(res) -> str:
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """net.py with build(), its weights (seed 0) as safetensors and .pt, other weights (seed 1)."""
    d = tmp_path_factory.mktemp("backbone")
    (d / "net.py").write_text(MODULE)
    spec = f"{d / 'net.py'}:build"
    for name, seed in (("w", 0), ("other", 1)):
        torch.manual_seed(seed)
        m = load_backbone(spec)
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(d / f"{name}.safetensors"))
        torch.save(m.state_dict(), d / f"{name}.pt")
    return d


@pytest.fixture(scope="module")
def head_model(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    res = run("train", "--dataset", "digits", *backbone_args(files), "--generate", "3", "--steps", "5",
              "--eval-every", "5", "--checkpoint-every", "5", "--quiet", "--threads", "1",
              "--out", out)  # fmt: skip
    assert res.exit_code == 0, res.output
    return out / "model.safetensors"


def backbone_args(files, weights: str = "w.safetensors") -> list:
    return ["--backbone", f"{files / 'net.py'}:build", "--backbone-weights", files / weights]


def test_load_backbone_reads_safetensors_and_pt_without_pickle(files):
    a = load_backbone(f"{files / 'net.py'}:build", files / "w.safetensors")
    b = load_backbone(f"{files / 'net.py'}:build", files / "w.pt")
    assert backbone_sha256(a) == backbone_sha256(b)
    other = load_backbone(f"{files / 'net.py'}:build", files / "other.pt")
    assert backbone_sha256(a) != backbone_sha256(other)
    assert not a.training


def test_train_over_a_backbone_records_its_hash_and_info_shows_it(files, head_model):
    want = backbone_sha256(load_backbone(f"{files / 'net.py'}:build", files / "w.safetensors"))
    res = run("info", "-m", head_model, *backbone_args(files), "--json")
    assert res.exit_code == 0, res.output
    target = json.loads(res.output)["config"]["target"]
    assert target["kind"] == "head" and target["generate"] == ["3"] and target["backbone_sha256"] == want
    res = run("info", "-m", head_model, *backbone_args(files))
    assert res.exit_code == 0, res.output
    assert f"backbone   sha256 {want}" in res.output and "generated: 3" in res.output


def test_evaluate_a_model_over_a_backbone(files, head_model, tmp_path):
    res = run("evaluate", "--model", head_model, *backbone_args(files), "--no-attacks", "--members", "5",
              "--quiet", "--threads", "1", "--out", tmp_path / "report")  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["accuracy"] and report["model"]


@pytest.mark.parametrize("command", ["info", "evaluate", "export"])
def test_a_model_over_a_backbone_without_it_names_backbone(files, head_model, tmp_path, command):
    extra = {"info": [], "evaluate": ["--no-attacks", "--out", tmp_path / "r"],
             "export": ["--members", "2", "--out", tmp_path / "e.onnx"]}[command]  # fmt: skip
    line = one_error_line(run(command, "-m", head_model, *extra))
    assert "--backbone" in line and "protects a pretrained model" in line


def test_other_weights_are_refused_at_load(files, head_model):
    line = one_error_line(run("info", "-m", head_model, *backbone_args(files, "other.safetensors")))
    assert "--backbone-weights" in line and "not the pretrained model" in line


def test_a_backbone_for_a_built_in_model_is_refused(files, tmp_path):
    out = tmp_path / "plain"
    assert run("train", "--steps", "2", "--quiet", "--threads", "1", "--out", out).exit_code == 0
    line = one_error_line(run("info", "-m", out / "model.safetensors", *backbone_args(files)))
    assert "--backbone" in line and "built-in target" in line


@pytest.mark.parametrize(
    "spec, words",
    [
        ("net.py", "expected FILE.py:FUNCTION"),
        ("missing.py:build", "does not exist"),
        ("net.py:nope", "has no function 'nope'"),
        ("net.py:not_a_module", "must return a torch.nn.Module, got int"),
        ("net.py:VALUE", "is not a function"),
        ("no_such_package_hgd.mod:build", "no module"),
    ],
)
def test_bad_backbone_specs_are_one_line_naming_backbone(files, tmp_path, spec, words):
    where = spec if spec.startswith("no_such") else str(files / spec)
    res = run("train", "--backbone", where, "--generate", "3", "--steps", "1", "--out", tmp_path / "o")
    line = one_error_line(res)
    assert "--backbone:" in line and words in line


def test_weights_that_do_not_fit_name_backbone_weights(files, tmp_path):
    bad = tmp_path / "bad.safetensors"
    save_file({"0.weight": torch.zeros(4, 1, 3, 3), "9.bias": torch.zeros(2), "3.weight": torch.zeros(5, 5)},
              str(bad))  # fmt: skip
    line = one_error_line(run("info", "-m", tmp_path / "x.safetensors", "--backbone",
                              f"{files / 'net.py'}:build", "--backbone-weights", bad))  # fmt: skip
    assert "--backbone-weights" in line
    assert "missing: 0.bias" in line and "unexpected: 9.bias" in line
    assert "3.weight [5, 5] vs [10, 256]" in line


class NotATensor:
    pass


def test_a_pickled_object_in_pt_weights_is_refused_by_weights_only(files, tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"0.weight": NotATensor()}, evil)
    with pytest.raises(HgdefendError, match=r"--backbone-weights.*pickled object.*NotATensor.*weights_only"):
        load_backbone(f"{files / 'net.py'}:build", evil)
    res = run("train", *backbone_args(files, "w.pt")[:2], "--backbone-weights", evil, "--generate", "3",
              "--steps", "1", "--out", tmp_path / "o")  # fmt: skip
    assert "--backbone-weights" in one_error_line(res)


def test_generate_and_backbone_go_together(files, tmp_path):
    line = one_error_line(run("train", "--generate", "3", "--steps", "1", "--out", tmp_path / "a"))
    assert "--generate: needs --backbone" in line
    line = one_error_line(run("train", *backbone_args(files), "--steps", "1", "--out", tmp_path / "b"))
    assert "--generate" in line
    line = one_error_line(run("info", "-m", tmp_path / "x.safetensors", "--backbone-weights", files / "w.pt"))
    assert "--backbone-weights: needs --backbone" in line


def test_generate_names_a_submodule_the_backbone_lacks(files, tmp_path):
    res = run("train", *backbone_args(files), "--generate", "fc", "--steps", "1", "--out", tmp_path / "o")
    line = one_error_line(res)
    assert "no submodule 'fc'" in line


def test_export_of_a_model_over_a_backbone(files, head_model, tmp_path):
    """The dynamo exporter traces the frozen part and the heads into one graph (parity checked)."""
    out = tmp_path / "e.onnx"
    res = run("export", "-m", head_model, *backbone_args(files), "--members", "3", "--out", out, "--quiet",
              "--threads", "1")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert out.is_file()


# ------------------------------------------------------------------ the exported file of such a model
@pytest.fixture(scope="module")
def head_onnx(files, head_model):
    """`export --report` of the model over the backbone, beside its model file (as the metadata names it)."""
    out, rep = head_model.parent / "head.onnx", head_model.parent / "export_report"
    res = run("export", "-m", head_model, *backbone_args(files), "--members", "3", "--out", out, "--report",
              rep, "--quiet", "--threads", "1")  # fmt: skip
    assert res.exit_code == 0, res.output
    return out, rep


def test_export_report_of_a_model_over_a_backbone(head_onnx):
    """`export --report` evaluates the exported file with the user's model passed on to the source."""
    out, rep = head_onnx
    report = json.loads((rep / "report.json").read_text())
    assert report["model"]["onnx_path"] == str(out) and report["model"]["members"] == 3
    assert report["model"]["source_model"].startswith("given with --model")
    # the file's networks resampled from the source model (with the user's module) match the graph
    assert report["model"]["resampled_networks_max_abs_logit_diff"] < 1e-4
    assert report["accuracy"] and report["detection"]


def test_evaluate_onnx_of_a_head_export_runs_transfer_attacks(files, head_onnx, tmp_path):
    """The source model beside the file loads with --backbone, so transfer attacks are crafted on it."""
    out, _ = head_onnx
    res = run("evaluate", "--onnx", out, *backbone_args(files), "--attacks", "pgd", "--eps", "0.3",
              "--attack-inputs", "20", "--attack-steps", "3", "--quiet", "--threads", "1",
              "--out", tmp_path / "r")  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["model"]["source_model"].startswith("found beside the ONNX file")
    transfer = report["transfer"]
    assert transfer["same_weights_max_abs_logit_diff"] < 1e-4
    assert {r["crafted_on"] for r in transfer["rows"]} == {"exported networks", "fresh sample (seed 1)"}
    assert all(0.0 <= r["onnx_accuracy"] <= 1.0 for r in transfer["rows"])


def test_evaluate_onnx_of_a_head_export_without_its_backbone(files, head_model, head_onnx, tmp_path):
    """Without --backbone the source beside the file is skipped, naming the option; --model without it
    and other weights are one error line each."""
    out, _ = head_onnx
    res = run("evaluate", "--onnx", out, "--attacks", "pgd", "--attack-inputs", "10", "--attack-steps", "2",
              "--quiet", "--threads", "1", "--out", tmp_path / "r")  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert set(report["transfer"]) == {"skipped"} and "--backbone" in report["transfer"]["skipped"]
    assert "--backbone" in report["model"]["source_model"] and "not used" in report["model"]["source_model"]
    line = one_error_line(run("evaluate", "--onnx", out, "-m", head_model, "--out", tmp_path / "s"))
    assert "--backbone" in line and "protects a pretrained model" in line
    line = one_error_line(run("evaluate", "--onnx", out, *backbone_args(files, "other.safetensors"),
                              "--out", tmp_path / "t"))  # fmt: skip
    assert "--backbone-weights" in line and "not the pretrained model" in line


def test_evaluate_backbone_needs_a_model_or_an_onnx_file(files, tmp_path):
    line = one_error_line(run("evaluate", *backbone_args(files), "--out", tmp_path / "r"))
    assert "--backbone" in line and "--model" in line and "--onnx" in line


# ------------------------------------------------------------------ --compact: a block as scales / low rank
def test_train_with_compact_records_the_modes_and_loads_back(files, tmp_path):
    from hgdefend import load_model

    out = tmp_path / "compact"
    res = run("train", "--dataset", "digits", *backbone_args(files), "--generate", "0,3", "--compact",
              "0=scales,3=lowrank:2", "--steps", "3", "--quiet", "--threads", "1", "--out", out)  # fmt: skip
    assert res.exit_code == 0, res.output
    res = run("info", "-m", out / "model.safetensors", *backbone_args(files), "--json")
    assert res.exit_code == 0, res.output
    target = json.loads(res.output)["config"]["target"]
    assert target["compact"] == {"0": "scales", "3": "lowrank:2"}
    assert target["param_shapes"]["0.weight_scale"] == [4] and target["param_shapes"]["3.weight_u"] == [10, 2]
    res = run("info", "-m", out / "model.safetensors", *backbone_args(files))
    assert "generated: 0 (scales), 3 (lowrank:2)" in res.output
    module = load_backbone(f"{files / 'net.py'}:build", files / "w.safetensors")
    loaded = load_model(out / "model.safetensors", module=module).hypergan
    assert loaded.target.compact == {"0": "scales", "3": "lowrank:2"}


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--generate", "0,3", "--compact", "lowrank:0"], "--compact: expected 'full', 'scales' or 'lowrank"),
        (["--generate", "0,3", "--compact", "scale"], "--compact: expected 'full', 'scales'"),
        (["--generate", "0,3", "--compact", "fc=scales"], "--compact: expected a mode, or NAME=MODE"),
        (["--generate", "0,3", "--compact", "0=lowrank:x"], "--compact 0: expected 'full'"),
        (["--compact", "scales"], "--generate"),
    ],
)
def test_a_bad_compact_value_is_one_line_naming_compact(files, tmp_path, extra, words):
    line = one_error_line(run("train", "--dataset", "digits", *backbone_args(files), *extra, "--steps", "1",
                              "--out", tmp_path / "o"))  # fmt: skip
    assert words in line
