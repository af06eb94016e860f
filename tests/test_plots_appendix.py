"""The paper's appendix pictures (issue 13, item 7): ``evaluate --plots filters,entropy-images`` draws
the same first-layer filter of 25 sampled networks (A.1) and the in-distribution test images with the
highest entropy and the OOD images with the lowest (A.2); the report links and embeds them, and the
chosen images are the extremes of an entropy computed here independently."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from hgdefend import load_data, load_model, save_model
from hgdefend.cli.main import cli
from hgdefend.data import Split
from hgdefend.ensemble import SampledEnsemble
from hgdefend.evaluate import EvaluateOptions
from hgdefend.evaluate.plots import first_layer_filters, plot_filters, plot_image_grid
from hgdefend.targets import Flatten, Linear, TargetSpec, cifar10_paper, regression_1d

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MEMBERS = 30


@pytest.fixture(scope="module")
def pictured(trained_digits, digits, tmp_path_factory):
    """`evaluate --plots filters,entropy-images` on a saved digits model with a generated OOD file."""
    base = tmp_path_factory.mktemp("appendix")
    model = base / "model.safetensors"
    save_model(model, trained_digits, dataset=digits.describe(), training={"steps": 400, "seed": 0})
    rng = np.random.default_rng(0)
    ood = base / "noise.npz"
    np.savez(ood, x=rng.random((200, 8, 8)).astype(np.float32), y=rng.integers(0, 10, 200))
    out = base / "report"
    args = ["evaluate", "--model", str(model), "--members", str(MEMBERS), "--ood", str(ood),
            "--out", str(out), "--no-attacks", "--threads", "1", "-q",
            "--plots", "filters,entropy-images"]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    return out, report, model, ood


def _valid_png(path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_pictures_are_valid_pngs_linked_and_embedded_in_the_report(pictured):
    out, report, _, _ = pictured
    sec = report["pictures"]
    names = [sec["filters"]["plot"]] + [g["plot"] for g in sec["entropy_images"]]
    assert names == ["appendix_filters.png", "appendix_test_highest_entropy.png",
                     "appendix_ood0_lowest_entropy.png"]  # fmt: skip
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "## Pictures (the paper's appendix A.1-A.2)" in md
    for name in names:
        w, h = _valid_png(out / name)
        assert w > 200 and h > 200
        assert f"]({name})" in md
        assert f'src="{name}"' not in html  # embedded as a data URI, not a dead link
    assert html.count('src="data:image/png;base64,') >= len(names) + 1


def test_filters_are_the_same_unit_of_the_first_25_fixed_networks(pictured):
    _, report, model, _ = pictured
    f = report["pictures"]["filters"]
    assert f == {**f, "param": "0.weight", "filter_index": 0, "networks": 25, "shape": [1, 3, 3], "seed": 0,
                 "kind": "convolution filter"}  # fmt: skip
    ens = load_model(model).hypergan.ensemble(MEMBERS, seed=0, value_range=(0.0, 1.0))
    drawn, info = first_layer_filters(ens)
    expected = ens.params["0.weight"][:25, 0].numpy()
    np.testing.assert_array_equal(drawn, expected)
    assert info["networks"] == 25 and drawn.shape == (25, 1, 3, 3)
    assert np.ptp(drawn.reshape(25, -1), axis=0).max() > 0  # the 25 networks differ


def _entropy(ens: SampledEnsemble, split: Split) -> np.ndarray:
    """Predictive entropy H[mean_k softmax], in float64, from the members' logits."""
    with torch.no_grad():
        p = torch.softmax(ens.member_logits(split.x).double(), -1).mean(0)
    return (-(p * torch.log(p.clamp_min(1e-300))).sum(-1)).numpy()


