"""benchmarks/protect_fmnist.py (issue #16, benchmark (a)) in its --quick form: a user's Fashion-MNIST
CNN protected by a head HyperGAN beside the single model, a deep ensemble of heads and a full
HyperGAN. Checks the JSON's structure and invariants, not the (tiny, untrained) numbers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import BENCHMARKS, SHARED_DATA, run_benchmark

METHODS = {"single", "head-hypergan", "head-ensemble", "full-hypergan"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    if not (SHARED_DATA / "MNIST" / "raw").is_dir() or not (SHARED_DATA / "FashionMNIST" / "raw").is_dir():
        pytest.skip("../shared/data/MNIST and FashionMNIST are not beside this checkout")
    shared_data = SHARED_DATA
    out = tmp_path_factory.mktemp("protect") / "run.json"
    stdout = run_benchmark("protect_fmnist.py", "--quick", "--budget", "30", "--data-root", str(shared_data),
                           "--out", str(out))  # fmt: skip
    result = json.loads(stdout)
    assert json.loads(out.read_text()) == result
    return result, out


def _aurocs(row: dict):
    for ood in row["ood"].values():
        for name, m in ood.items():
            if name != "disagreement":
                yield m["auroc"]
    for e in row.get("attack", {}).get("eps", {}).values():
        for r in e["runs"]:
            yield r["auroc"]


def test_every_method_runs_under_both_protocols_with_its_budget(quick):
    d, _ = quick
    assert d["benchmark"] == "protect_fmnist"
    assert d["budgets_s"] == {"mnist": 30.0, "heldout": 15.0}
    by_protocol: dict[str, dict] = {}
    for r in d["rows"]:
        by_protocol.setdefault(r["protocol"], {})[r["method"]] = r
    assert set(by_protocol) == {"mnist", "heldout"}
    for protocol, rows in by_protocol.items():
        assert set(rows) == METHODS
        assert {r["budget_s"] for r in rows.values()} == {d["budgets_s"][protocol]}
        for method, r in rows.items():
            assert r["score"] == ("max_prob" if method == "single" else "entropy")
            if method != "single":  # the protection step stopped at its budget or step cap
                assert 1 <= r["training"]["steps"] <= d["args"]["quick_steps"]
                assert r["training"]["train_seconds"] <= r["budget_s"] + 5
        assert rows["single"]["members"] == 1
        assert rows["head-ensemble"]["members"] == 5
        assert rows["head-hypergan"]["members"] == rows["full-hypergan"]["members"] == d["args"]["members"]
        # only the generated head differs from the user's model: a small part of the full net's weights
        assert (
            rows["head-hypergan"]["training"]["generated_parameters"]
            < (rows["full-hypergan"]["training"]["generated_parameters"])
        )
    assert by_protocol["mnist"]["single"]["classes"] == list(range(10))
    assert by_protocol["heldout"]["single"]["classes"] == [0, 1, 2, 3, 4]
    assert by_protocol["heldout"]["single"]["user_cnn"]["backbone"] == "fmnist_cnn.py:cnn_5"


def test_ood_sets_scores_and_aurocs(quick):
    d, _ = quick
    for r in d["rows"]:
        expected = {"mnist"} if r["protocol"] == "mnist" else {"mnist", "fmnist-heldout"}
        assert set(r["ood"]) == expected
        for ood in r["ood"].values():
            scores = {"entropy", "max_prob"} | ({"mutual_information"} if r["members"] > 1 else set())
            assert set(ood) - {"disagreement"} == scores
            for name in scores:
                assert 0.0 <= ood[name]["realised_fpr"] <= 1.0
                assert 0.0 <= ood[name]["tpr_at_threshold"] <= 1.0
        assert 0.0 <= r["ensemble_accuracy"] <= 1.0
        assert all(0.0 <= a <= 1.0 for a in _aurocs(r))


def test_attack_table_and_goal_are_consistent(quick):
    d, _ = quick
    for r in d["rows"]:
        if r["protocol"] != "mnist":
            assert "attack" not in r
            continue
        at = r["attack"]
        assert at["score"] == r["score"] and 0.0 <= at["realised_fpr"] <= 1.0
        assert (at["eot"] is not None) == r["method"].endswith("hypergan")
        for e in at["eps"].values():
            assert {(x["attack"], x["lam"]) for x in e["runs"]} == {("apgd-ce", 0.0), ("apgd-ce", 1.0)}
            # per-input worst case over the runs: at least as bad as each run, and "missed" inputs are wrong
            assert e["robust_accuracy"] <= min(x["robust_accuracy"] for x in e["runs"])
            assert e["missed_and_wrong"] >= max(x["missed_and_wrong"] for x in e["runs"])
            assert e["missed_and_wrong"] <= 1.0 - e["robust_accuracy"] + 1e-12
        assert 0.0 <= at["checks"]["accuracy_at_large_eps"] <= 1.0
    g = d["goal"]
    rows = {r["method"]: r for r in d["rows"] if r["protocol"] == "mnist"}
    assert g["single"] == rows["single"]["ood"]["mnist"]["max_prob"]["auroc"]
    assert g["head_hypergan"] == rows["head-hypergan"]["ood"]["mnist"]["entropy"]["auroc"]
    assert g["head_ensemble"] == rows["head-ensemble"]["ood"]["mnist"]["entropy"]["auroc"]
    assert g["met"] == (g["head_hypergan"] > g["single"] and g["head_hypergan"] >= g["head_ensemble"])


def test_table_renders_every_row(quick):
    d, path = quick
    table = run_benchmark("protect_fmnist.py", "--table", str(path))
    ood_rows = [line for line in table.splitlines() if line.startswith(("| mnist |", "| heldout |"))]
    assert len(ood_rows) == sum(len(r["ood"]) for r in d["rows"]) + sum("attack" in r for r in d["rows"])
    assert ("not met" in table) == (not d["goal"]["met"])


def test_unknown_method_is_refused_naming_the_option():
    out = subprocess.run([sys.executable, str(BENCHMARKS / "protect_fmnist.py"), "--methods", "single,nope"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode != 0 and "--methods" in out.stderr and "nope" in out.stderr
