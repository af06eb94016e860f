"""The evaluate suite builds the attack it names: APGD rows are APGD (not PGD under another name), the
default section switches to APGD by naming it, and the paper protocol (early stop) refuses APGD."""

from __future__ import annotations

import pytest

from hgdefend.attacks import APGDCE, PGD, AdaptivePGD
from hgdefend.errors import HgdefendError
from hgdefend.evaluate import AttackOptions, EvaluateOptions
from hgdefend.evaluate.attacks import _make_attack, attacks_section
from hgdefend.evaluate.context import EvalContext
from hgdefend.vocab import DEFAULT_SUITE_ATTACKS


def test_the_full_suite_defaults_to_the_default_suite_attacks():
    assert AttackOptions().attacks == DEFAULT_SUITE_ATTACKS
    assert EvaluateOptions(attacks="pgd").attack_options().attacks == ("pgd",)


def test_apgd_has_no_paper_protocol():
    with pytest.raises(HgdefendError, match="protocols: apgd-ce has no early stop"):
        EvaluateOptions(attacks="apgd-ce").checked()  # the full suite's protocols: paper,fixed
    assert EvaluateOptions(attacks="apgd-ce", protocols="fixed,adaptive").attack_options().attacks == (
        "apgd-ce",
    )


def test_make_attack_builds_the_named_attack(trained_digits):
    cfg = AttackOptions.default_section(attacks=("apgd-ce",), steps=3)
    atk = _make_attack("apgd-ce", "adaptive", trained_digits.ensemble(2), 0.3, cfg, score="entropy", lam=1.0)
    assert isinstance(atk, APGDCE) and atk.describe()["attack"] == "apgd-ce" and atk.lam == 1.0
    assert atk.steps == 3 and "alpha" not in atk.describe()
    pgd = _make_attack("pgd", "adaptive", trained_digits.ensemble(2), 0.3, cfg, score="entropy")
    assert isinstance(pgd, AdaptivePGD)
    fixed = _make_attack("pgd", "fixed", trained_digits.ensemble(2), 0.3, cfg, score="entropy")
    assert type(fixed) is PGD


def test_default_section_with_apgd_runs(trained_digits, digits, tmp_path):
    ctx = EvalContext.build(EvaluateOptions(out=str(tmp_path), members=3), digits, trained_digits)
    ctx.attack = AttackOptions.default_section(attacks=("apgd-ce",), eps=(0.3,), n_inputs=8, steps=2,
                                               eot_members=2, n_bootstrap=0)  # fmt: skip
    sec = attacks_section(ctx)
    (row,) = sec["methods"][0]["rows"]
    assert (
        row["attack"] == "apgd-ce" and row["params"]["attack"] == "apgd-ce" and row["protocol"] == "adaptive"
    )
    assert sec["gate_rows"][0]["name"] == "apgd-ce adaptive eps=0.3 (entropy)"
