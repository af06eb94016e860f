"""APGD-CE / APGD-DLR on digits (CPU, seconds): strength against PGD, budget and range, EOT calls,
argument checks, and the score-aware loss in describe()."""

from __future__ import annotations

import pytest
import torch

from hgdefend import HyperGAN
from hgdefend.attacks import APGD, APGDCE, APGDDLR, ATTACKS, PGD, FreshSamples, dlr_loss
from hgdefend.attacks.apgd import apgd_checkpoints
from hgdefend.recipes import default_recipe, default_spec
from hgdefend.validation import HgdefendError
from hgdefend.vocab import ATTACK_NAMES

N = 60


@pytest.fixture(scope="module")
def ens(digits_deep4):
    return digits_deep4


@pytest.fixture(scope="module")
def xy(digits, ens):
    x, y = digits.test.x[:N], digits.test.y[:N]
    ok = ens.predict(x) == y
    assert ok.float().mean() > 0.8
    return x[ok], y[ok]


def accuracy(ens, x_adv, y) -> float:
    return float((ens.predict(x_adv) == y).float().mean())


def test_apgd_ce_at_least_as_strong_as_pgd_with_the_same_gradients(ens, xy):
    x, y = xy
    for eps in (0.1, 0.15):
        pgd = accuracy(ens, PGD(ens, eps, steps=20)(x, y), y)  # 20 gradients
        apgd = accuracy(ens, APGD(ens, eps, steps=19)(x, y), y)  # 1 at the start + 19 = 20
        assert 0.2 < pgd < 0.95, (eps, pgd)  # PGD neither fails nor wins outright here
        assert apgd <= pgd, (eps, pgd, apgd)


def test_apgd_dlr_stays_in_budget_and_range(ens, xy):
    x, y = xy
    eps = 0.1
    atk = APGDDLR(ens, eps, steps=8, restarts=2)
    x_adv = atk(x, y)
    assert atk.name == "apgd-dlr" and x_adv.shape == x.shape
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert accuracy(ens, x_adv, y) < 1.0
    info = atk.last_info
    assert info["steps"] == 8 and info["target_calls"] == 2 * 9
    eta = info["final_step_size"]
    assert eta.shape == (len(x),) and float(eta.max()) <= 2 * eps + 1e-6
    assert float(eta.min()) < 2 * eps  # some examples stalled and had their step halved
    # the per-example "fooled" it reports is what the ensemble does on the returned points
    assert torch.equal(info["fooled"], ens.predict(x_adv) != y)


def test_eot_calls_the_target_eot_iter_times_per_step(digits, xy):
    x, y = xy[0][:16], xy[1][:16]
    hp, _ = default_recipe(digits)
    torch.manual_seed(0)
    hg = HyperGAN(default_spec(digits), **hp)  # untrained: EOT mechanics need samples, not accuracy

    def calls(steps: int, eot_iter: int) -> tuple[int, APGD]:
        sampler = FreshSamples(hg, 2, seed=1)
        atk = APGD(sampler, 0.1, steps=steps, eot_iter=eot_iter)
        x_adv = atk(x, y)
        assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6
        return sampler.calls, atk

    n3, atk = calls(3, 2)
    n5, _ = calls(5, 2)
    assert n5 - n3 == 2 * 2  # two fresh draws per extra step
    m5, _ = calls(5, 1)
    assert n5 - m5 == 5 + 1  # one extra draw per step and at the start
    assert atk.describe()["eot"]["eot"] == "fresh HyperGAN sample every call"
    assert atk.describe()["eot_iter"] == 2


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"eps": -0.1}, "eps"),
        ({"steps": 0}, "steps"),
        ({"loss": "foo"}, "loss"),
        ({"norm": "l2"}, "norm"),
        ({"eot_iter": 0}, "eot_iter"),
        ({"restarts": 0}, "restarts"),
        ({"rho": 1.5}, "rho"),
        ({"score": "nope"}, "score"),
    ],
)
def test_bad_arguments_name_the_argument(ens, kw, name):
    with pytest.raises(HgdefendError, match=name):
        APGD(ens, **kw)
    assert issubclass(HgdefendError, ValueError)


