"""The CIFAR-10 / CIFAR-5 path end to end on generated 3×32×32 arrays in torchvision's layout (issue 13,
item 6): the real data cannot be obtained here, so no CIFAR figure is measured, but every step a user
runs (the data layer, ``hgdefend train`` / ``evaluate`` with the paper's CIFAR-10 target net, the
weight-norm benchmark) is exercised, with ``--trust-data-root`` still required."""

from __future__ import annotations

import json
import runpy
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hgdefend import load_data
from hgdefend.cli.main import cli
from hgdefend.io import load_model
from tests.cifar_fixture import REPO, fake_cifar10_arrays, fake_cifar10_fixture, run_with_fake_cifar  # noqa: F401

SMALL = ["--hidden", "64"]  # a narrow HyperGAN (the target is the paper's CIFAR-10 net): seconds per step
NORMS = str(REPO / "benchmarks" / "paper_weight_norms.py")


def test_generated_cifar10_loads_as_torchvision_lays_it_out(fake_cifar10):
    d = load_data("cifar10", root=fake_cifar10, trust_data_root=True)
    assert d.input_shape == (3, 32, 32) and d.num_classes == 10 and d.classes == list(range(10))
    assert (len(d.train), len(d.calib), len(d.test)) == (200, 50, 50)
    x, y = fake_cifar10_arrays(40, seed=0)  # data_batch_1, as written: channel-major rows
    np.testing.assert_allclose(d.train.x[:40].numpy(), x / 255.0, atol=1e-7)
    assert d.train.y[:40].tolist() == y.tolist()
    five = load_data("cifar10", root=fake_cifar10, trust_data_root=True, in_classes="0-4")  # CIFAR-5
    assert five.num_classes == 5 and five.meta["num_classes_all"] == 10
    assert set(five.ood.y.tolist()) == set(range(5, 10)) and set(five.test.y.tolist()) <= set(range(5))
    with pytest.raises(ValueError, match="trust-data-root"):
        load_data("cifar10", root=fake_cifar10)


def test_train_and_evaluate_cifar5_with_the_paper_target_net(fake_cifar10, tmp_path):
    """`hgdefend train` on classes 0-4, then `hgdefend evaluate` of that model (classes 5-9 as the
    OOD set, a short attack section, the appendix pictures in colour), as a user runs them."""
    root = str(fake_cifar10)
    data = ["--dataset", "cifar10", "--data-root", root, "--trust-data-root"]
    runner = CliRunner()
    res = runner.invoke(cli, ["train", *data, "--in-classes", "0-4", "--steps", "3", "--nets-per-step", "4",
                              *SMALL, "--out", str(tmp_path / "m"), "--threads", "1", "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    model = tmp_path / "m" / "model.safetensors"
    loaded = load_model(model)
    assert loaded.config["target"]["name"] == "cifar10_paper"
    assert loaded.config["dataset"]["classes"] == [0, 1, 2, 3, 4]

    out = tmp_path / "report"
    res = runner.invoke(cli, ["evaluate", "--model", str(model), *data, "--members", "10",
                              "--attack-inputs", "8", "--attack-steps", "2", "--eps", "0.03",
                              "--plots", "filters,entropy-images", "--out", str(out),
                              "--threads", "1", "-q", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    ood = report["detection"]["ood_sets"]
    assert ood == [{"name": "cifar10 held-out classes", "size": 50 - report["detection"]["test_size"]}]
    assert report["attacks"]["methods"] and report["pictures"]["filters"]["shape"] == [3, 3, 3]
    for name in (
        "appendix_filters.png",
        "appendix_test_highest_entropy.png",
        "appendix_ood0_lowest_entropy.png",
    ):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"

    # without --trust-data-root the pickles are not read: one line, exit 2
    res = runner.invoke(cli, ["evaluate", "--model", str(model), "--dataset", "cifar10", "--data-root", root,
                              "--out", str(tmp_path / "refused"), "-q"])  # fmt: skip
    assert (
        res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and "--trust-data-root" in res.output
    )


def test_cli_in_a_subprocess_reads_the_generated_cifar10(fake_cifar10, tmp_path):
    """`python -m hgdefend train` as a separate process (what run_with_fake_cifar gives other scripts)."""
    proc = run_with_fake_cifar(["-m", "hgdefend", "train", "--dataset", "cifar10", "--data-root",
                                str(fake_cifar10), "--trust-data-root", "--steps", "2", "--nets-per-step",
                                "2", *SMALL, "--out", str(tmp_path / "m"), "--threads", "1",
                                "-q"])  # fmt: skip
    assert proc.returncode == 0 and (tmp_path / "m" / "model.safetensors").is_file()


def test_paper_weight_norms_quick_on_generated_cifar10(fake_cifar10, tmp_path, monkeypatch, capsys):
    out = tmp_path / "norms.json"
    args = [NORMS, "--dataset", "cifar10", "--data-root", str(fake_cifar10),
            "--trust-data-root", "--quick", "--quick-steps", "2", "--settings", "hypergan,neither,standard",
            "--members", "10", "--deep-members", "3", "--threads", "1", "--out", str(out)]  # fmt: skip
    d = json.loads(run_with_fake_cifar(args).stdout)
    assert d["dataset"] == "cifar10" and json.loads(out.read_text())["rows"] == d["rows"]
    rows = {r["setting"]: r for r in d["rows"]}
    assert list(rows) == ["hypergan", "neither", "standard"]
    for r in rows.values():
        assert r["training"]["steps"] == 2 and r["test_inputs"] == 50
        assert [e["layer"] for e in r["layers"]] == ["Conv1", "Conv2", "Conv3", "Linear1", "Linear2"]
        assert all(e["mean_norm"] > 0 and e["std_norm"] > 0 for e in r["layers"])
    table = runpy.run_path(NORMS)["markdown_table"](d)  # the RESULTS.md table: Table 4 beside ours
    assert (
        "Table 4 (HyperGAN - CIFAR-10" in table
        and "1.87 / 0.11 (σ²)" in table
        and "5.13 / 1.19 (σ²)" in table
    )

    # without --trust-data-root: refused in one line, exit 2, before any pickle is read (in-process)
    no_trust = [a for a in args if a != "--trust-data-root"]
    no_trust[no_trust.index("--threads") + 1] = str(torch.get_num_threads())
    monkeypatch.setattr(sys, "argv", no_trust)
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(NORMS, run_name="__main__")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--trust-data-root" in err and len(err.strip().splitlines()) == 1
