"""Attacks on digits (CPU): strength ordering, monotone success, sanity, early stop, bad input,
and the evaluate report's attacks section."""

from __future__ import annotations

import json

import pytest
import torch

from hgdefend import HyperGAN, Trainer
from hgdefend.attacks import FGSM, PGD, AdaptivePGD, FreshSamples, ensemble_loss
from hgdefend.evaluate import AttackOptions, EvaluateOptions, run_evaluate
from hgdefend.evaluate.attacks import attackers_best, findings
from hgdefend.evaluate.options import parse_numbers
from hgdefend.recipes import default_recipe, default_spec
from hgdefend.validation import HgdefendError

N = 80  # attacked inputs: enough for rates to be stable, small enough for 2 cores


@pytest.fixture(scope="module")
def ens(digits_deep4):
    return digits_deep4


@pytest.fixture(scope="module")
def xy(digits, ens):
    x, y = digits.test.x[:N], digits.test.y[:N]
    ok = ens.predict(x) == y
    assert ok.float().mean() > 0.8  # the ensemble is trained, so attacks have something to break
    return x[ok], y[ok]


def error_rate(ens, x_adv, y) -> float:
    return float((ens.predict(x_adv) != y).float().mean())


def test_pgd_at_least_as_strong_as_fgsm(ens, xy):
    x, y = xy
    for eps in (0.05, 0.1):
        fgsm = error_rate(ens, FGSM(ens, eps)(x, y), y)
        pgd = error_rate(ens, PGD(ens, eps, steps=20)(x, y), y)
        assert pgd >= fgsm - 0.02, (eps, fgsm, pgd)


def test_success_rises_with_eps(ens, xy):
    x, y = xy
    rates = [error_rate(ens, PGD(ens, e, steps=10)(x, y), y) for e in (0.0, 0.03, 0.1, 0.3)]
    assert rates[0] == 0.0  # eps 0 cannot change a correct prediction
    assert all(b >= a - 0.02 for a, b in zip(rates, rates[1:], strict=False)), rates
    assert rates[-1] > rates[1] + 0.3, rates


def test_fixed_sample_sanity_check(ens, xy):
    x, y = xy
    one = ens.member(0)
    keep = one.predict(x) == y
    x_adv = PGD(one, 0.5, steps=20)(x[keep], y[keep])
    assert error_rate(one, x_adv, y[keep]) >= 0.95


def test_perturbation_stays_in_budget_and_range(ens, xy):
    x, y = xy
    for norm, eps in (("linf", 0.1), ("l2", 0.5)):
        x_adv = PGD(ens, eps, steps=5, norm=norm, restarts=2)(x, y)
        d = (x_adv - x).flatten(1)
        size = d.abs().max(1).values if norm == "linf" else d.norm(dim=1)
        assert float(size.max()) <= eps + 1e-5
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def test_early_stop_stops(ens, xy):
    x, y = xy
    eps = 0.3
    atk = PGD(ens, eps, steps=40, early_stop=True, random_start=False)
    x_adv = atk(x, y)
    linf = (x_adv - x).flatten(1).abs().max(1).values
    assert error_rate(ens, x_adv, y) > 0.9  # it still fools
    assert float(linf.mean()) < 0.8 * eps  # ...but stops well inside the budget
    assert float(atk.last_info["steps_taken"].float().mean()) < 40
    fixed = PGD(ens, eps, steps=40, random_start=False)(x, y)
    assert float((fixed - x).flatten(1).abs().max(1).values.mean()) > float(linf.mean())
    # FGSM paper protocol: the smallest grid eps that fools, never more than eps
    fg = FGSM(ens, eps, early_stop=True, grid=10)
    fg(x, y)
    used = fg.last_info["eps_used"]
    assert float(used.max()) <= eps + 1e-6 and float(used.mean()) < eps


@pytest.fixture(scope="module")
def small_hg(digits):
    """A HyperGAN trained for a few steps: EOT mechanics need sampled weights, not accuracy."""
    hp, cfg = default_recipe(digits)
    cfg.steps, cfg.pretrain_max_steps = 10, 10
    torch.manual_seed(0)
    hg = HyperGAN(default_spec(digits), **hp)
    Trainer(hg, digits.train, cfg, progress=False, device="cpu").fit()
    return hg