def _assert_extremes(group: dict, h: np.ndarray, highest: bool) -> None:
    idx = np.array(group["indices"])
    assert h.size > 16 and len(set(idx.tolist())) == len(idx) == 16 and group["of"] == h.size
    np.testing.assert_allclose(group["entropy"], h[idx], rtol=1e-4, atol=1e-5)
    rest = np.delete(h, idx)
    if highest:
        assert np.all(np.diff(h[idx]) <= 1e-6) and h[idx].min() >= rest.max() - 1e-5
    else:
        assert np.all(np.diff(h[idx]) >= -1e-6) and h[idx].max() <= rest.min() + 1e-5


def test_chosen_images_are_the_highest_entropy_test_and_lowest_entropy_ood(pictured):
    _, report, model, ood = pictured
    test_group, ood_group = report["pictures"]["entropy_images"]
    assert (test_group["split"], test_group["order"]) == ("in-distribution test", "highest entropy")
    assert (ood_group["split"], ood_group["order"]) == (f"OOD: {ood}", "lowest entropy")
    ens = load_model(model).hypergan.ensemble(MEMBERS, seed=0, value_range=(0.0, 1.0))
    data = load_data("digits")
    _assert_extremes(test_group, _entropy(ens, data.test), highest=True)
    assert test_group["classes"] == data.test.y[test_group["indices"]].tolist()
    other = load_data(str(ood), split_seed=data.split_seed).test
    _assert_extremes(ood_group, _entropy(ens, other), highest=False)


def test_no_pictures_section_without_plots_and_bad_names_fail_fast(tmp_path):
    opts = EvaluateOptions(plots="filters, entropy-images,filters").checked()
    assert opts.plots == ("filters", "entropy-images")
    assert EvaluateOptions().checked().plots == ()
    with pytest.raises(ValueError, match="plots: unknown name 'filter'"):
        EvaluateOptions(plots="filter").checked()
    res = CliRunner().invoke(cli, ["evaluate", "--plots", "filters,pictures", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert "plots" in res.output and "pictures" in res.output
    assert not (tmp_path / "r" / "model.safetensors").exists()  # refused before any training


def test_mlp_rgb_and_strip_filters(tmp_path):
    """An MLP's first weight row is drawn as the input image; RGB conv filters in colour; a row
    that is no image (regression) as a strip."""
    mlp = TargetSpec("mlp", (1, 8, 8), (Flatten(), Linear(64, 10)))
    ens = SampledEnsemble(mlp, mlp.init_params(30, torch.Generator().manual_seed(0)))
    f, info = first_layer_filters(ens, index=3)
    np.testing.assert_array_equal(f, ens.params["1.weight"][:25, 3].reshape(25, 1, 8, 8).numpy())
    assert info["kind"].startswith("linear weight row, reshaped") and info["shape"] == [1, 8, 8]
    cifar = cifar10_paper()
    f_rgb, info = first_layer_filters(SampledEnsemble(cifar, cifar.init_params(9)), n=25)
    assert f_rgb.shape == (9, 3, 3, 3) and info["networks"] == 9
    reg = regression_1d()
    f_strip, info = first_layer_filters(SampledEnsemble(reg, reg.init_params(4)))
    assert f_strip.shape == (4, 1, 1, 1) and "strip" in info["kind"]
    with pytest.raises(ValueError, match=r"index: expected a unit in \[0, 10\), got 10"):
        first_layer_filters(ens, index=10)
    with pytest.raises(ValueError, match="n: expected"):
        first_layer_filters(ens, n=0)
    for name, arr in (("mlp.png", f), ("rgb.png", f_rgb), ("strip.png", f_strip)):
        _valid_png(plot_filters(arr, tmp_path / name, title=name))
    grid = plot_image_grid(np.random.default_rng(0).random((5, 3, 32, 32)), [f"H={i}" for i in range(5)],
                           tmp_path / "grid.png", title="rgb")  # fmt: skip
    _valid_png(grid)
    with pytest.raises(ValueError, match="filters: expected finite"):
        plot_filters(np.full((2, 1, 3, 3), np.nan), tmp_path / "nan.png", title="x")
    with pytest.raises(ValueError, match="images: expected"):
        plot_image_grid(np.zeros((2, 1, 4, 4)), ["one title"], tmp_path / "bad.png", title="x")
