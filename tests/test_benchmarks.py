"""The speed benchmarks run end to end on tiny cases and print the JSON RESULTS.md is built from.

No timing is asserted (timings are what the scripts measure, not what tests check); these keep the
scripts from rotting between measured runs.
"""

import json

from hgdefend.vocab import ATTACK_NAMES
from tests.conftest import run_benchmark


def _run(script: str, *args: str) -> dict:
    return json.loads(run_benchmark(script, *args))


def test_members_benchmark_compares_auto_with_the_loop_in_the_same_run():
    d = _run("members.py", "--target", "digits_small", "--k", "2", "--batch", "1,200",
             "--modes", "score,attack", "--strategies", "auto,grouped,loop",
             "--min-time", "0", "--max-reps", "2", "--threads", "1")  # fmt: skip
    rows = d["results"]
    assert len(rows) == 2 * 2 * 3
    assert all(r["speedup_vs_loop"] > 0 for r in rows)
    resolved = {(r["mode"], r["batch"]): r["auto_resolved"] for r in rows if r["strategy"] == "auto"}
    # 200 digits × 1,546 activations is past the CPU crossover, one digit is not
    assert resolved == {("score", 1): "grouped", ("score", 200): "loop",
                        ("attack", 1): "grouped", ("attack", 200): "loop"}  # fmt: skip


def test_attack_speed_benchmark_gives_identical_adversarials(shared_data):
    d = _run("attack_speed.py", "--images", "4", "--members", "2", "--steps", "2", "--repeats", "1",
             "--threads", "1", "--data-root", str(shared_data))  # fmt: skip
    assert set(d["strategies"]) == {"auto", "grouped", "loop"}
    # identical so far; the bound leaves room for one sign flip of a near-zero gradient (2 × alpha)
    assert all(r["max_abs_diff_adv_vs_loop"] <= 0.02 for r in d["strategies"].values())


def test_diversity_benchmark_quick_compares_methods_in_one_run():
    d = _run("diversity.py", "--quick", "--methods", "paper,offdata:0.5,deep-ensemble,mc-dropout",
             "--threads", "1")  # fmt: skip
    rows = {r["method"]: r for r in d["rows"]}
    assert list(rows) == ["paper", "offdata:0.5", "deep-ensemble", "mc-dropout"]
    for r in rows.values():
        assert 0 <= r["ensemble_accuracy"] <= 1 and 0 <= r["mutual_information"]["auroc"] <= 1
        assert 0 <= r["pairwise_disagreement_ood"] <= 1
    assert rows["offdata:0.5"]["training"]["recipe"]["diversity"] == "offdata"
    assert rows["offdata:0.5"]["training"]["recipe"]["diversity_weight"] == 0.5
    assert rows["mc-dropout"]["transfer"] is None and "weight_norm_rel_std_mean" in rows["paper"]
    assert rows["deep-ensemble"]["transfer"]["judges"] == 3  # the other members of the 4
    assert rows["paper"]["transfer"]["judges"] == 9  # a fresh sample of 10, less the source