def test_adaptive_eot_and_loss(small_hg, digits):
    trained_digits = small_hg
    x, y = digits.test.x[:40], digits.test.y[:40]
    sampler = FreshSamples(trained_digits, 3, seed=1)
    atk = AdaptivePGD(sampler, 0.2, steps=3, lam=0.5)
    x_adv = atk(x, y)
    assert sampler.calls >= 3  # fresh weights at every step
    assert float((x_adv - x).abs().max()) <= 0.2 + 1e-6
    bank = FreshSamples(trained_digits, 3, seed=1, bank_size=8)
    a, b = bank.forward_logits(x), bank.forward_logits(x)
    assert a.shape == (3, 40, trained_digits.target.num_outputs) and not torch.equal(a, b)
    logits = torch.randn(3, 5, 4)
    yy = torch.zeros(5, dtype=torch.long)
    assert not torch.allclose(ensemble_loss(logits, yy), ensemble_loss(logits, yy, score="entropy", lam=1.0))


def test_bad_input(ens, xy):
    x, y = xy
    with pytest.raises(HgdefendError, match="eps"):
        PGD(ens, -0.1)
    with pytest.raises(HgdefendError, match="eps"):
        FGSM(ens, float("nan"))
    with pytest.raises(HgdefendError, match="values must lie in"):
        PGD(ens, 0.1, steps=1)(x * 2 + 0.5, y)
    with pytest.raises(HgdefendError, match="norm"):
        PGD(ens, 0.1, norm="l1")
    with pytest.raises(HgdefendError, match="steps"):
        PGD(ens, 0.1, steps=0)
    with pytest.raises(HgdefendError, match="y"):
        FGSM(ens, 0.1)(x, y[:-1])
    with pytest.raises(HgdefendError, match="target"):
        FGSM(42, 0.1)
    with pytest.raises(HgdefendError, match="attacks: unknown name 'cw'"):
        AttackOptions(attacks="fgsm,cw")
    with pytest.raises(HgdefendError, match="protocols"):
        AttackOptions(protocols="paper,whitebox")
    with pytest.raises(HgdefendError, match="baselines"):
        AttackOptions(baselines="svm")
    with pytest.raises(HgdefendError, match="eps"):
        parse_numbers("0.1,-0.2", "eps")
    with pytest.raises(HgdefendError, match="members"):
        run_evaluate(EvaluateOptions(members=0, attacks="pgd"))
    with pytest.raises(HgdefendError, match="protocols"):  # fails before any training
        run_evaluate(EvaluateOptions(attacks="pgd", protocols="nope"))
    with pytest.raises(HgdefendError, match="eot_members"):
        AttackOptions(eot_members=0)


def test_evaluate_writes_attacks_section(tmp_path):
    opts = EvaluateOptions(
        out=str(tmp_path),
        members=3,
        train_steps=30,
        quiet=True,
        attacks="fgsm,pgd",
        eps="0.1,0.3",
        protocols="paper,fixed,adaptive",
        baselines="deep-ensemble,single",
        attack_inputs=20,
        attack_steps=3,
        baseline_steps=40,
        attack_bootstrap=10,
        attack_lambdas=(0.0, 1.0),
    )
    report, paths = run_evaluate(opts)
    sec = report["attacks"]
    assert [m["name"] for m in sec["methods"]] == ["hypergan", "deep-ensemble", "single"]
    for m in sec["methods"]:
        assert len(m["rows"]) == 2 * 3 * 2
        for r in m["rows"]:
            for key in ("attack_success", "fresh_accuracy", "auroc", "tpr_at_threshold", "missed_and_wrong"):
                assert 0.0 <= r[key] <= 1.0, (key, r)
            assert r["params"]["eps"] == r["eps"]
    assert sec["methods"][2]["score"] == "max_prob"
    assert {len(r["lambda_sweep"]) for r in sec["methods"][0]["rows"] if r["protocol"] == "adaptive"} == {2}
    assert "passed" in sec["sanity"] and sec["config"]["steps"] == 3
    assert (tmp_path / sec["plot"]).stat().st_size > 0
    md = paths["markdown"].read_text()
    assert "## Attacks" in md and "Sanity check" in md and "deep-ensemble" in md
    on_disk = json.loads(paths["json"].read_text())
    assert on_disk["attacks"]["methods"][0]["rows"][0]["attack"] == "fgsm"
    assert all(f in report["findings"] for f in sec["findings"])
    assert all(md.count(f) == 1 for f in sec["findings"])  # findings appear once, at the top
    assert (tmp_path / "report.html").is_file() and report["summary"]["worst_finding"] is not None


