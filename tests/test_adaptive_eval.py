"""An evaluation a diverse model cannot fool: targeted EOT attacks, the per-input λ search, the
per-input worst case, the Tramèr check and per-input results (tiny digits models, CPU)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from hgdefend import save_model
from hgdefend.attacks import APGDCE, APGDCET, APGDT, ATTACKS, FreshSamples, ScoreSearch, margin
from hgdefend.attacks.apgd import runner_up_classes, targeted_dlr_loss
from hgdefend.detectors.detector import conformal_threshold
from hgdefend.detectors.scores import predictive_entropy
from hgdefend.evaluate import EvaluateOptions, run_evaluate
from hgdefend.evaluate.tramer import tramer_checks, worst_case
from hgdefend.probabilities import predict
from hgdefend.recipes import train_model

N = 60


@pytest.fixture(scope="module")
def offdata(digits):
    """The digits recipe with off-data disagreement: members agree on the data, disagree off it —
    the model on which untargeted cross-entropy attacks look strong against the detector."""
    return train_model(digits, seed=0, device="cpu", progress=False, diversity="offdata",
                       diversity_weight=1.0).hypergan  # fmt: skip


@pytest.fixture(scope="module")
def judge(offdata, digits):
    """A scoring ensemble neither the attacker nor the threshold's caller drew, and its threshold."""
    scoring = offdata.ensemble(20, seed=11)
    with torch.no_grad():
        thr = conformal_threshold(predictive_entropy(scoring.member_logits(digits.calib.x)).numpy(), 0.05)

    def through(x_adv: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            logits = scoring.member_logits(x_adv)
        wrong = predict(logits) != y
        return (wrong & (predictive_entropy(logits) <= thr)).numpy()

    return thr, through


def test_targeted_eot_attack_beats_the_untargeted_adaptive_one_on_a_diverse_model(offdata, digits, judge):
    thr, through = judge
    x, y = digits.test.x[:N], digits.test.y[:N]
    eot = FreshSamples(offdata, 10, seed=3)
    # today's adaptive attack: APGD-CE with EOT, λ ∈ {0, 1}, the attacker's best per input
    untargeted = np.zeros(N, dtype=bool)
    for lam in (0.0, 1.0):
        atk = APGDCE(eot, 0.3, 20, score="entropy", lam=lam, threshold=thr)
        untargeted |= through(atk(x, y), y)
    targeted = through(APGDCET(eot, 0.3, 20, targets=2, score="entropy", threshold=thr)(x, y), y)
    assert targeted.mean() >= untargeted.mean(), (targeted.mean(), untargeted.mean())
    # and it gets through where the untargeted attack does not
    assert (targeted & ~untargeted).sum() >= 3, (targeted.mean(), untargeted.mean())


def test_score_search_searches_lambda_per_input_and_never_loses_what_it_found(offdata, digits, judge):
    thr, through = judge
    x, y = digits.test.x[:N], digits.test.y[:N]
    # one sampler each, same seed: the first search step of both is then the same run
    one = ScoreSearch(
        FreshSamples(offdata, 10, seed=3), 0.1, 10, score="entropy", threshold=thr, search_steps=1
    )
    more = ScoreSearch(
        FreshSamples(offdata, 10, seed=3), 0.1, 10, score="entropy", threshold=thr, search_steps=4
    )
    eot = FreshSamples(offdata, 10, seed=3)
    got_one, got_more = one(x, y), more(x, y)
    ev_one, ev_more = one.last_info["evaded"].numpy(), more.last_info["evaded"].numpy()
    assert np.all(ev_more >= ev_one)  # the first search step is the same run; later ones only add
    lam = more.last_info["final_lam"].numpy()
    assert len(np.unique(lam)) > 1  # λ moved per input, not on a shared grid
    assert (got_more - x).abs().max() <= 0.1 + 1e-6 and got_one.shape == x.shape
    # what got through the attacker's own draws mostly gets through an unseen judge too (at eps 0.1 the
    # points sit near the threshold, so some fall back: 20 % of 60 judged through, 47 % by the attacker)
    assert through(got_more, y).sum() >= 5
    d = more.describe()
    assert d["attack"] == "score-search" and d["lam"].startswith("searched") and d["search_steps"] == 4
    with pytest.raises(Exception, match="threshold"):
        ScoreSearch(eot, 0.1, 10, score="entropy", threshold=None)


def test_targeted_losses_and_runner_up_classes():
    logits = torch.log(torch.tensor([[[0.6, 0.25, 0.1, 0.05], [0.1, 0.2, 0.3, 0.4]]]))
    y = torch.tensor([0, 3])
    t = runner_up_classes(logits, y, 2)
    assert t.tolist() == [[1, 2], [2, 1]]  # best runner-up first, never the label
    # the targeted DLR rises as the target class rises over the label
    assert targeted_dlr_loss(logits, y, t[0])[0] < 0 and margin(logits, y)[0] < 0
    assert margin(logits, y, torch.tensor([0, 3]))[1] > 0  # the prediction already is that class
    for name, cls in (("apgd-t", APGDT), ("apgd-ce-t", APGDCET), ("score-search", ScoreSearch)):
        assert ATTACKS[name] is cls


def test_every_attack_describes_loss_targets_eot_restarts_and_steps(trained_digits):
    eot = FreshSamples(trained_digits, 3, seed=0)
    d = APGDT(eot, 0.3, 5, targets=4, restarts=2, score="entropy", lam=1.0, threshold=0.5).describe()
    assert d["loss"] == "targeted_dlr_log_mean_prob - lam*entropy" and d["targets"] == 4
    assert d["restarts"] == 2 and d["steps"] == 5 and d["eot"]["members_per_call"] == 3
    assert d["threshold"] == 0.5 and d["selection"].startswith("under threshold")
    assert APGDCE(eot, 0.3, 5).describe()["targets"] == "untargeted"


def test_worst_case_and_tramer_check_on_hand_made_rows():
    rows = [
        {"eps": 0.3, "attack": "a", "protocol": "adaptive"},
        {"eps": 0.3, "attack": "b", "protocol": "adaptive"},
    ]
    t = np.array([True, False, False, False])
    arrays = [{"through": t, "wrong": t.copy()}, {"through": np.array([False, True, False, False]),
                                                  "wrong": np.array([True, True, True, False])}]  # fmt: skip
    (w,) = worst_case(rows, arrays, (0.3,))
    assert w["missed_and_wrong"] == 0.5 and w["accuracy"] == 0.25 and w["through_first_by"] == {
        "a adaptive": 1, "b adaptive": 1}  # fmt: skip
    clean = {"label": np.zeros(4, int), "pred": np.zeros(4, int), "flagged": np.zeros(4, bool)}
    # 4 inputs: the slack is 5 points + one input = 30 points
    (weak,) = tramer_checks([{**w, "missed_and_wrong": 0.0}], clean, lambda e: 0.25)  # implies ≥ 100 %
    assert not weak["conclusive"] and weak["half_eps"] == 0.15 and "too weak" in weak["verdict"]
    (bad,) = tramer_checks([w], clean, lambda e: 0.1)  # implies ≥ 50 %, measured 10 %
    assert bad["implied_accuracy_at_half"] == 0.5 and not bad["conclusive"]
    (ok,) = tramer_checks([w], clean, lambda e: 0.25)
    assert ok["conclusive"] and ok["measured_with"].startswith("the section's attacks")


@pytest.fixture(scope="module")
def offdata_file(offdata, digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("offdata") / "model.safetensors"
    save_model(path, offdata, dataset=digits.describe(), training={"steps": 400, "seed": 0})
    return path


def test_a_weakened_attack_is_inconclusive_and_fails_the_gate(offdata_file, tmp_path):
    """PGD with a tiny step barely moves the inputs, so almost nothing gets through at eps 0.3 —
    which would certify a classifier robust at 0.15 that APGD breaks: the row is inconclusive, the
    summary says so first, and ``missed=0.5`` (which the figure itself meets) fails."""
    out = tmp_path / "r"
    opts = EvaluateOptions(
        model=str(offdata_file), members=10, attacks="pgd", protocols="adaptive", eps="0.3",
        attack_inputs=40, attack_steps=3, attack_alpha=0.0005, attack_lambdas="0",
        fail_under="missed=0.5", out=str(out), quiet=True,
    )  # fmt: skip
    report, _ = run_evaluate(opts)
    (hg,) = report["attacks"]["methods"]
    (check,) = hg["tramer"]
    assert hg["rows"][0]["missed_and_wrong"] < 0.5 and not check["conclusive"], check
    assert hg["rows"][0]["inconclusive"] and hg["worst_case"][0]["inconclusive"]
    assert not report["gate"]["passed"] and all("inconclusive" in f for f in report["gate"]["failures"])
    lines = report["summary"]["lines"]
    assert lines[0].startswith("INCONCLUSIVE at eps 0.3")
    assert not any("no measured figure fell below" in line for line in lines)
    # per-input results round-trip: JSON records and the CSV beside them
    sec = report["attacks"]
    recs = sec["per_input"]
    assert len(recs) == len(hg["rows"]) * sec["inputs"]
    with open(out / sec["per_input_csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(recs)
    for rec, row in zip(recs, rows, strict=True):
        assert int(row["input"]) == rec["input"] and int(row["label"]) == rec["label"]
        assert (
            int(row["adv_pred"]) == rec["adv_pred"] and (row["got_through"] == "True") == rec["got_through"]
        )
        assert rec["got_through"] == (rec["adv_pred"] != rec["label"] and not rec["flagged"])
        assert rec["linf"] <= 0.3 + 1e-6
    through = np.mean([r["got_through"] for r in recs])
    assert through == pytest.approx(hg["worst_case"][0]["missed_and_wrong"])
