"""Checks for obfuscated gradients (hgdefend.evaluate.gradient_checks): they record their numbers, a
normal ensemble passes the eps sweep, a defence whose gradients are zero fails, and the attack section
carries and renders them (Square in the full suite only)."""

from __future__ import annotations

import pytest
import torch

from hgdefend.attacks import PGD
from hgdefend.evaluate import AttackOptions, EvaluateOptions
from hgdefend.evaluate.attacks import attacks_section, findings, render_attacks
from hgdefend.evaluate.context import EvalContext
from hgdefend.evaluate.gradient_checks import (
    attack_name,
    large_eps,
    obfuscation_checks,
    render_checks,
    square_attack,
)
from hgdefend.evaluate.gradient_checks import findings as check_findings
from hgdefend.evaluate.summary import summarise
from hgdefend.probabilities import predict
from hgdefend.recipes import train_model

N, STEPS, QUERIES = 20, 10, 60
KEYS = ("eps_sweep", "more_steps", "black_box")


class _Quantised:
    """A "defence" that rounds its input to 5 levels first: no gradient reaches the input."""

    def __init__(self, ens) -> None:
        self.ens = ens

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.ens.forward_logits(torch.round(x * 4) / 4)


def _checks(target, digits):
    sub = digits.test.take(N)

    def predict_fn(x):
        with torch.no_grad():
            return predict(target.forward_logits(x))

    return obfuscation_checks(
        lambda e, s: PGD(target, e, None, s, seed=0),
        predict_fn,
        sub.x,
        sub.y,
        eps=(0.1, 0.3),
        steps=STEPS,
        large=large_eps((0.1, 0.3), digits.value_range),
        black_box=lambda x, y, e: square_attack(target, x, y, e, queries=QUERIES, seed=0),
        black_box_info={"attack": "square", "queries": QUERIES},
    )


@pytest.fixture(scope="module")
def normal(digits, digits_deep4):
    return _checks(digits_deep4, digits)


@pytest.fixture(scope="module")
def broken(digits, digits_deep4):
    return _checks(_Quantised(digits_deep4), digits)


def test_attack_and_large_eps_follow_the_section():
    assert attack_name(("fgsm", "pgd")) == "pgd" and attack_name(("apgd-dlr",)) == "apgd-dlr"
    assert attack_name(("fgsm",)) == "pgd"
    assert large_eps((0.1, 0.3), (0.0, 1.0)) == 0.6 and large_eps((0.1,), (0.0, 1.0)) == 0.5
    assert large_eps((0.4,), (0.0, 0.7)) == pytest.approx(0.7)


def test_checks_record_their_numbers(normal):
    assert normal["inputs"] == N and normal["tolerance"] == pytest.approx(0.05 + 1 / N)
    sweep = normal["eps_sweep"]
    assert sweep["eps"] == [0.1, 0.3, 0.6] and len(sweep["accuracy"]) == 3 and sweep["large_eps"] == 0.6
    more = normal["more_steps"]
    assert (more["eps"], more["steps"], more["more_steps"]) == (0.3, STEPS, 2 * STEPS)
    assert more["accuracy"] == sweep["accuracy"][1]
    bb = normal["black_box"]
    assert bb["eps"] == 0.3 and bb["queries"] == QUERIES and bb["white_box_accuracy"] == more["accuracy"]
    for k in KEYS:
        assert isinstance(normal[k]["passed"], bool) and normal[k]["verdict"]
    accs = [*sweep["accuracy"], more["accuracy_more_steps"], bb["accuracy"], normal["clean_accuracy"]]
    assert all(0.0 <= a <= 1.0 for a in accs)
    assert normal["passed"] == all(normal[k]["passed"] for k in KEYS)


def test_a_normal_ensemble_passes_the_eps_sweep(normal):
    sweep = normal["eps_sweep"]
    assert sweep["passed"], sweep
    assert sweep["accuracy"][-1] <= 0.05 and normal["clean_accuracy"] > 0.5


