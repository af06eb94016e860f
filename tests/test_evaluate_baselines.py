"""The evaluate suite's robust and supervised baselines, in the same run as the HyperGAN: adversarially
trained deep ensemble / single network, and ART's binary input detector (``hgdefend.art.binary_detector``)
scored from the input, thresholded on clean calibration inputs and attacked through its margin."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from hgdefend.art.binary_detector import detector_margin, detector_network, train_binary_detector
from hgdefend.attacks import APGD, FGSM, PGD
from hgdefend.attacks.base import ensemble_loss
from hgdefend.detectors.detector import conformal_threshold
from hgdefend.errors import HgdefendError
from hgdefend.evaluate import AttackOptions, EvaluateOptions
from hgdefend.evaluate.attacks import _make_attack, attacks_section, fit_threshold, render_attacks
from hgdefend.evaluate.baselines import DetectorFGSM, DetectorPGD, build_baselines
from hgdefend.evaluate.context import EvalContext
from hgdefend.recipes import default_spec, train_model
from hgdefend.training import TrainConfig, single_network

NEW = ("deep-ensemble-adv", "single-adv", "binary-detector")


class _Linear:
    """A one-member classifier on 8×8 digits (anything with forward_logits works as a target)."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.net = nn.Linear(64, 10)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))[None]


@pytest.fixture(scope="module")
def tiny_hg(digits):
    return train_model(digits, seed=0, device="cpu", steps=30, progress=False).hypergan


def _ctx(digits, hg, tmp_path, **attack):
    ctx = EvalContext.build(EvaluateOptions(out=str(tmp_path), members=5), digits, hg)
    ctx.attack = AttackOptions(eps=(0.1,), n_inputs=20, steps=3, baseline_steps=30, n_bootstrap=0,
                               eot_members=2, **attack)  # fmt: skip
    return ctx


@pytest.fixture(scope="module")
def section(digits, tiny_hg, tmp_path_factory):
    ctx = _ctx(digits, tiny_hg, tmp_path_factory.mktemp("r"), attacks="apgd-ce,pgd",
               protocols="fixed,adaptive", baselines=",".join(NEW))  # fmt: skip
    return attacks_section(ctx)


# --------------------------------------------------------------------------- options
def test_options_accept_the_new_baselines_and_refuse_eps_zero():
    opts = EvaluateOptions(attacks="apgd-ce", protocols="adaptive", baselines=",".join(NEW)).checked()
    assert opts.attack_options().baselines == NEW
    with pytest.raises(HgdefendError, match=r"^baselines: single-adv, binary-detector train on inputs"):
        AttackOptions(eps=(0.0,), baselines="single-adv,binary-detector")
    assert AttackOptions(eps=(0.0,), baselines="single").baselines == ("single",)  # no crafted inputs
    with pytest.raises(HgdefendError, match="baselines: unknown name 'binary'"):
        AttackOptions(baselines="binary")


# --------------------------------------------------------------------------- the report
def test_each_new_baseline_has_its_rows(section):
    methods = {m["name"]: m for m in section["methods"]}
    assert list(methods) == ["hypergan", *NEW]
    for name in NEW:
        m = methods[name]
        assert 0.0 <= m["clean_accuracy"] <= 1.0 and math.isfinite(m["threshold"])
        assert [(r["attack"], r["protocol"]) for r in m["rows"]] == [
            ("apgd-ce", "fixed"), ("apgd-ce", "adaptive"), ("pgd", "fixed"), ("pgd", "adaptive")]  # fmt: skip
        for r in m["rows"]:
            assert 0.0 <= r["auroc"] <= 1.0
            assert 0.0 <= r["tpr_at_threshold"] <= 1.0 and 0.0 <= r["missed_and_wrong"] <= 1.0
    for name in ("deep-ensemble-adv", "single-adv"):
        assert methods[name]["adversarial_training"] == {"method": "pgd", "eps": 0.1, "steps": 7}
    assert methods["deep-ensemble-adv"]["members"] == 5 and methods["single-adv"]["members"] == 1
    md = "\n".join(render_attacks(section))
    assert md.count("PGD adversarial training at eps 0.1 (7 steps)") == 2
    assert "| binary-detector | apgd-ce | adaptive | 0.1 | detector_margin |" in md


def test_binary_detector_is_thresholded_at_the_target_fpr_and_attacked_through_its_margin(section):
    m = next(m for m in section["methods"] if m["name"] == "binary-detector")
    assert m["score"] == "detector_margin" and m["adversarial_training"] is None
    assert m["detector"]["fgsm_eps"] == 0.1 and m["detector"]["epochs"] == 3
    assert m["attacked_ensemble"]["kind"] == "single"
    n_test, n_calib, target = 359, 359, 0.05  # digits' clean test and calibration splits
    slack = 3 * math.sqrt(target * (1 - target) / n_test) + 1 / (n_calib + 1)
    assert abs(m["realised_fpr"] - target) <= slack
    rows = {(r["attack"], r["protocol"]): r for r in m["rows"]}
    for attack, name in (("apgd-ce", "apgd-ce"), ("pgd", "adaptive-pgd")):
        adaptive = rows[(attack, "adaptive")]
        assert adaptive["params"]["attack"] == name and adaptive["params"]["loss"].endswith(" - lam*detector")
        assert adaptive["params"]["detector"] == "binary_detector_margin"
        assert [s["lam"] for s in adaptive["lambda_sweep"]] == [0.0, 1.0]
        assert "detector" not in rows[(attack, "fixed")]["params"]  # fixed: the classifier alone


