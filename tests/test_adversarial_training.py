"""Adversarial training: at equal steps it raises robust accuracy on digits compared with plain
training, every method runs through the one batched member path, and the file records it."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from hgdefend import HgdefendError, TrainConfig, load_model
from hgdefend.adversarial import craft
from hgdefend.attacks import PGD
from hgdefend.cli.main import cli
from hgdefend.probabilities import predict
from hgdefend.recipes import train_model
from hgdefend.targets import digits_small
from hgdefend.training import deep_ensemble

STEPS = 150
EPS = 0.1
N = 300


def _robust_accuracy(ens, data, eps=EPS):
    x, y = data.test.x[:N], data.test.y[:N]
    x_adv = PGD(ens, eps, steps=20, seed=1)(x, y)
    with torch.no_grad():
        return float((predict(ens.forward_logits(x_adv)) == y).float().mean()), float(
            (predict(ens.forward_logits(x)) == y).float().mean()
        )


@pytest.fixture(scope="module")
def trained(digits):
    """The same seed and steps, plain and with each adversarial method (eps 0.1 on digits)."""
    return {
        name: train_model(
            digits,
            seed=0,
            steps=STEPS,
            nets_per_step=8,
            adversarial=name,
            adv_eps=EPS,
            adv_steps=2,
            progress=False,
        ).hypergan  # fmt: skip
        for name in ("none", "pgd", "fgsm", "trades")
    }


def test_adversarial_training_raises_robust_accuracy_at_equal_steps(trained, digits):
    plain_robust, plain_clean = _robust_accuracy(trained["none"].ensemble(10, seed=5), digits)
    for name in ("pgd", "fgsm", "trades"):
        robust, clean = _robust_accuracy(trained[name].ensemble(10, seed=5), digits)
        assert robust > plain_robust + 0.10, (name, plain_robust, robust)
        assert clean > 0.80, (name, clean)  # still a classifier


def test_crafted_inputs_stay_in_the_ball_and_raise_the_loss(trained, digits):
    hg = trained["none"]
    params = hg.sample_frozen(8, torch.Generator().manual_seed(0))
    x, y = digits.test.x[:64], digits.test.y[:64]
    for method in ("pgd", "fgsm", "trades"):
        x_adv = craft(hg.target.forward, params, x, y, method=method, eps=EPS, steps=5, alpha=None,
                      generator=torch.Generator().manual_seed(1))  # fmt: skip
        assert float((x_adv - x).abs().max()) <= EPS + 1e-6
        assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
        before = torch.nn.functional.cross_entropy(hg.target.forward(params, x).mean(0), y)
        after = torch.nn.functional.cross_entropy(hg.target.forward(params, x_adv).mean(0), y)
        assert after > before, method


def test_deep_ensemble_baseline_trains_adversarially_too(digits):
    cfg = TrainConfig(steps=300, batch_size=64, lr=3e-3, seed=0)
    plain = deep_ensemble(digits_small(10), digits.train, 2, cfg, progress=False)
    adv_cfg = TrainConfig(
        steps=300, batch_size=64, lr=3e-3, seed=0, adversarial="pgd", adv_eps=EPS, adv_steps=3
    )
    robust = deep_ensemble(digits_small(10), digits.train, 2, adv_cfg, progress=False)
    assert _robust_accuracy(robust, digits)[0] > _robust_accuracy(plain, digits)[0] + 0.10


@pytest.mark.parametrize(
    "field,value",
    [("adversarial", "madry"), ("adv_eps", -0.1), ("adv_eps", 0.0), ("adv_steps", 0), ("adv_alpha", 0.0),
     ("trades_beta", float("nan")), ("adv_eps_warmup", -1), ("adv_eps_warmup", 2.5)],
)  # fmt: skip
def test_bad_adversarial_config_is_one_clear_error(field, value):
    kw = {"adversarial": "pgd", field: value}
    with pytest.raises(HgdefendError, match=field):
        TrainConfig(**kw)


def test_model_file_records_adversarial_training_and_info_shows_it(tmp_path):
    out = tmp_path / "m"
    args = ["--steps", "5", "--adversarial", "trades", "--eps", "0.2", "--adv-steps", "2",
            "--adv-eps-warmup", "4", "--quiet"]  # fmt: skip
    r = CliRunner().invoke(cli, ["train", "--out", str(out), *args, "--threads", "1"])
    assert r.exit_code == 0, r.output
    recipe = load_model(out / "model.safetensors").config["training"]["recipe"]
    assert (recipe["adversarial"], recipe["adv_eps"], recipe["adv_steps"]) == ("trades", 0.2, 2)
    info = CliRunner().invoke(cli, ["info", "--model", str(out / "model.safetensors")])
    assert "trades at L∞ eps 0.2, 2 steps, beta 6, eps warmed up over 4 steps" in info.output
    bad = CliRunner().invoke(
        cli, ["train", "--out", str(tmp_path / "b"), "--adversarial", "pgd", "--eps", "-1"]
    )
    assert bad.exit_code == 2 and "adv_eps" in bad.output


def test_diversity_objectives_keep_working_with_adversarial_training(digits):
    """Both terms enter the step (their logs), and the file's recipe records both."""
    tm = train_model(digits, seed=0, steps=3, nets_per_step=4, adversarial="fgsm", adv_eps=EPS,
                     diversity="offdata", diversity_weight=0.5, eval_every=3, progress=False)  # fmt: skip
    last = tm.result.history[-1]
    assert {"adv_loss", "diversity"} <= set(last)
    assert (tm.training["recipe"]["adversarial"], tm.training["recipe"]["diversity"]) == ("fgsm", "offdata")


def test_the_training_eps_ramps_up_over_the_warm_up(monkeypatch, digits):
    """Step s crafts at eps · min(1, (s + 1) / warm-up): a linear ramp, then the full budget."""
    from hgdefend import training

    used: list[float] = []
    real = training.adversarial_loss

    def recording(*args, **kwargs):
        used.append(kwargs["eps"])
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "adversarial_loss", recording)
    train_model(digits, seed=0, steps=6, nets_per_step=2, adversarial="fgsm", adv_eps=0.2, adv_eps_warmup=4,
                progress=False)  # fmt: skip
    assert used == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2, 0.2])