def test_score_aware_loss_is_described_and_used(ens, xy):
    x, y = xy[0][:8], xy[1][:8]
    plain = APGD(ens, 0.1, steps=2)
    aware = APGD(ens, 0.1, steps=2, score="entropy", lam=0.5)
    d = aware.describe()
    assert d["score"] == "entropy" and d["lam"] == 0.5 and d["loss"] == "ce_mean_prob - lam*entropy"
    assert "score" not in plain.describe() and plain.describe()["loss"] == "ce_mean_prob"
    assert not torch.allclose(plain.loss(x, y), aware.loss(x, y))
    assert APGDDLR(ens, score="entropy", lam=1.0).describe()["loss"] == "dlr_log_mean_prob - lam*entropy"


def test_dlr_loss_checkpoints_and_registry():
    logits = torch.tensor([[[3.0, 1.0, 0.0, -1.0]]])  # K=1, B=1: predicted 0, runner-up 1, third 2
    assert float(dlr_loss(logits, torch.tensor([0]))) < 0 < float(dlr_loss(logits, torch.tensor([3])))
    with pytest.raises(HgdefendError, match="loss"):
        dlr_loss(torch.zeros(1, 2, 2), torch.zeros(2, dtype=torch.long))
    assert apgd_checkpoints(100) == (22, 41, 57, 70, 80, 87, 93, 99)
    assert all(0 < w < 3 for w in apgd_checkpoints(3))
    assert ATTACKS["apgd-ce"] is APGDCE and ATTACKS["apgd-dlr"] is APGDDLR
    assert set(ATTACKS) == set(ATTACK_NAMES)


def test_detector_aware_loss_lowers_an_input_detectors_score(ens, xy):
    """A detector that reads the input (here: mean brightness) enters the loss; with lam > 0 the
    attack keeps that score lower than the plain attack does."""
    x, y = xy

    def brightness(inp, member_logits):
        return inp.flatten(1).mean(1) * 100

    plain = APGD(ens, 0.2, steps=10)(x, y)
    aware_atk = APGD(ens, 0.2, steps=10, detector=brightness, lam=1.0)
    aware = aware_atk(x, y)
    assert brightness(aware, None).mean() < brightness(plain, None).mean()
    assert aware_atk.describe()["loss"] == "ce_mean_prob - lam*detector"
    with pytest.raises(HgdefendError, match="detector"):
        APGD(ens, 0.2, detector=brightness, score="entropy", lam=1.0)


def test_apgd_with_eot_at_least_as_strong_as_pgd_with_eot(trained_digits, digits):
    """Against a HyperGAN (fresh networks every gradient), judged by an independent sample: APGD-CE
    with EOT is at least as strong as PGD with EOT at the same number of gradients."""
    judge = trained_digits.ensemble(20, seed=99)
    x, y = digits.test.x[:N], digits.test.y[:N]
    ok = judge.predict(x) == y
    x, y = x[ok], y[ok]
    totals = [0.0, 0.0]
    for eps in (0.1, 0.15):
        pgd = PGD(FreshSamples(trained_digits, 5, seed=1), eps, steps=20)(x, y)
        apgd = APGD(FreshSamples(trained_digits, 5, seed=1), eps, steps=19)(x, y)
        acc_pgd, acc_apgd = accuracy(judge, pgd, y), accuracy(judge, apgd, y)
        assert 0.1 < acc_pgd < 0.95, (eps, acc_pgd)  # PGD neither fails nor wins outright here
        assert acc_apgd <= acc_pgd + 1 / len(y), (eps, acc_pgd, acc_apgd)  # EOT noise: one input
        totals[0], totals[1] = totals[0] + acc_pgd, totals[1] + acc_apgd
    assert totals[1] <= totals[0], totals