def test_binary_detector_shares_the_single_network_and_fits_on_calibration_margins(digits, tiny_hg, tmp_path):
    ctx = _ctx(digits, tiny_hg, tmp_path, attacks="pgd", baselines="binary-detector,single")
    bd, single = build_baselines(ctx, ctx.attack)
    assert (bd.name, single.name) == ("binary-detector", "single") and bd.attacked is single.attacked
    assert bd.scoring_name == "single" and bd.info["classifier"] == "the single baseline's network"
    with torch.no_grad():
        margins = bd.detector(digits.calib.x, None).numpy().astype(np.float64)
    assert fit_threshold(ctx, bd) == pytest.approx(conformal_threshold(margins, 0.05), abs=1e-5)
    assert fit_threshold(ctx, single) == conformal_threshold(
        ctx.scored.scores("single", "calib")["max_prob"], 0.05
    )


# --------------------------------------------------------------------------- attacks through the detector
def test_make_attack_puts_the_detector_in_the_adaptive_loss_only():
    clf, net = _Linear(), detector_network((1, 8, 8))
    cfg = AttackOptions(attacks="fgsm,pgd", eps=(0.1,), steps=2)

    def det(x, _logits):
        return detector_margin(net, x)

    kw = {"score": "detector_margin", "detector": det}
    for attack, cls in (("fgsm", DetectorFGSM), ("pgd", DetectorPGD)):
        atk = _make_attack(attack, "adaptive", clf, 0.1, cfg, lam=2.0, **kw)
        assert type(atk) is cls and atk.describe()["lam"] == 2.0
        x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
        want = ensemble_loss(clf.forward_logits(x), y) - 2.0 * detector_margin(net, x)
        assert torch.allclose(atk.loss(x, y), want)
        assert atk(x, y).shape == x.shape
    assert type(_make_attack("pgd", "fixed", clf, 0.1, cfg, lam=0.0, **kw)) is PGD
    assert type(_make_attack("fgsm", "paper", clf, 0.1, cfg, lam=0.0, **kw)) is FGSM
    apgd = _make_attack("apgd-ce", "adaptive", clf, 0.1, cfg, lam=1.0, **kw)
    assert isinstance(apgd, APGD) and apgd.detector is det and apgd.score is None


# --------------------------------------------------------------------------- the library function
def test_train_binary_detector_separates_clean_from_fgsm(digits):
    clf = single_network(default_spec(digits), digits.train, TrainConfig(steps=30, seed=0), device="cpu",
                         progress=False)  # fmt: skip
    sub = digits.train.take(500)
    net, info = train_binary_detector(clf, sub.x, sub.y, eps=0.5, epochs=3, seed=0, device="cpu")
    assert info["train_inputs"] == 1000 and info["fgsm_eps"] == 0.5 and info["epochs"] == 3
    assert not net.training
    x, y = digits.test.x, digits.test.y
    x_adv = FGSM(clf, 0.5)(x, y)
    with torch.no_grad():
        s = torch.cat([detector_margin(net, x), detector_margin(net, x_adv)]).numpy()
    auroc = roc_auc_score(np.r_[np.zeros(len(x)), np.ones(len(x))], s)
    assert auroc > 0.9, auroc
    state = torch.random.get_rng_state()
    again, _ = train_binary_detector(clf, sub.x, sub.y, eps=0.5, epochs=1, seed=0, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is left alone


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"classifier": object()}, "classifier"),
        ({"x": torch.rand(4, 64)}, "x"),
        ({"x": np.zeros((4, 1, 8, 8), np.float32)}, "x"),
        ({"y": torch.zeros(3, dtype=torch.long)}, "y"),
        ({"eps": 0.0}, "eps"),
        ({"eps": float("nan")}, "eps"),
        ({"eps": "big"}, "eps"),
        ({"epochs": 0}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"seed": "0"}, "seed"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_train_binary_detector_names_the_bad_argument(kw, name):
    args = {"classifier": _Linear(), "x": torch.rand(4, 1, 8, 8), "y": torch.zeros(4, dtype=torch.long),
            "eps": 0.1, "epochs": 1, "seed": 0, "device": "cpu", **kw}  # fmt: skip
    clf, x, y = args.pop("classifier"), args.pop("x"), args.pop("y")
    with pytest.raises(HgdefendError, match=f"^{name}: "):
        train_binary_detector(clf, x, y, **args)


def test_detector_network_and_margin_name_the_bad_argument():
    for bad in ((8, 8), (1, 8, 0), (1.0, 8, 8), None, "1x8x8"):
        with pytest.raises(HgdefendError, match="^input_shape: "):
            detector_network(bad)
    net = detector_network((3, 32, 32))
    assert detector_margin(net, torch.rand(2, 3, 32, 32)).shape == (2,)
    with pytest.raises(HgdefendError, match="^detector: expected outputs"):
        detector_margin(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), torch.rand(2, 1, 8, 8))
    with pytest.raises(HgdefendError, match="^detector: "):
        detector_margin("net", torch.rand(2, 1, 8, 8))
    with pytest.raises(HgdefendError, match="^x: "):
        detector_margin(net, [1, 2])
