"""Ensemble and batch sizes are checked against the memory estimate before anything is allocated
(issue 17, item 2): each test is named after an argument that exhausted memory before."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hgdefend import HyperGAN, TrainConfig, Trainer, load_data, save_model
from hgdefend.cli.main import cli
from hgdefend.export import export_onnx
from hgdefend.hypergan import ensemble_bytes
from hgdefend.resources import ResourceLimitError
from hgdefend.targets import digits_small

REFUSAL = r"needs about [0-9.]+ [KMGTP]i?B, more than the memory limit of 1\.0 GiB"


def _small():
    torch.manual_seed(0)
    return HyperGAN(digits_small(), noise_dim=16, code_dim=8, hidden=32)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(path, _small(), dataset={"name": "digits", "classes": list(range(10))}, training={"steps": 3})
    return str(path)


@pytest.fixture(autouse=True)
def _limit(monkeypatch):
    monkeypatch.setenv("HGDEFEND_MAX_MEMORY", "1G")


def _one_line_refusal(res, name):
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {name}"), res.output
    assert "more than the memory limit of 1.0 GiB" in lines[0] and "--max-memory" in lines[0]


def test_estimate_counts_weights_generators_and_activations():
    hg = _small()
    weights = sum(g.numel for g in hg.groups)
    one = ensemble_bytes(hg.target, 1, hidden=32, noise_dim=16)
    assert one == 4 * (weights + 32 * len(hg.groups) + 16)
    assert ensemble_bytes(hg.target, 10, hidden=32, noise_dim=16) == 10 * one
    with_batch = ensemble_bytes(hg.target, 1, batch=8)
    assert with_batch > ensemble_bytes(hg.target, 1)
    assert ensemble_bytes(hg.target, 3, batch=8, training=True) == 2 * 3 * with_batch


def test_sampling_1000000000_networks_is_refused_before_allocation():
    with pytest.raises(ResourceLimitError, match=r"k: 1000000000 networks: " + REFUSAL):
        _small().ensemble(1_000_000_000)
    assert _small().ensemble(3).k == 3  # small ensembles are untouched


def test_members_1000000000_in_evaluate_is_refused_before_training(model_file, monkeypatch, tmp_path):
    res = CliRunner().invoke(
        cli, ["evaluate", "-m", model_file, "--members", "1000000000", "--out", str(tmp_path / "r"), "-q"]
    )
    _one_line_refusal(res, "members: 2 ensembles of 1000000000 networks")
    # without a model file the refusal comes before the default HyperGAN is trained
    import hgdefend.evaluate.pipeline as pipeline

    def no_training(*a, **k):  # pragma: no cover - reached only if the guard failed
        raise AssertionError("trained before checking --members")

    monkeypatch.setattr(pipeline, "train_model", no_training)
    res = CliRunner().invoke(cli, ["evaluate", "--members", "1000000000", "--out", str(tmp_path / "s"), "-q"])
    _one_line_refusal(res, "members: 2 ensembles")
    assert not (tmp_path / "s").exists()


def test_members_1000000000_in_export_is_refused(model_file, tmp_path):
    out = tmp_path / "e.onnx"
    res = CliRunner().invoke(cli, ["export", "-m", model_file, "-k", "1000000000", "--out", str(out)])
    assert res.exit_code == 2 and "k: at most 1000000 networks fit an exported file" in res.output
    res = CliRunner().invoke(cli, ["export", "-m", model_file, "-k", "900000", "--out", str(out)])
    _one_line_refusal(res, "k: 900000 networks in the graph")
    assert not out.exists() and not list(tmp_path.glob(".e.onnx*"))


def test_parity_batch_huge_in_export_is_refused(model_file, tmp_path):
    args = [
        "export",
        "-m",
        model_file,
        "-k",
        "4",
        "--parity-batch",
        "100000000",
        "--out",
        str(tmp_path / "e"),
    ]
    _one_line_refusal(CliRunner().invoke(cli, args), "k: 4 networks in the graph (torch, ONNX and "
                      "onnxruntime copies) and a parity batch of 100000000")  # fmt: skip


def test_nets_per_step_1e7_in_train_is_refused(tmp_path):
    res = CliRunner().invoke(
        cli, ["train", "--nets-per-step", "10000000", "--steps", "1", "--out", str(tmp_path / "t"), "-q"]
    )
    _one_line_refusal(res, "nets_per_step: 10000000 networks × batch_size")
    assert not (tmp_path / "t" / "model.safetensors").exists()


def test_batch_size_huge_with_many_nets_in_train_is_refused():
    data = load_data("digits")
    with pytest.raises(
        ResourceLimitError, match=f"nets_per_step: 100000 networks × batch_size {len(data.train)} "
    ):
        Trainer(_small(), data.train, TrainConfig(steps=1, nets_per_step=100_000, batch_size=10**9))


def test_max_memory_flag_raises_the_limit_and_names_itself(model_file, tmp_path):
    args = ["evaluate", "-m", model_file, "--members", "1000000000", "--out", str(tmp_path / "r"), "-q"]
    res = CliRunner().invoke(cli, [*args, "--max-memory", "2G"])
    assert res.exit_code == 2 and "memory limit of 2.0 GiB" in res.output, res.output


def test_export_and_detect_take_max_memory(model_file, tmp_path):
    args = [
        "export",
        "-m",
        model_file,
        "-k",
        "900000",
        "--out",
        str(tmp_path / "e.onnx"),
        "--max-memory",
        "2G",
    ]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2 and "memory limit of 2.0 GiB" in res.output, res.output
    res = CliRunner().invoke(cli, ["detect", "--help"])
    assert "--max-memory" in res.output


def test_hidden_1000000000_in_train_is_refused_before_allocation(tmp_path):
    res = CliRunner().invoke(
        cli, ["train", "--hidden", "1000000000", "--steps", "1", "--out", str(tmp_path / "t")]
    )
    _one_line_refusal(res, "hidden: a HyperGAN with hidden=1000000000")
    hg = _small()  # the count matches what is built
    from hgdefend.hypergan import _hypergan_params

    built = sum(p.numel() for p in hg.parameters())
    assert _hypergan_params(16, 8, 32, hg.groups, True, True) == built


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux", reason="RLIMIT_AS is Linux-only here")
@pytest.mark.parametrize("extra", [[], ["--max-memory", "100G"]])
def test_a_memory_limited_process_gets_one_line_not_a_traceback(tmp_path, extra):
    """A 1 MB .npz that inflates to 1 GiB, under ``ulimit -v`` 1.5 GiB: the guard reads the process's
    limit (not the machine's RAM) and refuses; with the guard raised past it (--max-memory 100G) the
    allocation itself fails, which is one line and exit 2 as well."""
    import resource

    torch.manual_seed(0)
    save_model(tmp_path / "m.safetensors", HyperGAN(digits_small(), noise_dim=16, code_dim=8, hidden=32),
               dataset={"name": "digits", "classes": list(range(10))})  # fmt: skip
    export_onnx(tmp_path / "m.safetensors", 2, tmp_path / "e.onnx", threshold=0.5)
    big = tmp_path / "big.npz"
    np.savez_compressed(big, x=np.zeros((2**22, 1, 8, 8), np.float32))
    assert big.stat().st_size < 2 << 20

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))

    code = "import sys; from hgdefend.cli.main import main; sys.argv[0] = 'hgdefend'; main()"
    args = ["detect", "-m", str(tmp_path / "e.onnx"), "--input", str(big), *extra]
    env = {k: v for k, v in os.environ.items() if k != "HGDEFEND_MAX_MEMORY"}  # the default limit
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         preexec_fn=limit, timeout=300, env=env)  # fmt: skip
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
    assert ("memory limit of 1.2 GiB" in lines[0]) if not extra else ("memory" in lines[0])
