"""The ``missed=`` gate (an upper bound on attacked inputs that are misclassified and not flagged),
the small attack section ``hgdefend evaluate`` runs by default, and ``--no-attacks``."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from hgdefend import save_model
from hgdefend.cli.main import cli
from hgdefend.errors import HgdefendError
from hgdefend.evaluate import AttackOptions, EvaluateOptions
from hgdefend.evaluate.attacks import TRAMER_BOUND
from hgdefend.evaluate.gate import apply_gate, parse_fail_under, render_gate
from hgdefend.evaluate.summary import summarise
from hgdefend.vocab import ATTACK_NAMES

ROW = "pgd adaptive eps=0.3 (entropy)"


def _report(missed: float | None = 0.83) -> dict:
    ood = {"name": "ood (entropy)", "auroc": 0.95, "aupr": 0.9, "tpr": 0.9}
    report = {"detection": {"gate_rows": [ood]}}
    if missed is not None:
        row = {"name": ROW, "missed": missed}
        report["attacks"] = {"gate_rows": [row]}
    return report


# --------------------------------------------------------------------------- parse / apply / render
def test_parse_fail_under_takes_missed_as_a_fraction():
    assert parse_fail_under("auroc=0.9, MISSED=0.03") == {"auroc": 0.9, "missed": 0.03}
    assert parse_fail_under("missed=0") == {"missed": 0.0} and parse_fail_under("missed=1") == {"missed": 1.0}
    for bad in ("missed=2", "missed=x", "missed=-0.1", "missed=nan", "missed="):
        with pytest.raises(
            HgdefendError, match=r"fail_under: missed needs the largest share allowed in \[0, 1\]"
        ):
            parse_fail_under(bad)
    with pytest.raises(HgdefendError, match="twice"):
        parse_fail_under("missed=0.1,missed=0.2")


def test_missed_is_an_upper_bound():
    failed = apply_gate(_report(0.83), {"missed": 0.03})
    assert not failed["passed"] and failed["failures"] == [f"missed 0.830 > 0.03 on {ROW}"]
    assert failed["checks"] == [
        {"metric": "missed", "limit": 0.03, "bound": "upper", "value": 0.83, "on": ROW, "passed": False}
    ]
    assert apply_gate(_report(0.03), {"missed": 0.03})["passed"]  # at the limit: passes
    assert apply_gate(_report(0.0), {"missed": 0.0})["passed"]
    # only attack rows carry "missed": the OOD row is not checked against it
    assert [c["on"] for c in apply_gate(_report(0.01), {"missed": 0.05})["checks"]] == [ROW]


def test_missed_and_lower_bounds_together():
    gate = apply_gate(_report(0.83), {"auroc": 0.96, "missed": 0.5})
    assert gate["failures"] == ["auroc 0.950 < 0.96 on ood (entropy)", f"missed 0.830 > 0.5 on {ROW}"]
    md = "\n".join(render_gate(gate))
    assert "**FAILED** (passes when auroc >= 0.96, missed <= 0.5)" in md
    assert f"| missed | {ROW} | 0.830 | <= 0.5 | **no** |" in md
    assert "| auroc | ood (entropy) | 0.950 | >= 0.96 | **no** |" in md
    # attack rows carry only "missed": an OOD gate is not failed by a (low) adaptive-attack AUROC
    assert [c["on"] for c in gate["checks"] if c["metric"] == "auroc"] == ["ood (entropy)"]


def test_missed_without_an_attack_fails_as_not_measured():
    gate = apply_gate(_report(None), {"missed": 0.5})
    assert not gate["passed"] and gate["failures"] == ["missed: not measured (no attack was run)"]
    assert apply_gate(_report(None), {"auroc": 0.9})["passed"]  # the OOD gate alone is unchanged
    # an exported file without a threshold: transfer rows carry "missed" as None (nothing is flagged)
    unflagged = {"transfer": {"gate_rows": [{"name": "transfer", "missed": None}]}}
    gate = apply_gate(unflagged, {"missed": 0.5})
    assert gate["failures"] == ["missed: not measured (no threshold to flag at)"]


# --------------------------------------------------------------------------- options
def test_default_section_and_its_refinements():
    cfg = EvaluateOptions().attack_options()
    assert cfg == AttackOptions.default_section(seed=0, target_fpr=0.05)
    assert (
        cfg.preset == "default" and cfg.attacks == ("apgd-ce", "apgd-ce-t") and cfg.protocols == ("adaptive",)
    )
    assert cfg.eps == (0.1, 0.3) and cfg.baselines == () and cfg.lambdas == (0.0, 1.0)
    assert cfg.targets == 3 and not cfg.autoattack
    assert cfg.eot_members == 20 and cfg.n_inputs == 100 and cfg.steps == 20
    refined = EvaluateOptions(eps="0.3", attack_inputs=7, seed=3).attack_options()
    assert refined.eps == (0.3,) and refined.n_inputs == 7 and refined.seed == 3
    assert refined.protocols == ("adaptive",) and refined.preset == "default"
    full = EvaluateOptions(attacks="fgsm,pgd", attack_inputs=7).attack_options()
    assert full.preset is None and full.protocols == ("paper", "fixed") and full.n_inputs == 7
    every = EvaluateOptions(attacks="all").attack_options()
    assert every.attacks == ATTACK_NAMES and every.protocols == ("fixed", "adaptive") and every.autoattack
    assert every.targets == 9
    assert EvaluateOptions(no_attacks=True).attack_options() is None
    assert EvaluateOptions(onnx="x.onnx").attack_options() is None  # transfer attacks need --attacks


def test_no_attacks_contradictions_are_one_clear_error():
    with pytest.raises(HgdefendError, match="no_attacks: --no-attacks and --attacks contradict"):
        EvaluateOptions(no_attacks=True, attacks="pgd").checked()
    with pytest.raises(HgdefendError, match="no_attacks: .*turns off"):
        EvaluateOptions(no_attacks=True, eps="0.1").checked()
    with pytest.raises(HgdefendError, match="with --onnx, .* need --attacks"):
        EvaluateOptions(onnx="x.onnx", eps="0.1").checked()


def test_summary_says_plainly_when_no_attack_ran():
    base = {"data": {"task": "classification"}, "model": {}}
    lines = summarise(base)["lines"]
    assert (
        "Attacks: none were run (--no-attacks): this report says nothing about adversarial inputs." in lines
    )
    regression = summarise({**base, "data": {"task": "regression"}})["lines"]
    assert any("none were run (attacks cover classification only)" in line for line in regression)


# --------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def model_file(trained_digits, digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(path, trained_digits, dataset=digits.describe(), training={"steps": 400, "seed": 0})
    return path


def test_cli_rejects_bad_missed_values_and_contradictions_before_any_work(tmp_path):
    runner = CliRunner()
    for extra in (
        ["--fail-under", "missed=2"],
        ["--fail-under", "missed=x"],
        ["--no-attacks", "--attacks", "pgd"],
    ):
        out = tmp_path / "r"
        res = runner.invoke(cli, ["evaluate", "--out", str(out), "-q", *extra])
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
        assert res.output.startswith("error: ") and not out.exists()


def test_default_attack_section_end_to_end_and_the_missed_gate(model_file, tmp_path):
    """The default section (shrunk to 20 inputs and 3 steps by its refining options) runs without
    --attacks; ``missed=0`` fails exactly when some attacked input got through."""
    out = tmp_path / "r"
    args = ["evaluate", "--model", str(model_file), "--members", "5", "--attack-inputs", "20",
            "--attack-steps", "3", "--fail-under", "missed=0", "--out", str(out),
            "--threads", "1"]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    report = json.loads((out / "report.json").read_text())
    sec = report["attacks"]
    cfg = sec["config"]
    assert cfg["preset"] == "default" and cfg["attacks"] == ["apgd-ce", "apgd-ce-t"]
    assert cfg["protocols"] == ["adaptive"]
    assert (
        cfg["eps"] == [0.1, 0.3] and cfg["eot_members"] == 20 and cfg["n_inputs"] == 20 and cfg["steps"] == 3
    )
    (hg,) = sec["methods"]
    assert [(r["attack"], r["eps"]) for r in hg["rows"]] == [
        ("apgd-ce", 0.1), ("apgd-ce", 0.3), ("apgd-ce-t", 0.1), ("apgd-ce-t", 0.3)]  # fmt: skip
    assert "passed" in sec["sanity"] and (out / sec["plot"]).is_file()
    assert all(len(r["lambda_sweep"]) == 2 for r in hg["rows"])
    names = [f"{r['attack']} adaptive eps={r['eps']:g} (entropy)" for r in hg["rows"]]
    names += [f"worst case over all attacks eps={e} (entropy)" for e in ("0.1", "0.3")]
    values = [r["missed_and_wrong"] for r in hg["rows"]] + [w["missed_and_wrong"] for w in hg["worst_case"]]
    flags = [r["inconclusive"] for r in hg["rows"]] + [w["inconclusive"] for w in hg["worst_case"]]
    assert sec["gate_rows"] == [
        {"name": n, "missed": v, "inconclusive": f} for n, v, f in zip(names, values, flags, strict=True)
    ]
    # the worst case over attacks is at least as high as every row at its eps
    for w in hg["worst_case"]:
        at = [r["missed_and_wrong"] for r in hg["rows"] if r["eps"] == w["eps"]]
        assert w["missed_and_wrong"] >= max(at)
    want = [f"gate failed: missed {v:.3f} > 0 on {n}" if not f else
            f"gate failed: missed on {n}: inconclusive (the Tramèr check says the attack is too weak "
            "for this model), which is not a pass"
            for n, v, f in zip(names, values, flags, strict=True) if v > 0 or f]  # fmt: skip
    failed = [line for line in res.stderr.splitlines() if line.startswith("gate failed: ")]
    assert failed == want and res.exit_code == (1 if want else 0), res.output
    md = (out / "report.md").read_text()
    assert "small default section" in md and md.count(TRAMER_BOUND) == 2  # the section and the summary
    worst = next(line for line in report["summary"]["lines"] if line.startswith("Worst finding"))
    assert "default section" in worst and "Tramèr" in worst and "Worst finding" in res.stdout