def test_zero_gradients_fail_a_check_and_make_a_finding(broken, normal):
    failed = [k for k in KEYS if broken[k]["passed"] is False]
    assert failed and not broken["passed"], broken
    # the white-box attack does not move the inputs: Square (no gradients) does far better
    assert broken["black_box"]["accuracy"] < broken["black_box"]["white_box_accuracy"]
    (sentence,) = check_findings(broken)
    assert sentence.startswith("Signs of obfuscated gradients") and "overstate robustness" in sentence
    assert broken[failed[0]]["verdict"] in sentence
    assert (check_findings(normal) == []) == normal["passed"]


def test_black_box_can_be_skipped(digits, digits_deep4):
    sub = digits.test.take(4)
    res = obfuscation_checks(lambda e, s: PGD(digits_deep4, e, None, s, seed=0),
                             lambda x: predict(digits_deep4.member_logits(x)), sub.x, sub.y,
                             eps=(0.3,), steps=2, large=0.6, skipped_black_box="too slow here")  # fmt: skip
    assert res["black_box"] == {"eps": 0.3, "skipped": "too slow here", "passed": None}
    text = "\n".join(render_checks({"attack": "pgd", **res}))
    assert "too slow here" in text and "skipped" in text


# --------------------------------------------------------------------------- in the attack section
@pytest.fixture(scope="module")
def tiny_hg(digits):
    return train_model(digits, seed=0, device="cpu", steps=30, progress=False).hypergan


def _section(digits, hg, tmp_path, cfg):
    ctx = EvalContext.build(EvaluateOptions(out=str(tmp_path), members=3), digits, hg)
    ctx.attack = cfg
    return attacks_section(ctx)


def test_default_section_runs_the_white_box_checks_and_renders_them(digits, tiny_hg, tmp_path):
    cfg = AttackOptions.default_section(eps=(0.3,), n_inputs=8, steps=2, eot_members=2, n_bootstrap=0)
    sec = _section(digits, tiny_hg, tmp_path, cfg)
    gc = sec["gradient_checks"]
    assert gc["attack"] == "apgd-ce" and gc["inputs"] == 8
    assert gc["eps_sweep"]["eps"] == [0.3, 0.6] and gc["more_steps"]["more_steps"] == 4
    assert gc["black_box"]["passed"] is None and "--attacks" in gc["black_box"]["skipped"]
    text = "\n".join(render_attacks(sec))
    assert "Checks for obfuscated gradients" in text and text.index("Sanity check") < text.index("Checks for")
    assert "white-box at least as strong as black-box" in text
    # a failed check is a finding at the top of the report
    failed = {**gc, "passed": False, "more_steps": {**gc["more_steps"], "passed": False, "verdict": "V"}}
    assert any(
        f.startswith("Signs of obfuscated gradients: V;")
        for f in findings({**sec, "gradient_checks": failed})
    )
    conclusion = summarise({"attacks": {**sec, "gradient_checks": failed}})["conclusion"]
    assert "obfuscated gradients failed" in conclusion
    assert "obfuscated" not in summarise({"attacks": sec})["conclusion"] or not gc["passed"]


def test_full_suite_runs_square(digits, tiny_hg, tmp_path):
    cfg = AttackOptions(attacks=("fgsm", "pgd"), protocols=("fixed",), eps=(0.3,), n_inputs=6, steps=2,
                        eot_members=2, n_bootstrap=0)  # fmt: skip
    gc = _section(digits, tiny_hg, tmp_path, cfg)["gradient_checks"]
    assert gc["attack"] == "pgd" and gc["inputs"] == 6
    assert gc["black_box"]["queries"] == 300 and isinstance(gc["black_box"]["passed"], bool)
    assert 0.0 <= gc["black_box"]["accuracy"] <= 1.0
