"""Detectors: conformal thresholds, metrics against scikit-learn, bad input, plots, the evaluate
report's detection section and its --fail-under gate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import average_precision_score, roc_auc_score

from hgdefend.cli.main import cli
from hgdefend.detectors import (
    EntropyDetector,
    ScoreDetector,
    compute_scores,
    conformal_threshold,
    detection_metrics,
    min_calibration_size,
)
from hgdefend.detectors.metrics import bootstrap_auroc_tpr
from hgdefend.evaluate.gate import apply_gate, parse_fail_under
from hgdefend.evaluate.plots import plot_score_groups
from hgdefend.validation import HgdefendError


# --------------------------------------------------------------------------- thresholds
@pytest.mark.parametrize("target_fpr", [0.01, 0.05, 0.2])
def test_conformal_threshold_hits_target_fpr_on_held_out_clean(target_fpr):
    """Over many calibration/test draws the realised FPR averages <= target and stays within
    binomial sampling error of it (the conformal guarantee: target − 1/(n+1) <= E[FPR] <= target)."""
    rng = np.random.default_rng(0)
    n_cal, n_test, reps = 400, 4000, 200
    fprs = []
    for _ in range(reps):
        thr = conformal_threshold(rng.gamma(2.0, size=n_cal), target_fpr)
        fprs.append(np.mean(rng.gamma(2.0, size=n_test) > thr))
    fprs = np.array(fprs)
    se = fprs.std(ddof=1) / math.sqrt(reps)
    assert target_fpr - 1 / (n_cal + 1) - 3 * se <= fprs.mean() <= target_fpr + 3 * se
    # a single run: within 4 binomial SDs (test) + the calibration quantile's own spread
    sd = math.sqrt(target_fpr * (1 - target_fpr) * (1 / n_test + 1 / n_cal))
    assert np.all(np.abs(fprs - target_fpr) < 4 * sd + 1 / (n_cal + 1))


def test_entropy_detector_on_trained_digits_meets_target_on_held_out(trained_digits, digits):
    ens = trained_digits.ensemble(20, seed=3)
    det = EntropyDetector(ens, target_fpr=0.1).fit(digits.calib.x)
    assert det.ensemble_seed_ == 3 and det.n_calibration_ == len(digits.calib)
    assert det.calibration_fpr_ <= 0.1
    flags = det.flag(digits.test.x)
    assert flags.dtype == bool and flags.shape == (len(digits.test),)
    n = len(digits.test)
    assert abs(flags.mean() - 0.1) < 4 * math.sqrt(0.1 * 0.9 * (1 / n + 1 / len(digits.calib))) + 0.01
    # scores() is the entropy of the mean member prediction from the one batched forward
    ref = compute_scores(ens.member_logits(digits.test.x[:7]), ["entropy"])["entropy"].numpy()
    s = det.scores(digits.test.x[:7])
    assert s.dtype == np.float64
    np.testing.assert_allclose(s, ref, rtol=1e-6)


def test_fresh_scoring_ensemble_is_used_and_recorded(trained_digits, digits):
    ens = trained_digits.ensemble(8, seed=0)
    fresh = trained_digits.ensemble(8, seed=1)
    det = ScoreDetector(ens, "mutual_information", scoring_ensemble=fresh).fit(digits.calib.x)
    assert det.ensemble_seed_ == 0 and det.scoring_seed_ == 1
    a = det.scores(digits.test.x[:16])
    b = ScoreDetector(ens, "mutual_information").scores(digits.test.x[:16])
    ref = compute_scores(fresh.member_logits(digits.test.x[:16]), ["mutual_information"])
    np.testing.assert_array_equal(a, ref["mutual_information"].numpy())  # scored by the fresh networks
    assert not np.allclose(a, b)
    assert det.describe()["scoring_ensemble"]["seed"] == 1


def test_min_calibration_size_is_exact():
    for fpr in (0.5, 0.2, 0.1, 0.05, 0.01, 0.003):
        need = min_calibration_size(fpr)
        conformal_threshold(np.arange(need, dtype=float), fpr)  # enough
        with pytest.raises(HgdefendError, match=f"need at least {need}"):
            conformal_threshold(np.arange(need - 1, dtype=float), fpr)
    assert min_calibration_size(0.1) == 9 and min_calibration_size(0.05) == 19


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_give_clear_errors(trained_digits, digits):
    ens = trained_digits.ensemble(4, seed=0)
    with pytest.raises(HgdefendError, match="x_calib: 10 calibration samples.*need at least 19"):
        EntropyDetector(ens, target_fpr=0.05).fit(digits.calib.x[:10])
    for bad in (0.0, 1.0, -0.1, 1.5, float("nan"), "high", None):
        det = EntropyDetector(ens, target_fpr=bad)  # scikit-learn's rule: checked by fit, not __init__
        with pytest.raises(HgdefendError, match="^target_fpr: expected a value in"):
            det.fit(digits.calib.x)
        with pytest.raises(HgdefendError, match="^target_fpr: expected a value in"):
            det.fit_scores(np.linspace(0, 1, 100))
        if bad in ("high", None):
            continue
        with pytest.raises(HgdefendError, match="target_fpr"):
            conformal_threshold(np.ones(100), bad)
    with pytest.raises(HgdefendError, match="NaN"):
        conformal_threshold(np.array([0.1, np.nan] * 50), 0.05)
    with pytest.raises(HgdefendError, match="NaN"):
        detection_metrics([0.1, np.nan], [0.2, 0.3], 0.15, target_fpr=0.05)
    with pytest.raises(HgdefendError, match="suspect_wrong: expected shape \\(2,\\)"):
        detection_metrics([0.1, 0.2], [0.2, 0.3], 0.15, target_fpr=0.05, suspect_wrong=[True])
    with pytest.raises(HgdefendError, match="clean_scores: expected a 1-D"):
        detection_metrics(np.ones((3, 2)), [0.2, 0.3], 0.15, target_fpr=0.05)
    with pytest.raises(HgdefendError, match="x: expected shape"):
        EntropyDetector(ens).fit(torch.rand(50, 1, 28, 28))
    with pytest.raises(NotFittedError, match="call fit"):
        EntropyDetector(ens).predict(digits.test.x[:3])
    bad_score = ScoreDetector(ens, "confidence")  # no error yet
    for call in (lambda: bad_score.fit(digits.calib.x), lambda: bad_score.scores(digits.test.x[:3])):
        with pytest.raises(HgdefendError, match="^score: expected one of"):
            call()
    for bad in (0, -4, 2.5, True, "64"):
        with pytest.raises(HgdefendError, match="^batch_size: expected an integer >= 1"):
            ScoreDetector(ens, batch_size=bad).fit(digits.calib.x)
    with pytest.raises(HgdefendError, match="^ensemble: expected a hgdefend SampledEnsemble"):
        ScoreDetector(trained_digits).fit(digits.calib.x)
    with pytest.raises(HgdefendError, match="^scoring_ensemble: expected a hgdefend SampledEnsemble"):
        ScoreDetector(ens, scoring_ensemble=trained_digits).fit(digits.calib.x)


def test_nan_member_weights_raise_instead_of_passing_unflagged(trained_digits, digits):
    ens = trained_digits.ensemble(3, seed=0)
    name = next(iter(ens.params))
    ens.params[name] = torch.full_like(ens.params[name], float("nan"))
    with pytest.raises(HgdefendError, match="NaN or infinite entropy scores"):
        EntropyDetector(ens).scores(digits.test.x[:4])


# --------------------------------------------------------------------------- scikit-learn's estimator rules
def test_get_params_returns_constructor_arguments_unchanged(trained_digits):
    ens, fresh = trained_digits.ensemble(3, seed=0), trained_digits.ensemble(3, seed=1)
    fpr, batch = np.float64(0.1), np.int64(64)  # a constructor that converted them would change the type
    det = ScoreDetector(ens, "max_prob", fpr, scoring_ensemble=fresh, batch_size=batch)
    params = det.get_params()
    assert set(params) == {"ensemble", "score", "target_fpr", "scoring_ensemble", "batch_size"}
    for name, given in [("ensemble", ens), ("score", "max_prob"), ("target_fpr", fpr),
                        ("scoring_ensemble", fresh), ("batch_size", batch)]:  # fmt: skip
        assert params[name] is given, name
    ent = EntropyDetector(ens, 0.2, batch_size=32)
    want = {"ensemble": ens, "target_fpr": 0.2, "scoring_ensemble": None, "batch_size": 32}
    assert ent.get_params() == want
    assert ent.score == "entropy"
    assert ent.set_params(target_fpr=0.3) is ent and ent.target_fpr == 0.3
    with pytest.raises(ValueError, match="score"):
        ent.set_params(score="variance")  # fixed for EntropyDetector
    # the constructor checks nothing: bad values are stored as given and rejected by fit
    bad = ScoreDetector(ens, "confidence", 1.5, batch_size=0)
    assert bad.get_params()["score"] == "confidence" and bad.get_params()["target_fpr"] == 1.5


def test_clone_gives_an_unfitted_detector_with_equal_params(trained_digits, digits):
    ens = trained_digits.ensemble(4, seed=2)
    for det in (ScoreDetector(ens, "variance", 0.1, batch_size=128), EntropyDetector(ens, 0.1)):
        det.fit(digits.calib.x)
        twin = clone(det)
        assert type(twin) is type(det) and twin.score == det.score
        assert not hasattr(twin, "threshold_") and not hasattr(twin, "offset_")
        with pytest.raises(NotFittedError):
            twin.predict(digits.test.x[:3])
        p, q = det.get_params(), twin.get_params()
        assert p.keys() == q.keys()
        for name in p.keys() - {"ensemble"}:
            assert q[name] == p[name], name
        assert q["ensemble"].seed == 2 and q["ensemble"].params.keys() == ens.params.keys()
        for name, t in ens.params.items():
            assert torch.equal(q["ensemble"].params[name], t)
        assert twin.fit(digits.calib.x).threshold_ == det.threshold_


def test_sklearn_sign_conventions_agree_with_flag(trained_digits, digits):
    ens = trained_digits.ensemble(6, seed=0)
    det = EntropyDetector(ens, target_fpr=0.1).fit(digits.calib.x)
    noise = torch.rand(40, *digits.test.x.shape[1:], generator=torch.Generator().manual_seed(0))
    x = torch.cat([digits.test.x[:80], noise])
    flags, s = det.flag(x), det.scores(x)
    assert flags.any() and not flags.all()  # both kinds present, so the checks below can fail
    pred = det.predict(x)
    assert np.issubdtype(pred.dtype, np.integer) and set(np.unique(pred)) == {-1, 1}
    np.testing.assert_array_equal(pred == -1, flags)
    np.testing.assert_array_equal(det.score_samples(x), -s)  # lower = more abnormal
    assert det.offset_ == -det.threshold_
    dec = det.decision_function(x)
    np.testing.assert_array_equal(dec, det.score_samples(x) - det.offset_)
    np.testing.assert_array_equal(dec < 0, flags)
    np.testing.assert_array_equal(det.fit_predict(digits.calib.x), np.where(det.flag(digits.calib.x), -1, 1))


def test_unfitted_detector_raises_not_fitted_error(trained_digits, digits):
    det = ScoreDetector(trained_digits.ensemble(3, seed=0), "entropy", 0.1)
    x = digits.test.x[:5]
    for method in (det.predict, det.flag, det.decision_function, det.score_samples):
        with pytest.raises(NotFittedError, match="call fit") as err:
            method(x)
        assert isinstance(err.value, ValueError)
    assert det.scores(x).shape == (5,)  # raw scores need no threshold
    det.fit_scores(np.linspace(0, 1, 50))
    assert det.threshold_ == pytest.approx(np.linspace(0, 1, 50)[math.ceil(51 * 0.9) - 1])
    assert det.n_calibration_ == 50 and det.predict(x).shape == (5,)


# --------------------------------------------------------------------------- metrics
def test_metrics_match_sklearn_on_hand_built_case():
    clean = np.array([0.1, 0.2, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    suspect = np.array([0.2, 0.5, 0.65, 0.8, 0.9, 0.95])
    y = np.r_[np.zeros(8), np.ones(6)]
    s = np.r_[clean, suspect]
    m = detection_metrics(
        clean,
        suspect,
        0.55,
        target_fpr=0.25,
        n_bootstrap=50,
        suspect_wrong=[1, 1, 1, 0, 0, 0],
        clean_wrong=[0, 0, 0, 0, 0, 0, 1, 1],
    )
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s))
    assert m["aupr"] == pytest.approx(average_precision_score(y, s))
    # by hand: pairs (suspect > clean) + ½ ties over 48 pairs
    wins = sum((a > c) + 0.5 * (a == c) for a in suspect for c in clean)
    assert m["auroc"] == pytest.approx(wins / 48)
    assert m["tpr_at_threshold"] == pytest.approx(4 / 6)  # 0.65, 0.8, 0.9, 0.95 > 0.55
    assert m["realised_fpr"] == pytest.approx(2 / 8)  # 0.6, 0.7
    # 95 % TPR needs all 6 suspects (lowest 0.2): clean above-or-equal 0.2 → 7 of 8
    assert m["fpr_at_95_tpr"] == pytest.approx(7 / 8)
    assert m["missed_and_wrong"] == pytest.approx(2 / 6)  # 0.2 and 0.5 are wrong and unflagged
    assert m["clean_accuracy"] == pytest.approx(6 / 8)
    assert m["clean_accuracy_after_rejection"] == pytest.approx(1.0)  # the two wrong ones are rejected
    assert m["clean_rejected"] == pytest.approx(2 / 8)
    lo, hi = m["auroc_ci"]
    assert lo <= m["auroc"] <= hi and 0 <= lo < hi <= 1
    assert m["tpr_ci"][0] <= m["tpr_at_threshold"] <= m["tpr_ci"][1]


def test_perfect_and_reversed_separation():
    clean, suspect = np.linspace(0, 1, 30), np.linspace(2, 3, 20)
    m = detection_metrics(clean, suspect, 1.5, target_fpr=0.05)
    assert m["auroc"] == 1.0 and m["aupr"] == 1.0 and m["tpr_at_threshold"] == 1.0
    assert m["fpr_at_95_tpr"] == 0.0 and m["auroc_ci"] == [1.0, 1.0]
    r = detection_metrics(suspect, clean, 1.5, target_fpr=0.05, n_bootstrap=0)
    assert r["auroc"] == 0.0 and "auroc_ci" not in r


def test_bootstrap_auroc_equals_sklearn_on_each_resample():
    rng = np.random.default_rng(1)
    clean, suspect = np.round(rng.normal(0, 1, 60), 1), np.round(rng.normal(1, 1, 45), 1)  # with ties
    aurocs, tprs = bootstrap_auroc_tpr(clean, suspect, 0.5, 4, seed=7)
    draw = np.random.default_rng(7)  # the same draws, replayed: multiplicities per sorted clean / suspect
    w_clean = draw.multinomial(60, np.full(60, 1 / 60), size=4)
    w_susp = draw.multinomial(45, np.full(45, 1 / 45), size=4)
    for b in range(4):
        c, s = np.repeat(np.sort(clean), w_clean[b]), np.repeat(suspect, w_susp[b])
        assert aurocs[b] == pytest.approx(roc_auc_score(np.r_[np.zeros(60), np.ones(45)], np.r_[c, s]))
        assert tprs[b] == pytest.approx(np.mean(s > 0.5))


# --------------------------------------------------------------------------- plots, gate parsing
def test_plots_write_pngs(tmp_path):
    rng = np.random.default_rng(0)
    files = plot_score_groups(
        {"clean test": rng.normal(0, 1, 100), "OOD": rng.normal(2, 1, 80), "PGD": rng.normal(1, 1, 50)},
        tmp_path,
        score_name="entropy",
        threshold=1.6,
    )
    assert set(files) == {"roc", "det", "ecdf", "histogram"}
    for name in files.values():
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    only_clean = plot_score_groups({"clean": rng.normal(0, 1, 10)}, tmp_path, score_name="x")
    assert "roc" not in only_clean
    with pytest.raises(HgdefendError, match="NaN"):
        plot_score_groups({"clean": [0.1, np.nan]}, tmp_path, score_name="x")


def test_parse_fail_under():
    assert parse_fail_under(None) == {} and parse_fail_under("") == {}
    assert parse_fail_under("auroc=0.9, TPR=0.8,aupr=1") == {"auroc": 0.9, "tpr": 0.8, "aupr": 1.0}
    for bad, msg in [
        ("auroc", "KEY=VALUE"),
        ("f1=0.5", "unknown metric"),
        ("auroc=high", "number"),
        ("auroc=1.5", "number in \\[0, 1\\]"),
        ("auroc=0.9,auroc=0.8", "twice"),
    ]:
        with pytest.raises(HgdefendError, match=f"fail_under: .*{msg}"):
            parse_fail_under(bad)


def test_apply_gate():
    report = {"detection": {"gate_rows": [{"name": "ood (entropy)", "auroc": 0.93, "aupr": 0.9, "tpr": 0.6}]}}
    ok = apply_gate(report, {"auroc": 0.9})
    assert ok["passed"] and ok["failures"] == []
    bad = apply_gate(report, {"auroc": 0.9, "tpr": 0.8})
    assert not bad["passed"] and bad["failures"] == ["tpr 0.600 < 0.8 on ood (entropy)"]
    none = apply_gate({"detection": {"gate_rows": []}}, {"auroc": 0.5})
    assert not none["passed"] and "not measured" in none["failures"][0]


# --------------------------------------------------------------------------- hgdefend evaluate
@pytest.fixture(scope="module")
def digits_eval(tmp_path_factory):
    """One small `hgdefend evaluate` run on digits (held-out classes 5-9 are the OOD set)."""
    out = tmp_path_factory.mktemp("eval")
    res = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--train-steps",
            "60",
            "--members",
            "10",
            "--out",
            str(out),
            "--quiet",
            "--threads",
            "2",
            "--no-attacks",
        ],
    )
    assert res.exit_code == 0, res.output
    return out, json.loads((out / "report.json").read_text())


def test_evaluate_digits_writes_report_and_plots(digits_eval):
    out, report = digits_eval
    det = report["detection"]
    assert det["ood_sets"][0]["name"] == "digits held-out classes" and det["ood_sets"][0]["size"] > 100
    assert {(r["score"], r["ensemble"]) for r in det["rows"]} == {
        ("entropy", "fixed"),
        ("mutual_information", "fixed"),
        ("max_prob", "fixed"),
        ("variance", "fixed"),
        ("entropy", "fresh"),
    }
    fresh = next(t for t in det["thresholds"] if t["ensemble"] == "fresh")
    assert fresh["seed"] == report["meta"]["seed"] + 1 and fresh["members"] == 10
    for r in det["rows"]:
        assert 0 <= r["auroc_ci"][0] <= r["auroc"] <= r["auroc_ci"][1] <= 1
        assert r["tpr_ci"][0] <= r["tpr_at_threshold"] <= r["tpr_ci"][1]
    md = (out / "report.md").read_text()
    for kind in ("roc", "ecdf", "histogram"):
        name = det["plots"][kind]
        assert (out / name).read_bytes()[:4] == b"\x89PNG" and f"]({name})" in md
    assert "## Detection" in md and "AUROC [95 % CI]" in md
    assert report["meta"]["model_sha256"] and report["model"]["ensemble_members"] == 10
    assert "gate" not in report


def test_evaluate_gate_exit_codes(digits_eval, tmp_path):
    out, report = digits_eval
    auroc = report["detection"]["gate_rows"][0]["auroc"]
    model = str(out / "model.safetensors")
    base = ["evaluate", "--model", model, "--members", "10", "--quiet", "--threads", "2", "--no-attacks"]
    runner = CliRunner()
    passed = runner.invoke(
        cli, [*base, "--out", str(tmp_path / "a"), "--fail-under", f"auroc={auroc - 0.01:.4f}"]
    )
    assert passed.exit_code == 0, passed.output
    assert json.loads((tmp_path / "a" / "report.json").read_text())["gate"]["passed"] is True
    if auroc + 0.01 <= 1:
        failed = runner.invoke(
            cli, [*base, "--out", str(tmp_path / "b"), "--fail-under", f"auroc={auroc + 0.01:.4f}"]
        )
        assert failed.exit_code == 1
        assert "gate failed: auroc" in failed.output
        gate = json.loads((tmp_path / "b" / "report.json").read_text())["gate"]
        assert gate["passed"] is False and "## Gate" in (tmp_path / "b" / "report.md").read_text()
    usage = runner.invoke(cli, [*base, "--out", str(tmp_path / "c"), "--fail-under", "auroc=lots"])
    assert usage.exit_code == 2 and "fail_under" in usage.output
    assert not (tmp_path / "c").exists()  # rejected before any work
    bad_fpr = runner.invoke(cli, [*base, "--out", str(tmp_path / "d"), "--target-fpr", "1.2"])
    assert bad_fpr.exit_code == 2 and "target_fpr" in bad_fpr.output


def test_evaluate_with_ood_dataset_file(digits_eval, tmp_path):
    """--ood takes any dataset of the model's input shape (here an .npz of noise images) and adds it
    as a second OOD set beside the held-out classes."""
    out, _ = digits_eval
    rng = np.random.default_rng(0)
    npz = tmp_path / "noise.npz"
    np.savez(npz, x=rng.random((200, 8, 8)).astype(np.float32), y=rng.integers(0, 10, 200))
    res = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--model",
            str(out / "model.safetensors"),
            "--members",
            "10",
            "--ood",
            str(npz),
            "--quiet",
            "--out",
            str(tmp_path / "r"),
            "--no-attacks",
        ],
    )
    assert res.exit_code == 0, res.output
    det = json.loads((tmp_path / "r" / "report.json").read_text())["detection"]
    assert [s["name"] for s in det["ood_sets"]] == ["digits held-out classes", str(npz)]
    assert {r["ood"] for r in det["rows"]} == {"digits held-out classes", str(npz)}
    assert len(det["gate_rows"]) == 2


def test_detection_section_without_ood_reports_thresholds_only(trained_digits, digits, tmp_path):
    from hgdefend.evaluate import EvaluateOptions
    from hgdefend.evaluate.context import EvalContext
    from hgdefend.evaluate.detection import detection_section, render_detection

    opts = EvaluateOptions(out=str(tmp_path), members=10, in_classes=None)
    ctx = EvalContext.build(opts, digits, trained_digits)
    sec = detection_section(ctx)
    assert digits.ood is None and sec["ood_sets"] == [] and sec["rows"] == [] and "No OOD set" in sec["note"]
    assert len(sec["thresholds"]) == 5 and all(0 <= t["realised_fpr"] <= 1 for t in sec["thresholds"])
    for t in sec["thresholds"]:
        assert t["realised_fpr_ci"][0] <= t["realised_fpr"] <= t["realised_fpr_ci"][1]
    assert "roc" not in sec["plots"] and (tmp_path / sec["plots"]["ecdf"]).is_file()
    md = "\n".join(render_detection(sec))
    assert "No OOD set" in md and "realised FPR" in md
    assert apply_gate({"detection": sec}, {"auroc": 0.5})["passed"] is False


def test_each_ensemble_scores_each_split_once(trained_digits, digits, tmp_path, monkeypatch):
    """The scored-splits cache: detection and accuracy read the same member logits."""
    from hgdefend.ensemble import SampledEnsemble
    from hgdefend.evaluate import EvaluateOptions
    from hgdefend.evaluate.accuracy import accuracy_section, calibration_section
    from hgdefend.evaluate.context import EvalContext
    from hgdefend.evaluate.detection import detection_section

    calls: list[int] = []
    real = SampledEnsemble.member_logits

    def counting(self, x, **kw):
        calls.append(id(self))
        return real(self, x, **kw)

    monkeypatch.setattr(SampledEnsemble, "member_logits", counting)
    ctx = EvalContext.build(EvaluateOptions(out=str(tmp_path), members=5), digits, trained_digits)
    detection_section(ctx)
    n = len(calls)
    assert n == 4  # (fixed, fresh) x (calib, test): digits' splits fit in one batch each
    accuracy_section(ctx)
    calibration_section(ctx)
    detection_section(ctx)
    assert len(calls) == n
