"""Fail closed on non-finite models and scores (issue 17, item 4): export refuses a model whose
networks or parity outputs hold NaN/inf, and the exported graph flags an input whose score is not
finite; each test is named after a failure it fixes."""

import re

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from hgdefend import HyperGAN, save_model
from hgdefend.cli.main import cli
from hgdefend.ensemble import SampledEnsemble
from hgdefend.errors import HgdefendError
from hgdefend.export import ParityError, export_onnx
from hgdefend.export.graph import EnsembleGraph, _export
from hgdefend.targets import digits_small


def _nan_model():
    torch.manual_seed(0)
    hg = HyperGAN(digits_small(), noise_dim=16, code_dim=8, hidden=32)
    with torch.no_grad():
        hg.generators[0][2].bias[0] = float("nan")  # every sampled network gets a NaN weight
    return hg


def test_model_with_nan_weights_is_refused_by_export(tmp_path):
    out = tmp_path / "e.onnx"
    with pytest.raises(HgdefendError, match="NaN or infinite weights"):
        export_onnx(_nan_model(), 4, out, exporter="legacy")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_model_file_with_nan_weights_is_refused_by_export_cli(tmp_path):
    model = tmp_path / "m.safetensors"
    save_model(model, _nan_model(), dataset={"name": "digits", "classes": list(range(10))})
    res = CliRunner().invoke(
        cli,
        ["export", "-m", str(model), "-k", "4", "--out", str(tmp_path / "e.onnx"), "--exporter", "legacy"],
    )
    assert res.exit_code == 2 and res.output.startswith("error: "), res.output
    assert "NaN" in res.output and not (tmp_path / "e.onnx").exists()


def _huge_ensemble():
    """Finite weights whose logits overflow float32: NaN probabilities and scores."""
    torch.manual_seed(0)
    hg = HyperGAN(digits_small(), noise_dim=16, code_dim=8, hidden=32)
    params = {n: t * 1e30 if n.endswith("weight") else t for n, t in hg.sample_frozen(3, seed=0).items()}
    return SampledEnsemble(hg.target, params, seed=0)


def test_parity_with_nan_scores_is_refused_not_passed_as_max_dp_nan(tmp_path):
    out = tmp_path / "e.onnx"
    with pytest.raises(ParityError, match="NaN/inf") as info:
        export_onnx(_huge_ensemble(), None, out, threshold=0.5, exporter="legacy")
    assert re.search(r"'non_finite': [1-9]", str(info.value)), str(info.value)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_graph_flags_input_whose_score_is_not_finite():
    """The graph as onnxruntime runs it: a NaN score is never below the threshold, so the input is
    flagged (``is_adversarial`` true) although it is a valid input."""
    ens = _huge_ensemble()
    graph = EnsembleGraph(ens, "entropy", 0.5, "grouped").eval()
    proto = _export(graph, ens, "legacy", 18)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((5, *ens.target.input_shape), dtype=np.float32)
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x}), strict=True))
    assert not np.isfinite(out["score_entropy"]).any()
    assert out["input_valid"].all() and out["is_adversarial"].all()
