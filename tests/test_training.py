import pytest
import torch

from hgdefend import HyperGAN, TrainConfig, Trainer, load_data
from hgdefend.targets import digits_small, regression_1d
from hgdefend.training import deep_ensemble, mc_dropout, quick_eval, single_network
from hgdefend.validation import HgdefendError


def test_default_digits_recipe_reaches_95_percent(trained_digits, digits):
    ens = trained_digits.ensemble(100, seed=1)
    res = quick_eval(ens, digits.test, "classification")
    assert res["ensemble_acc"] >= 0.95
    assert res["member_acc_min"] >= 0.85


def _small(seed=0, **kw):
    torch.manual_seed(seed)
    return HyperGAN(digits_small(), noise_dim=16, code_dim=8, hidden=32, **kw)


def test_resume_from_interrupted_run_matches(tmp_path, digits):
    """Interrupt after 5 of 10 steps (time budget), resume, compare with an uninterrupted run."""
    cfg = dict(steps=10, nets_per_step=4, batch_size=32, pretrain_max_steps=5, checkpoint_every=5)
    full = _small()
    Trainer(full, digits.train, TrainConfig(**cfg), progress=False, device="cpu").fit()
    ckpt = tmp_path / "c.safetensors"
    part = _small()
    t = Trainer(part, digits.train, TrainConfig(**cfg), progress=False, device="cpu", checkpoint=ckpt)
    orig = t._step

    def interrupting(step, g):
        if step == 5:
            raise KeyboardInterrupt
        return orig(step, g)

    t._step = interrupting
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    resumed = _small(seed=9)
    Trainer(resumed, digits.train, TrainConfig(**cfg), progress=False, device="cpu", checkpoint=ckpt).fit(
        resume=True
    )
    for (n, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), n


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, digits):
    t = Trainer(
        _small(),
        digits.train,
        TrainConfig(steps=2),
        progress=False,
        device="cpu",
        checkpoint=tmp_path / "none.safetensors",
    )
    with pytest.raises(HgdefendError, match="no checkpoint"):
        t.fit(resume=True)


def test_regression_hypergan_learns_cubic():
    data = load_data("cubic")
    torch.manual_seed(0)
    hg = HyperGAN(regression_1d(), noise_dim=16, code_dim=16, hidden=64, beta=0.1)
    cfg = TrainConfig(steps=300, nets_per_step=8, batch_size=20, lr=3e-3, lr_mixer=3e-3)
    before = quick_eval(hg.ensemble(8, seed=0), data.train, "regression")["ensemble_mse"]
    Trainer(hg, data.train, cfg, progress=False, device="cpu").fit()
    after = quick_eval(hg.ensemble(8, seed=0), data.train, "regression")["ensemble_mse"]
    assert after < 0.2 * before


def test_baselines_train_through_the_batched_path(digits):
    cfg = TrainConfig(steps=150, batch_size=64, lr=3e-3)
    de = deep_ensemble(digits_small(), digits.train, 3, cfg, progress=False, device="cpu")
    assert de.k == 3 and de.kind == "deep-ensemble"
    assert quick_eval(de, digits.test, "classification")["ensemble_acc"] > 0.85
    # independent initialisations: members differ
    assert not torch.allclose(de.params["0.weight"][0], de.params["0.weight"][1])
    single = single_network(digits_small(), digits.train, cfg, progress=False, device="cpu")
    assert single.k == 1
    mcd = mc_dropout(digits_small(), digits.train, 8, cfg, progress=False, device="cpu")
    assert mcd.k == 8 and mcd.mc_dropout
    logits = mcd.member_logits(digits.test.x[:16])
    assert not torch.allclose(logits[0], logits[1])  # different dropout masks


def test_bad_training_config():
    with pytest.raises(HgdefendError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(HgdefendError, match="lr"):
        TrainConfig(lr=float("nan"))
