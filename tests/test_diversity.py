"""Diversity objectives: each changes what it claims on a tiny case at equal steps, and the model
file records which one trained it."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from hgdefend import HgdefendError, HyperGAN, TrainConfig, load_data, load_model
from hgdefend.cli.main import cli
from hgdefend.detectors.scores import mutual_information
from hgdefend.diversity import gradient_alignment, member_input_gradients, off_data_inputs, repulsion_loss
from hgdefend.ensemble import pairwise_disagreement
from hgdefend.recipes import train_model
from hgdefend.targets import digits_small

STEPS = 120


@pytest.fixture(scope="module")
def heldout():
    return load_data("digits", in_classes="0-4")


@pytest.fixture(scope="module")
def trained(heldout):
    """The same seed and steps with each objective (weight 1) and without."""
    return {
        name: train_model(
            heldout,
            seed=0,
            steps=STEPS,
            diversity=name,
            diversity_weight=0.0 if name == "none" else 1.0,
            progress=False,
        ).hypergan
        for name in ("none", "repulsion", "offdata", "gradient")
    }


def _logits(hg, x):
    return hg.ensemble(20, seed=3).member_logits(x)


def test_repulsion_raises_member_disagreement_on_ood_inputs(trained, heldout):
    base = pairwise_disagreement(_logits(trained["none"], heldout.ood.x))
    rep = pairwise_disagreement(_logits(trained["repulsion"], heldout.ood.x))
    assert rep > base + 0.1, (base, rep)


def test_offdata_raises_mutual_information_off_the_data_not_on_it(trained, heldout):
    base = mutual_information(_logits(trained["none"], heldout.ood.x)).mean()
    off = _logits(trained["offdata"], heldout.ood.x)
    clean = _logits(trained["offdata"], heldout.test.x)
    assert mutual_information(off).mean() > 3 * base
    assert mutual_information(off).mean() > 2 * mutual_information(clean).mean()  # agree on the data
    acc = (torch.softmax(clean, -1).mean(0).argmax(-1) == heldout.test.y).float().mean()
    assert acc > 0.95


def test_gradient_objective_lowers_input_gradient_alignment(trained, heldout):
    def align(hg):
        ens = hg.ensemble(8, seed=3)
        g = member_input_gradients(
            ens.target, ens.params, heldout.test.x[:64], heldout.test.y[:64], create_graph=False
        )
        return float(gradient_alignment(g))

    assert align(trained["gradient"]) < align(trained["none"]) - 0.03


def test_member_input_gradients_match_a_per_member_loop():
    spec = digits_small(5)
    params = spec.init_params(3, torch.Generator().manual_seed(0))
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3])
    got = member_input_gradients(spec, params, x, y, create_graph=False)
    for k in range(3):
        xk = x.clone().requires_grad_(True)
        one = {n: t[k : k + 1] for n, t in params.items()}
        loss = torch.nn.functional.cross_entropy(spec.forward(one, xk)[0], y, reduction="sum")
        (ref,) = torch.autograd.grad(loss, xk)
        torch.testing.assert_close(got[k], ref)


def test_repulsion_loss_is_lower_for_spread_members():
    same = torch.zeros(4, 6, 3)
    spread = torch.randn(4, 6, 3, generator=torch.Generator().manual_seed(0)) * 5
    assert repulsion_loss(same) == pytest.approx(1.0)  # identical members: the kernel is 1 everywhere
    assert repulsion_loss(spread) < 1.0
    assert repulsion_loss(spread[:1]) == 0.0


def test_off_data_inputs_stay_in_range_and_follow_the_generator():
    x = torch.rand(9, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    a = off_data_inputs(x, torch.Generator().manual_seed(1))
    b = off_data_inputs(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b) and not torch.equal(a, x)


def test_no_objective_trains_exactly_as_before(heldout):
    a = train_model(heldout, seed=0, steps=5, progress=False).hypergan
    b = train_model(heldout, seed=0, steps=5, diversity="none", diversity_weight=0.0, progress=False).hypergan
    for (n, t), (_, u) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(t, u), n


def test_bad_objectives_are_refused_by_name():
    with pytest.raises(HgdefendError, match="diversity: expected one of"):
        TrainConfig(diversity="dropout")
    with pytest.raises(HgdefendError, match="diversity_weight"):
        TrainConfig(diversity="offdata", diversity_weight=0.0)
    with pytest.raises(HgdefendError, match="diversity_weight"):
        TrainConfig(diversity="offdata", diversity_weight=float("nan"))


def test_without_a_mixer_each_layer_reads_its_own_noise():
    spec = digits_small(5)
    hg = HyperGAN(spec, noise_dim=3 * 8, code_dim=8, hidden=16, mixer=False)
    noise = torch.randn(2, 24)
    assert hg.mixer is None and torch.equal(hg.codes(noise).flatten(1), noise)
    with pytest.raises(ValueError, match="noise_dim"):
        HyperGAN(spec, noise_dim=10, code_dim=8, mixer=False)


def test_model_file_records_the_objective_and_info_shows_it(tmp_path):
    out = tmp_path / "m"
    res = CliRunner().invoke(
        cli,
        [
            "train",
            "--out",
            str(out),
            "--steps",
            "3",
            "--diversity",
            "repulsion",
            "--diversity-weight",
            "0.5",
            "--no-mixer",
            "--quiet",
            "--threads",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    loaded = load_model(out / "model.safetensors")
    recipe = loaded.config["training"]["recipe"]
    assert recipe["diversity"] == "repulsion" and recipe["diversity_weight"] == 0.5
    assert loaded.config["hypergan"]["mixer"] is False and loaded.hypergan.mixer is None
    shown = CliRunner().invoke(cli, ["info", "--model", str(out / "model.safetensors")])
    assert "diversity  repulsion (weight 0.5)" in shown.output
