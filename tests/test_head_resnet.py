"""Issue #16 (b): torchvision's ResNet-18 protected end to end as a user would through the CLI — a few
training steps of a head HyperGAN over it, `evaluate`, an ART attack through the estimator, and ONNX
export with its parity check — on generated 3×32×32 inputs (random init: nothing can be downloaded)."""

from __future__ import annotations

import json

import numpy as np
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from hgdefend.backbone import load_backbone
from hgdefend.cli.main import cli

NET = """
import torchvision

def build():
    return torchvision.models.resnet18(num_classes=10)
"""


def run(*args: object):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


def test_resnet18_head_hypergan_trains_evaluates_is_attacked_and_exports(tmp_path):
    from art.attacks.evasion import FastGradientMethod

    from hgdefend import load_model
    from hgdefend.art import HyperGANClassifier

    (tmp_path / "net.py").write_text(NET)
    spec = f"{tmp_path / 'net.py'}:build"
    torch.manual_seed(0)
    model = load_backbone(spec)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "data.npz", x=rng.random((120, 3, 32, 32), dtype=np.float32), y=rng.integers(0, 10, 120)
    )
    backbone = ["--backbone", spec, "--backbone-weights", tmp_path / "w.safetensors"]
    data = ["--dataset", tmp_path / "data.npz"]
    common = ["--quiet", "--threads", "2", "--seed", "0"]

    run("train", *data, *backbone, "--generate", "fc", "--steps", "3", "--nets-per-step", "4",
        "--batch-size", "16", "--hidden", "32", "--eval-every", "3", "--checkpoint-every", "3",
        "--out", tmp_path / "m", *common)  # fmt: skip
    model_file = tmp_path / "m" / "model.safetensors"
    info = json.loads(run("info", "-m", model_file, *backbone, "--json").output)
    assert info["config"]["target"]["kind"] == "head" and info["config"]["target"]["generate"] == ["fc"]

    run("evaluate", "-m", model_file, *data, *backbone, "--members", "5", "--no-attacks", "--out",
        tmp_path / "r", *common)  # fmt: skip
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert "5" in report["accuracy"]["ensembles"]

    hg = load_model(model_file, module=load_backbone(spec, tmp_path / "w.safetensors")).hypergan
    clf = HyperGANClassifier(hg, members=5, clip_values=(0.0, 1.0), device_type="cpu")
    x = rng.random((8, 3, 32, 32), dtype=np.float32)
    x_adv = FastGradientMethod(clf, eps=0.05).generate(x)
    assert np.abs(x_adv - x).max() <= 0.05 + 1e-6 and not np.allclose(x_adv, x)

    out = tmp_path / "resnet_heads.onnx"
    run("export", "-m", model_file, *backbone, "--members", "5", "--out", out, *common)  # parity-checked
    assert out.is_file() and out.stat().st_size > 40e6  # the frozen ResNet-18 (11 M floats) is in the graph