def test_robust_benchmark_quick_attacks_every_method_in_one_run():
    d = _run("robust_mnist.py", "--quick", "--threads", "1")
    rows = {r["method"]: r for r in d["rows"]}
    assert list(rows) == ["hypergan", "hypergan-adv", "deep-ensemble", "deep-ensemble-adv", "single",
                          "single-adv", "binary-detector"]  # fmt: skip
    for r in rows.values():
        e = r["eps"]["0.1"]
        # the per-input worst case is at least as bad as every single attack run
        assert e["missed_and_wrong"] >= max(run["missed_and_wrong"] for run in e["runs"])
        assert 1 - e["robust_accuracy"] >= max(1 - run["robust_accuracy"] for run in e["runs"])
        assert {(run["attack"], run["lam"]) for run in e["runs"]} == {
            ("apgd-ce", 0.0), ("apgd-ce", 1.0), ("apgd-dlr", 0.0), ("apgd-dlr", 1.0)}  # fmt: skip
        c = r["checks"]  # obfuscation checks: large eps, more steps, black-box Square beside APGD
        assert c["white_box_at_least_as_strong"] == (
            c["accuracy_at_eps"]["accuracy"] <= c["square"]["accuracy"]
        )
        assert c["accuracy_more_steps"]["steps"] == 2 * c["accuracy_at_eps"]["steps"]
    assert rows["hypergan-adv"]["training"]["recipe"]["adversarial"] == "pgd"
    # every method records the steps it got (runs compare methods at equal wall-clock budgets)
    assert {r["training"]["steps"] for r in rows.values()} == {d["args"]["quick_steps"]}
    assert rows["deep-ensemble-adv"]["training"]["members"] == 3
    assert rows["binary-detector"]["training"]["detector"]["train_inputs"] == 600
    assert rows["single"]["score"] == "max_prob" and "BinaryInputDetector" in rows["binary-detector"]["score"]


def test_robust_benchmark_continues_a_hypergan_from_its_checkpoint(tmp_path):
    """A long run can be continued in a later session: the resumed model is the one that was saved."""
    args = ("--quick", "--threads", "1", "--methods", "hypergan-adv", "--quick-steps", "6",
            "--checkpoint-dir", str(tmp_path))  # fmt: skip
    first = _run("robust_mnist.py", *args)["rows"][0]
    assert (tmp_path / "hypergan-adv.safetensors").is_file()
    again = _run("robust_mnist.py", *args, "--resume")["rows"][0]  # all 6 steps done: nothing to train
    assert again["training"]["checkpoint"]["resumed"] and not first["training"]["checkpoint"]["resumed"]
    assert again["training"]["steps"] == first["training"]["steps"] == 6
    assert again["clean_accuracy"] == first["clean_accuracy"]


def test_head_cost_benchmark_quick_times_heads_against_one_forward():
    d = _run("head_cost.py", "--quick", "--threads", "1")
    rows = {r["case"]: r for r in d["rows"]}
    assert list(rows) == ["baseline", "frozen part", "K=1", "K=3"]
    assert [r["k"] for r in rows.values()] == [None, None, 1, 3]
    assert rows["baseline"]["ratio_to_baseline"] == 1.0
    assert all(r["ratio_to_baseline"] > 0 and r["seconds_per_input"] > 0 for r in rows.values())
    assert isinstance(d["goal_met"], bool) and d["goal_met"] == d["goal"]["goal_met"]
    assert d["goal"]["k"] == 3 and d["goal"]["issue_case"] is False  # batch 4 does not decide the goal
    assert d["max_abs_diff_zero_offsets_vs_model"] <= 1e-4  # Δ = 0 heads are the user's model


def test_adaptive_benchmark_quick_runs_the_default_section_and_the_full_suite(
    trained_digits, digits, tmp_path
):
    from hgdefend import save_model

    model = tmp_path / "m.safetensors"
    save_model(model, trained_digits, dataset=digits.describe(), training={"steps": 400, "seed": 0})
    out = tmp_path / "r.json"
    run_benchmark("adaptive_mnist.py", "--quick", "--model", f"digits={model}", "--members", "4",
                  "--reports", str(tmp_path / "reports"), "--out", str(out))  # fmt: skip
    d = json.loads(out.read_text())
    m = d["models"]["digits"]
    assert m["default"]["config"]["preset"] == "default"
    assert m["full"]["config"]["attacks"] == list(ATTACK_NAMES)
    assert [w["eps"] for w in m["full"]["worst_case"]] == [0.1, 0.2, 0.3]
    assert {c["eps"] for c in m["full"]["tramer"]} == {0.1, 0.2, 0.3}
    assert m["full"]["autoattack"]["fixed_sample"]["members"] == 4
    table = run_benchmark("adaptive_mnist.py", "--table", str(out))
    assert "| digits |" in table and "AutoAttack" in table