def test_findings_report_inputs_that_get_through_not_a_low_auroc_alone():
    """One finding per eps where the per-input worst case over every row lets a tenth or more
    through (a high AUROC does not hide it), one per inconclusive Tramèr check; baselines are not
    findings."""

    def worst(eps, missed, **first):
        return {"eps": eps, "rows": 3, "missed_and_wrong": missed, "accuracy": 0.1, "through_first_by": first}

    check = {
        "eps": 0.1,
        "conclusive": False,
        "verdict": "inconclusive: the attack is too weak for this model",
    }
    sec = {
        "sanity": {"passed": True},
        "methods": [
            {"name": "hypergan", "score": "entropy", "rows": [],
             "worst_case": [worst(0.1, 0.025), worst(0.3, 0.83, **{"pgd adaptive": 80, "pgd fixed": 3})],
             "tramer": [check, {"eps": 0.3, "conclusive": True, "verdict": "consistent"}]},
            {"name": "deep-ensemble", "score": "entropy", "rows": [],
             "worst_case": [worst(0.3, 0.9)], "tramer": []},
        ],
    }  # fmt: skip
    out = findings(sec)
    assert len(out) == 2
    assert out[0].startswith("Inconclusive at eps 0.1 (Tramèr check)")
    assert "eps 0.3" in out[1] and "83.0 %" in out[1] and "pgd adaptive: 80" in out[1]
    assert "worst case over 3 rows" in out[1]


def test_adaptive_attacks_record_their_lambda_even_when_zero():
    ens = lambda x: torch.zeros(2, len(x), 3)  # noqa: E731 - any member-logit callable is a target
    d = FGSM(ens, 0.1, score="entropy", lam=0.0).describe()
    assert d["lam"] == 0.0 and d["score"] == "entropy"
    assert "lam" not in FGSM(ens, 0.1).describe()


def test_attackers_best_lambda_breaks_ties_by_success():
    # MNIST, FGSM eps 0.1 (benchmarks/RESULTS.md): λ = 0 and 0.3 let the same 2.5 % through
    sweep = [
        {"lam": 0.0, "missed_and_wrong": 0.025, "attack_success": 0.142, "auroc": 0.916},
        {"lam": 0.3, "missed_and_wrong": 0.025, "attack_success": 0.025, "auroc": 0.257},
        {"lam": 1.0, "missed_and_wrong": 0.020, "attack_success": 0.005, "auroc": 0.256},
    ]
    assert attackers_best(sweep)["lam"] == 0.0
    assert attackers_best(sweep[1:])["lam"] == 0.3
    sweep[2]["missed_and_wrong"] = 0.5
    assert attackers_best(sweep)["lam"] == 1.0


def test_transfer_rate_is_one_onto_the_source_itself_and_lower_onto_others(ens, xy):
    from hgdefend.attacks.transfer import transfer_rate

    x, y = xy
    one = ens.member(0)
    itself = transfer_rate(one, one, x, y, eps=0.3, steps=10)
    assert itself["source_fooled"] > 0 and itself["transfer_rate"] == 1.0
    others = transfer_rate(
        one, ens._replace({n: t[1:] for n, t in ens.params.items()}), x, y, eps=0.3, steps=10
    )
    assert others["judges"] == ens.k - 1 and 0.0 <= others["transfer_rate"] <= 1.0
